"""The ``inatloc-nb`` command line: one module per command, each with ``register(subparsers)``.

Command modules keep their imports light; heavy libraries (torch, fastai) are imported
inside the function that runs the command, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from inatloc_nb.core.errors import InatlocError

#: Command modules under ``inatloc_nb.cli``, in the order ``--help`` lists them.
COMMAND_MODULES = ("synth", "stats", "evaluate", "prepare", "train", "baseline", "explain", "sweep", "choose_levels", "make_dataset", "check", "report", "demo", "shipped")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="inatloc-nb",
        description="Label granularity and weakly supervised object localization.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"inatloc_nb.cli.{name}").register(sub)
    for command in sub.choices.values():  # ``--debug`` is accepted after the command too
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show the full traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``inatloc-nb`` console script.

    Bad input (an ``InatlocError``) prints one line and exits with 2; any other error prints
    one line and exits with 1; ``--debug`` shows the traceback instead.
    """
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InatlocError as exc:
        if args.debug:
            raise
        print(f"inatloc-nb {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if args.debug:
            raise
        print(f"inatloc-nb {args.command}: unexpected error: {type(exc).__name__}: {exc} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
