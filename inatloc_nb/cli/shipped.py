"""``inatloc-nb shipped [--copy DIR]``: where the shipped data, notebooks and configs are, and
a copy of the notebooks and configs to edit or run outside the package.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from inatloc_nb.core.resources import SHIPPED, folder_files, is_bundled, shipped_folder

#: Folders ``--copy`` copies unless ``--what`` says otherwise (data is read in place).
COPIED_BY_DEFAULT = ("notebooks", "configs")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``shipped`` command."""
    parser = subparsers.add_parser(
        "shipped", help="where the shipped data, notebooks and configs are; copy them out",
        description="List the shipped folders (data/, notebooks/, configs/) this installation "
                    "reads: the installed package's copies, or the repository's folders in a "
                    "source tree. With --copy DIR, copy the notebooks and configs into DIR "
                    "(DIR/notebooks, DIR/configs) to edit or run them.",
    )
    parser.add_argument("--copy", type=Path, default=None, metavar="DIR", help="copy the shipped folders into DIR")
    parser.add_argument("--what", nargs="+", choices=tuple(SHIPPED), default=list(COPIED_BY_DEFAULT),
                        help=f"folders --copy copies (default: {' '.join(COPIED_BY_DEFAULT)})")
    parser.add_argument("--force", action="store_true",
                        help="overwrite files in DIR that differ from the shipped ones (refused by default)")
    parser.set_defaults(func=run)


def copy_shipped(dest: Path, names: list[str] | tuple[str, ...], force: bool = False) -> list[Path]:
    """Copy the files of the shipped folders ``names`` into ``dest/<name>/``; the copied paths.

    Files already there with the same content are left alone; a different one is refused
    (``InatlocError`` naming it, before anything is written) unless ``force``.
    """
    from inatloc_nb.core.atomic import atomic_write_bytes
    from inatloc_nb.core.errors import InatlocError

    plan: list[tuple[Path, bytes]] = []
    for name in names:
        folder = shipped_folder(name)
        if not folder.is_dir():
            raise InatlocError(f"shipped folder not found: {folder}")
        for source in folder_files(name):
            target, content = dest / name / source.name, source.read_bytes()
            if target.is_file() and target.read_bytes() == content:
                continue
            if target.exists() and not force:
                raise InatlocError(f"{target} exists and differs from the shipped {name}/{source.name} "
                                   "(pass --force to overwrite)")
            plan.append((target, content))
    for target, content in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, content)
    return [target for target, _ in plan]


def run(args: argparse.Namespace) -> int:
    """Print the shipped folders; with ``--copy``, copy them and print what was written."""
    where = "installed package" if is_bundled() else "source tree"
    for name in SHIPPED:
        folder = shipped_folder(name)
        print(f"{name:<10} {folder}  ({len(folder_files(name))} files, {where})")
    if args.copy is not None:
        copied = copy_shipped(args.copy, args.what, force=args.force)
        for path in copied:
            print(f"copied {path}")
        print(f"{len(copied)} file(s) copied into {args.copy} ({' '.join(args.what)})")
    return 0
