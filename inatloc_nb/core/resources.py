"""The folders the project ships beside its modules: ``data/`` (metadata tables), ``notebooks/``
(the training notebook sweeps execute, the analysis notebooks) and ``configs/`` (sweep YAMLs).

In a source tree they are the repository's top-level folders. A built wheel holds copies of
their shipped files inside the package, under ``inatloc_nb/_shipped/`` (``setup.py`` copies
them at build time, selected by :func:`shipped_files`), so an installed package finds them
without the repository. :func:`shipped_folder` answers both cases.

Standard library only: ``setup.py`` loads this file by path while building, before any
dependency is installed.
"""
from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

#: Each shipped folder and the pattern of its files that ship (top level only: sub-folders,
#: e.g. a dataset generated into ``data/``, stay out).
SHIPPED: dict[str, str] = {"data": "*", "notebooks": "*.ipynb", "configs": "*.yaml"}
#: Files that never ship: the scripts that build the tables, caches, hidden files.
NOT_SHIPPED: tuple[str, ...] = ("*.py", "*.pyc", ".*")
#: Folder inside the package holding the copies in a built wheel.
BUNDLE = "_shipped"

_PACKAGE = Path(__file__).resolve().parents[1]


def bundle_dir() -> Path:
    """``inatloc_nb/_shipped`` of this package (present only in an installed wheel)."""
    return _PACKAGE / BUNDLE


def source_root() -> Path:
    """The folder holding the package: the repository root in a source tree."""
    return _PACKAGE.parent


def shipped_folder(name: str) -> Path:
    """The shipped folder ``name`` (``data``, ``notebooks`` or ``configs``): the installed
    package's copy when there is one, else the source tree's folder (which may be missing;
    callers name the file they looked for)."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped folder {name!r}: expected one of {', '.join(SHIPPED)}")
    bundled = bundle_dir() / name
    return bundled if bundled.is_dir() else source_root() / name


def is_bundled() -> bool:
    """True when the shipped folders come from the installed package, not a source tree."""
    return bundle_dir().is_dir()


def _shipping(folder: Path, pattern: str) -> list[Path]:
    """The files directly in ``folder`` that match ``pattern`` and no :data:`NOT_SHIPPED` one."""
    return sorted(
        path for path in (folder.iterdir() if folder.is_dir() else ())
        if path.is_file() and fnmatch(path.name, pattern)
        and not any(fnmatch(path.name, skip) for skip in NOT_SHIPPED)
    )


def shipped_files(root: str | Path) -> dict[str, list[Path]]:
    """The files of the source tree ``root`` that ship, by folder name (sorted; a missing
    folder ships nothing)."""
    return {name: _shipping(Path(root) / name, pattern) for name, pattern in SHIPPED.items()}


def folder_files(name: str) -> list[Path]:
    """The shipped files of :func:`shipped_folder` ``name`` (what a wheel holds of it)."""
    return _shipping(shipped_folder(name), SHIPPED[name])
