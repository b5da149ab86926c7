"""Writing datasets built from other releases (FGVC-Aircraft, iNaturalist) in the Choe format.

A built dataset is one images table (``split, image_id, width, height, label`` and
``label_<level>`` for each coarser level), one boxes table (``split, image_id, x0, y0, x1,
y1``, inclusive 0-based pixels) and the class names of every level, finest first. It is
written as ``train/ val/ test/`` split folders plus ``class_names[_<level>].txt`` at the root,
readable by :meth:`inatloc_nb.data.WSOLDataset.from_folder`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl

from inatloc_nb.errors import InatlocError
from inatloc_nb.metadata import SplitMetadata, class_names_file, write_class_names, write_split

__all__ = ["write_dataset"]


def write_dataset(
    out: str | Path, images: pl.DataFrame, boxes: pl.DataFrame, names: Mapping[str, Sequence[str]]
) -> Path:
    """Write a Choe-format dataset folder; returns ``out``.

    ``names`` maps each level (finest first) to its class names in class-index order; the
    finest goes to ``class_names.txt``, the others to ``class_names_<level>.txt`` and the
    labels of level ``L`` come from the ``label_L`` column. Each split is validated before it
    is written (every box inside its image, every image with a box when the split has boxes).
    """
    out = Path(out)
    levels = list(names)
    extra = [f"label_{level}" for level in levels[1:]]
    missing = [c for c in ("split", "image_id", "width", "height", "label", *extra) if c not in images.columns]
    if missing:
        raise InatlocError(f"images table lacks columns {missing}")
    if out.exists() and any(out.iterdir()) and not (out / class_names_file()).exists():
        raise InatlocError(f"{out} exists and is not a dataset folder; choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    for split in images["split"].unique(maintain_order=True).to_list():
        part = images.filter(pl.col("split") == split).select("image_id", "width", "height", "label", *extra)
        split_boxes = boxes.filter(pl.col("split") == split).select("image_id", "x0", "y0", "x1", "y1")
        write_split(out / split, SplitMetadata(split, part, split_boxes))
    for k, level in enumerate(levels):
        write_class_names(out / class_names_file(None if k == 0 else level), names[level])
    return out
