"""``fastfer convert``: official checkpoints → fastfer safetensors.

    fastfer convert --list
    fastfer convert --from apvit-mmcls APViT_RAF-3eeecf7d.pth apvit_rafdb.safetensors
    fastfer convert --from ir50-evolve backbone_ir50_ms1m_epoch120.pth ir50_part.safetensors
    fastfer convert --from vit-small-v01 vit_small_p16_224-15ec54c9.pth vit_part.safetensors
    fastfer convert --from fer-former ferformer_official.pth fer_former.safetensors
    fastfer convert --from convnext-b convnext_base.fb_in22k_ft_in1k.safetensors convcut_trunk.safetensors
    fastfer convert --from conv-cut-keras convcut_rafdb.h5 conv_cut.safetensors   (.h5 needs h5py; or an .npz)
"""
from __future__ import annotations

import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("convert", help="convert an official checkpoint to fastfer safetensors",
                              description=__doc__.split("\n\n", 1)[0])
    p.add_argument("--list", action="store_true", help="list the checkpoint sources and exit")
    p.add_argument("--from", dest="source", metavar="SOURCE", help="checkpoint format (see --list)")
    p.add_argument("input", nargs="?", help="input checkpoint (.pth read with torch.load(weights_only=True), "
                                            ".safetensors, or a Keras .h5 / .npz weights dump for conv-cut-keras)")
    p.add_argument("output", nargs="?", help="output .safetensors file")
    p.add_argument("--ir-stages", type=int, help="IR-50 stages of the target (ir50-evolve, fer-former; default 3)")
    p.add_argument("--non-strict", action="store_true",
                   help="drop (and list) source keys the model does not have instead of failing")
    p.set_defaults(func=run)


def run(args) -> int:
    from fastfer.models.convert import SOURCES, convert_file

    if args.list:
        for source in SOURCES.values():
            print(f"{source.name:<16} {source.description}")
        return 0
    if args.source not in SOURCES:
        print(f"fastfer convert: --from: expected one of {', '.join(SOURCES)}, got {args.source!r}", file=sys.stderr)
        return 2
    if not args.input or not args.output:
        print("fastfer convert: expected INPUT and OUTPUT paths", file=sys.stderr)
        return 2
    if not args.output.endswith(".safetensors"):
        print(f"fastfer convert: output: expected a .safetensors path, got {args.output!r}", file=sys.stderr)
        return 2
    conv = convert_file(args.source, args.input, args.output, strict=not args.non_strict, ir_stages=args.ir_stages)
    print(conv.summary())
    print(f"wrote {args.output}")
    return 0
