"""``fastfer`` command line: one module per subcommand (``register(subparsers)`` adds its parser and sets
``func``); they parse arguments, call the library and print — nothing else. The modules are imported only when
the command line is built, so ``import fastfer`` stays light.

Errors: a :class:`fastfer.utils.errors.FastferError` (or OSError, ValueError …) raised by the library reaches
the user as one line ``fastfer <command>: <message>`` with exit status 2 (bad input) or 1 (the work failed);
``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# One module per subcommand; order is the order of `fastfer --help`.
SUBCOMMAND_MODULES = [
    "fastfer.cli.train",
    "fastfer.cli.eval",
    "fastfer.cli.predict",
    "fastfer.cli.export",
    "fastfer.cli.convert",
    "fastfer.cli.build_ext",
    "fastfer.cli.info",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastfer", description="Facial expression recognition on fused kernels.")
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks instead of one-line errors")
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
    if args.debug:
        return int(args.func(args) or 0)
    from fastfer.cli._errors import run_reporting

    return run_reporting(args.command, args.func, args)


if __name__ == "__main__":
    sys.exit(main())
