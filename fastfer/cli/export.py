"""``fastfer export``: a checkpoint → ONNX or a ``torch.export`` program, verified against PyTorch."""
from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="export a checkpoint to ONNX or a torch.export program (.pt2)")
    p.add_argument("--checkpoint", required=True, help="weights file or training run folder")
    p.add_argument("--model", help="model name, for a checkpoint without fastfer metadata")
    p.add_argument("--format", default="onnx", choices=["onnx", "torch-export"], help="output format (default onnx)")
    p.add_argument("--out", help="output file (default: <checkpoint stem>.onnx / .pt2 next to the checkpoint)")
    p.add_argument("--batch", type=int, default=1, help="example batch size; the fixed batch with --static-batch")
    p.add_argument("--static-batch", action="store_true", help="export a fixed batch of --batch (default: dynamic)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument("--no-verify", action="store_true", help="skip running the exported file against PyTorch")
    p.add_argument("--atol", type=float, default=1e-3, help="largest logit difference accepted (default 1e-3)")
    p.set_defaults(func=run)


def default_output(checkpoint: str, fmt: str) -> str:
    path = Path(checkpoint)
    stem = path.stem if path.is_file() else path.name
    folder = path.parent if path.is_file() else path
    return str(folder / (stem + (".onnx" if fmt == "onnx" else ".pt2")))


def run(args) -> int:
    from fastfer.infer import export_model

    out = args.out or default_output(args.checkpoint, args.format)
    result = export_model(args.checkpoint, out, format=args.format, batch=args.batch,
                          dynamic_batch=not args.static_batch, opset=args.opset, verify=not args.no_verify,
                          atol=args.atol, model_name=args.model)
    batch = "dynamic batch" if result.dynamic_batch else f"batch {args.batch}"
    shape = ", ".join(map(str, result.input_shape))
    print(f"wrote {result.path} ({result.format}, {result.info.model_name}, input (B, {shape}) {batch}, "
          f"labels {', '.join(result.info.label_names)})")
    if result.verified_with:
        print(f"verified with {result.verified_with}: max |logit difference| vs PyTorch = {result.max_abs_diff:.3g}")
    return 0
