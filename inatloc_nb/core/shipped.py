"""The real metadata shipped in the project's ``data/`` folder (see ``data/PROVENANCE.md``).

The folder is ``$INATLOC_NB_DATA`` when set, else the shipped ``data/`` (the installed
package's copy, or the repository's folder in a source tree: :mod:`inatloc_nb.core.resources`). The readers
of the hierarchies (:mod:`inatloc_nb.hierarchies.inaturalist`, :mod:`inatloc_nb.hierarchies.imagenet`) and of the
datasets (:func:`inatloc_nb.datasets.dataset.load_shipped`) find their tables here.
"""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from inatloc_nb.core.env import DATA_ENV
from inatloc_nb.core.errors import MetadataError
from inatloc_nb.core.resources import shipped_folder


def data_dir() -> Path:
    """The folder of shipped metadata: ``$INATLOC_NB_DATA`` or the shipped ``data/``."""
    return Path(os.environ.get(DATA_ENV) or shipped_folder("data"))


def shipped_path(file: str, what: str = "shipped metadata file", fix: str = "") -> Path:
    """``data_dir() / file``; a :class:`MetadataError` naming it (``what`` not found, and how
    to point at the folder, then ``fix``) when it is missing."""
    path = data_dir() / file
    if not path.is_file():
        raise MetadataError(f"{what} not found (set {DATA_ENV} to the data folder{fix})", path)
    return path


def read_shipped(file: str, what: str = "shipped metadata file", fix: str = "") -> pl.DataFrame:
    """The shipped parquet table ``file`` (see :func:`shipped_path` for a missing one)."""
    return pl.read_parquet(shipped_path(file, what, fix))
