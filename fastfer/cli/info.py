"""``fastfer info``: versions and the backend table (which backend runs where, and why not)."""
from __future__ import annotations

import platform


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="print versions and which op backends can run here")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    import fastfer

    print(f"fastfer {fastfer.__version__}  torch {torch.__version__}  python {platform.python_version()}")
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton: not installed")
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"device: {cuda}")
    print("\nbackends (first supported wins for automatic choice):")
    for row in fastfer.ops.backends():
        where = ", ".join(f"{dev}: {'yes' if ok is True else ok}" for dev, ok in row["available"].items())
        print(f"  {row['name']:<7} {row['description']}\n          {where}")
    from fastfer.ops.backends.registry import chosen_for

    pinned = fastfer.ops.get_backend()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"\nwhat runs{' (pinned: ' + pinned + ')' if pinned else ' (automatic choice, fp32)'}:")
    for dev in devices:
        print(f"  {dev}: " + ", ".join(f"{op} → {name}" for op, name in chosen_for(dev).items()))
    from fastfer.ops.backends.ext import build as ext_build
    from fastfer.utils.precision import describe_amp

    print("  extension " + ext_build.describe("cpu"))
    for dev in devices:
        print(f"  {dev} {describe_amp('auto', dev)}  (train / predict default --amp auto)")
    return 0
