"""Exceptions raised for bad input. Each names the file, line or ids at fault."""
from __future__ import annotations

from pathlib import Path


class InatlocError(Exception):
    """Base class: an error the user can act on (bad input, missing file, bad parameter)."""


class MetadataError(InatlocError):
    """Malformed or inconsistent dataset metadata.

    ``path`` and ``line`` (1-based) locate the problem when it sits in one row of one file.
    """

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")


class HierarchyError(InatlocError):
    """An inconsistent label hierarchy (a node under two parents, a cycle, an invalid k vector...)."""


class ParentConflictError(HierarchyError):
    """A class labelled under two parents at the next coarser level.

    ``level``, ``parent_level``: the two levels; ``node``: the class; ``parents``: its two
    parents; ``rows``: the row (or image) index in the builder's input where each is seen.
    """

    def __init__(self, message: str, level: str, parent_level: str, node: str,
                 parents: tuple[str, str], rows: tuple[int, int]):
        super().__init__(message)
        self.level, self.parent_level, self.node = level, parent_level, node
        self.parents, self.rows = parents, rows


class ScoreMapError(InatlocError):
    """Score maps that cannot be evaluated (non-finite, wrong shape, out of range, missing)."""


class PlotError(InatlocError):
    """A table or run folder that cannot be drawn (empty, or without what a figure needs)."""


class ResultsError(InatlocError):
    """A run folder or results table that does not follow the documented layout."""
