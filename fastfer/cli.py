"""``fastfer`` command line.

Each subcommand lives in its own module exposing ``register(subparsers)`` (adds its parser and sets
``func``); the modules are imported only when the command line is built, so ``import fastfer`` stays light.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# (module, description) — one module per subcommand family; order is the order of `fastfer --help`.
SUBCOMMAND_MODULES = [
    "fastfer.cli_train",  # train, eval
    "fastfer.cli_predict",
    "fastfer.cli_export",
    "fastfer.cli_convert",
    "fastfer.cli_ext",  # build-ext
    "fastfer.cli_info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastfer", description="Facial expression recognition on fused kernels.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
