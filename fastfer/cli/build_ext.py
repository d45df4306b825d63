"""``fastfer build-ext``: build (or report) the C++/CUDA extension behind the ``cpu`` and ``cuda`` backends.

The extension is otherwise built when a backend is requested by name (see fastfer/ops/backends/ext/build.py);
running this once after install makes automatic backend choice pick it up.
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("build-ext", help="build the C++/OpenMP (and CUDA) extension kernels now",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cuda", action="store_true", help="also build the CUDA extension (needs nvcc and a CUDA torch)")
    p.add_argument("--force", action="store_true", help="rebuild even when a cached build exists")
    p.add_argument("--verbose", action="store_true", help="show the compiler commands")
    p.add_argument("--status", action="store_true", help="only report what is built and why not; build nothing")


def run(args) -> int:
    from fastfer.ops.backends.ext import build as _ext

    kinds = ["cpu", "cuda"] if args.cuda else ["cpu"]
    if args.status:
        for kind in ("cpu", "cuda"):
            print(_ext.describe(kind))
        return 0
    status = 0
    for kind in kinds:
        try:
            module = _ext.build(kind, force=args.force, verbose=args.verbose)
        except _ext.ExtensionUnavailable as exc:
            print(f"{kind}: {exc}", file=sys.stderr)
            status = 1
            continue
        print(f"{kind}: ready ({_ext.origin(kind)}): {module.__file__}")
    return status
