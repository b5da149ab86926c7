"""Images per category at each level of a hierarchy (Table A1 of the paper)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

from inatloc_nb.core.errors import HierarchyError
from inatloc_nb.hierarchies.taxonomy import Hierarchy


def level_statistics(hierarchy: Hierarchy, leaf_labels: Sequence[int] | np.ndarray) -> pl.DataFrame:
    """Images per category at each level, finest first (Table A1 of the paper).

    Columns ``level, n_categories, min, max, mean, imbalance`` (imbalance = max / min, inf if
    a category has no image). Categories are every label of the level in the hierarchy.
    """
    labels = np.asarray(leaf_labels, dtype=np.int64).reshape(-1)
    bad = np.flatnonzero((labels < 0) | (labels >= len(hierarchy.leaves)))
    if len(bad):
        raise HierarchyError(f"label {labels[bad[0]]} of image {bad[0]} is not a leaf index of the hierarchy")
    rows = []
    for level in hierarchy.levels:
        n = len(hierarchy.level_names(level))
        counts = np.bincount(hierarchy.level_index(level)[labels], minlength=n)
        low, high = int(counts.min()), int(counts.max())
        rows.append(
            {
                "level": level,
                "n_categories": n,
                "min": low,
                "max": high,
                "mean": float(counts.mean()),
                "imbalance": high / low if low else float("inf"),
            }
        )
    return pl.DataFrame(rows, schema={
        "level": pl.String, "n_categories": pl.Int64, "min": pl.Int64, "max": pl.Int64,
        "mean": pl.Float64, "imbalance": pl.Float64,
    })
