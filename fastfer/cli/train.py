"""``fastfer train``.

``fastfer train`` with no argument trains the small APViT on the built-in synthetic expression set (recipe
``synthetic``) and writes ``runs/<timestamp>/``. Every recipe field can be changed with a named flag or with
``--set KEY=VALUE`` (dots descend into dict fields: ``--set model_kwargs.depth=2``). Multi-GPU:
``torchrun --nproc_per_node N -m fastfer train ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRAIN_FLAGS = {  # flag dest → config key
    "model": "model", "data": "data", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr", "amp": "amp",
    "backend": "backend", "workers": "workers", "threads": "threads", "seed": "seed", "device": "device",
    "accum_steps": "accum_steps", "grad_clip": "grad_clip", "ema": "ema", "save_every_steps": "save_every_steps",
    "text_encoder": "text_encoder", "val_source": "val_source", "optimizer": "optimizer",
    "max_steps_per_epoch": "max_steps_per_epoch", "init_weights": "init_weights", "labels": "labels",
}


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (default: small APViT on the synthetic set)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="apvit, apvit_tiny, fer_former, fer_former_tiny, conv_cut, conv_cut_tiny "
                                   "(default: the recipe's)")
    p.add_argument("--data", help="synthetic (default) or NAME:PATH with NAME in rafdb, ferplus, affectnet, "
                                  "fer2013, sfew, expw, folder, list (image list file; --set data_kwargs.test_list=PATH)")
    p.add_argument("--recipe", help="apvit, fer_former, conv_cut, synthetic (default: the model's, else synthetic)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=("sgd", "adam", "adamw"))
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"))
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the training forward")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--backend", help="op backend: triton, cuda, cpu, torch (default: automatic)")
    p.add_argument("--device", help="auto (default), cpu, cuda")
    p.add_argument("--workers", type=int, help="DataLoader workers (default: 1 on CPU, up to 8 on CUDA)")
    p.add_argument("--threads", type=int, help="CPU threads (default: idle cores)")
    p.add_argument("--seed", type=int)
    p.add_argument("--accum-steps", type=int, help="gradient accumulation micro-batches per step")
    p.add_argument("--grad-clip", type=float)
    p.add_argument("--ema", type=float, help="EMA decay per step (evaluation then uses the EMA weights)")
    p.add_argument("--deterministic", action="store_true", default=None)
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--save-every-steps", type=int, help="also checkpoint every N optimizer steps")
    p.add_argument("--max-steps-per-epoch", type=int, help="cut epochs short (smoke runs)")
    p.add_argument("--init", dest="init_weights", action="append", metavar="FILE",
                   help="start from these (partial) fastfer safetensors, e.g. the converted IR-50 and ViT-S parts "
                        "(fastfer convert --from ir50-evolve / vit-small-v01); repeatable")
    p.add_argument("--labels", type=lambda text: [n.strip() for n in text.split(",")], metavar="A,B,C",
                   help="own class names for a folder dataset, in logit order (default: the folder names)")
    p.add_argument("--text-encoder", help="FER-former: text-feature tensor file or open_clip:PATH (local)")
    p.add_argument("--val-source", choices=("auto", "test"), help="test = the papers' protocol (labelled)")
    p.add_argument("--tensorboard", action="store_true", default=None)
    p.add_argument("--set", dest="assign", action="append", default=[], metavar="KEY=VALUE",
                   help="any config field, e.g. --set weight_decay=0 --set model_kwargs.depth=2")
    p.add_argument("--out", help="run folder (default: runs/<timestamp>)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="RUN",
                   help="continue the run in RUN (or in --out) exactly where its last checkpoint left off")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (epoch lines only)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run_train)


def _overrides(args) -> dict:
    from fastfer.train.config import parse_assignments

    over = parse_assignments(args.assign)
    for dest, key in TRAIN_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None and dest != "model":
            over[key] = value
    for flag in ("compile", "channels_last", "deterministic", "sync_bn", "tensorboard"):
        if getattr(args, flag, None) is not None:
            over[flag] = getattr(args, flag)
    return over


def run_train(args) -> int:
    from fastfer.train import distributed as dist_utils
    from fastfer.train.engine import Trainer
    from fastfer.train.recipes import resolve_config, resume_config

    if args.resume is not None:
        if not (args.resume or args.out):
            print("fastfer train: --resume needs a run folder: pass --resume RUN or --out RUN", file=sys.stderr)
            return 2
        run_dir = Path(args.resume or args.out)
        cfg, ignored = resume_config(run_dir, _overrides(args))
        ignored += ["model"] * bool(args.model) + ["recipe"] * bool(args.recipe)
        if ignored:
            print(f"fastfer train: resuming {run_dir} with its saved config; ignoring {ignored}", file=sys.stderr)
        out = run_dir
    else:
        cfg = resolve_config(args.recipe, args.model, _overrides(args))
        out = Path(args.out) if args.out else None
    if args.print_config:
        print(json.dumps(cfg.to_json(), indent=2))
        return 0
    try:
        Trainer(cfg, out, resume=args.resume is not None, progress=not args.no_progress).run()
    finally:
        dist_utils.shutdown()
    return 0
