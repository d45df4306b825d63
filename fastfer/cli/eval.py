"""``fastfer eval``: a trained checkpoint on a dataset split (the checkpoint's own dataset by default)."""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    e = subparsers.add_parser("eval", help="evaluate a trained checkpoint on a dataset split")
    e.add_argument("--checkpoint", required=True, help="model.safetensors, a checkpoint folder or a run folder")
    e.add_argument("--data", default=None, help="dataset spec as for train (default: the checkpoint's)")
    e.add_argument("--split", default="test", choices=("test", "val", "train"))
    e.add_argument("--batch-size", type=int, default=128)
    e.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto")
    e.add_argument("--backend", help="op backend: triton, cuda, cpu, torch (default: automatic)")
    e.add_argument("--device", default="auto")
    e.add_argument("--workers", type=int)
    e.add_argument("--threads", type=int)
    e.add_argument("--set", dest="assign", action="append", default=[], metavar="KEY=VALUE",
                   help="data_kwargs.* for the reader, e.g. --set data_kwargs.images=apvit")
    e.add_argument("--out", help="folder for test_report.json + confusion matrix (default: runs/eval-<time>)")
    e.set_defaults(func=run)


def run(args) -> int:
    from fastfer import ops
    from fastfer.train.evaluate import evaluate_checkpoint
    from fastfer.train.metrics import format_report
    from fastfer.train.config import parse_assignments

    over = parse_assignments(args.assign)
    with ops.use_backend(args.backend):
        report, paths, notes = evaluate_checkpoint(
            args.checkpoint, data=args.data, split=args.split, data_kwargs=over.get("data_kwargs", {}),
            batch_size=args.batch_size, amp=args.amp, device=args.device, workers=args.workers,
            threads=args.threads, out_dir=args.out)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"{report['model']} ({args.checkpoint}) on {report['data']} [{args.split}], {report['n']} images:")
    print(format_report(report))
    for k in ("text_accuracy", "fused_accuracy"):
        if k in report:
            print(f"{k.replace('_', ' ')} {report[k]:.4f}")
    print(f"wrote {', '.join(paths)}")
    return 0
