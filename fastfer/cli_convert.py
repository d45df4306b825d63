"""``fastfer convert``: official checkpoints → fastfer safetensors.

    fastfer convert --from apvit-mmcls APViT_RAF-3eeecf7d.pth apvit_rafdb.safetensors
    fastfer convert --from ir50-evolve backbone_ir50_ms1m_epoch120.pth ir50_part.safetensors
    fastfer convert --from vit-small-v01 vit_small_p16_224-15ec54c9.pth vit_part.safetensors
"""
from __future__ import annotations

import sys

SOURCES = ("apvit-mmcls", "ir50-evolve", "vit-small-v01")  # = fastfer.models.convert.SOURCES (kept light here)


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert an official checkpoint (.pth) to fastfer safetensors",
                              description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--from", dest="source", required=True, choices=SOURCES,
                   help="checkpoint format: official APViT (mmcls), face.evoLVe IR-50, timm v0.1 ViT-S")
    p.add_argument("input", help="input checkpoint (.pth, read with torch.load(weights_only=True))")
    p.add_argument("output", help="output .safetensors file")
    p.add_argument("--non-strict", action="store_true",
                   help="drop (and list) source keys the model does not have instead of failing")
    p.set_defaults(func=run)


def run(args) -> int:
    from fastfer.models.convert import CheckpointError, convert_file

    if not args.output.endswith(".safetensors"):
        print(f"fastfer convert: output: expected a .safetensors path, got {args.output!r}", file=sys.stderr)
        return 2
    try:
        conv = convert_file(args.source, args.input, args.output, strict=not args.non_strict)
    except CheckpointError as err:
        print(f"fastfer convert: {err}", file=sys.stderr)
        return 1
    print(conv.summary())
    print(f"wrote {args.output}")
    return 0
