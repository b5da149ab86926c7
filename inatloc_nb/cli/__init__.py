"""The ``inatloc-nb`` command line: one module per command, each with ``register(subparsers)``.

Command modules keep their imports light; heavy libraries (torch, fastai) are imported
inside the function that runs the command, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from inatloc_nb.errors import InatlocError

#: Command modules under ``inatloc_nb.cli``, in the order ``--help`` lists them.
COMMAND_MODULES = ("synth", "stats", "evaluate", "train", "baseline", "sweep", "report", "demo")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="inatloc-nb",
        description="Label granularity and weakly supervised object localization.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"inatloc_nb.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``inatloc-nb`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InatlocError as exc:
        print(f"inatloc-nb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
