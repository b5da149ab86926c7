"""Writing datasets built from other releases (FGVC-Aircraft, iNaturalist) in the Choe format.

A built dataset is one images table (``split, image_id, width, height, label`` and
``label_<level>`` for each coarser level), one boxes table (``split, image_id, x0, y0, x1,
y1``, inclusive 0-based pixels) and the class names of every level, finest first. It is
written as ``train/ val/ test/`` split folders plus ``class_names[_<level>].txt`` at the root,
readable by :meth:`inatloc_nb.datasets.dataset.WSOLDataset.from_folder`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from inatloc_nb.core.errors import InatlocError, MetadataError
from inatloc_nb.datasets.metadata import (
    SPLITS,
    SplitMetadata,
    class_names_file,
    entry_exists,
    find_splits,
    write_class_names,
    write_split,
)

if TYPE_CHECKING:
    from inatloc_nb.datasets.dataset import WSOLDataset

__all__ = ["write_dataset", "export_dataset", "with_shipped_hierarchy", "link_images", "require_wsol_metadata"]

#: Where Choe et al.'s WSOL metadata of each dataset comes from.
WSOL_METADATA = {"cub": "metadata/CUB", "ilsvrc": "metadata/ILSVRC"}


def write_dataset(
    out: str | Path, images: pl.DataFrame, boxes: pl.DataFrame, names: Mapping[str, Sequence[str]]
) -> Path:
    """Write a Choe-format dataset folder; returns ``out``.

    ``names`` maps each level (finest first) to its class names in class-index order; the
    finest goes to ``class_names.txt``, the others to ``class_names_<level>.txt`` and the
    labels of level ``L`` come from the ``label_L`` column. Every split is validated before
    anything is written (every box inside its image, every image with a box when the split
    has boxes), so bad input leaves ``out`` as it was.
    """
    out = Path(out)
    levels = list(names)
    extra = [f"label_{level}" for level in levels[1:]]
    missing = [c for c in ("split", "image_id", "width", "height", "label", *extra) if c not in images.columns]
    if missing:
        raise InatlocError(f"images table lacks columns {missing}")
    known = {"images", "train", "val", "test", "build.json", "sources.parquet"}
    foreign = sorted(p.name for p in out.iterdir() if p.name not in known
                     and not p.name.startswith("class_names")) if out.is_dir() else []
    if foreign:
        raise InatlocError(f"{out} holds other files ({foreign[:5]}); choose an empty or new folder")
    splits = []
    for split in images["split"].unique(maintain_order=True).to_list():
        part = images.filter(pl.col("split") == split).select("image_id", "width", "height", "label", *extra)
        split_boxes = boxes.filter(pl.col("split") == split).select("image_id", "x0", "y0", "x1", "y1")
        splits.append(SplitMetadata(split, part, split_boxes))
        splits[-1].validate()
    out.mkdir(parents=True, exist_ok=True)
    for split_meta in splits:
        write_split(out / split_meta.name, split_meta)
    for k, level in enumerate(levels):
        write_class_names(out / class_names_file(None if k == 0 else level), names[level])
    return out


def export_dataset(dataset: WSOLDataset, out: str | Path, train_per_class: int | None = None, seed: int = 0) -> Path:
    """Write ``dataset`` with every level of its hierarchy as a Choe-format folder.

    Used for CUB and ImageNet read from their WSOL metadata with the project's hierarchies:
    classes outside the hierarchy are left out (``dataset.excluded``), each image gets a
    ``class_labels_<level>.txt`` label for every coarser level, and the root's level (e.g.
    ``class`` ``Aves``) gets a one-name ``class_names_<level>.txt``. ``train_per_class`` keeps
    that many ``train`` images per finest class (seeded; App. A's 200 for ImageNet).
    """
    levels = dataset.levels
    frames, boxes = [], []
    for split in dataset.splits:
        images = dataset.images(split)
        if split == "train" and train_per_class is not None:
            keep = dataset.subsample(split, levels[0], train_per_class, seed)
            images = images.filter(pl.col("image_id").is_in(keep))
        frames.append(images.select(pl.lit(split).alias("split"), "image_id", "width", "height", "label",
                                    *(f"label_{lv}" for lv in levels[1:])))
        split_boxes = dataset.boxes(split).filter(pl.col("image_id").is_in(images["image_id"].implode()))
        boxes.append(split_boxes.select(pl.lit(split).alias("split"), pl.all()))
    names = {level: list(dataset.class_names(level)) for level in levels}
    written = write_dataset(out, pl.concat(frames), pl.concat(boxes), names)
    if dataset.hierarchy.root_level:
        write_class_names(written / class_names_file(dataset.hierarchy.root_level), [dataset.hierarchy.root])
    return written


def with_shipped_hierarchy(dataset: WSOLDataset, name: str) -> WSOLDataset:
    """``dataset`` (read flat from CUB's or ImageNet's WSOL metadata, labels = class indices)
    relabelled with the project's CUB (:func:`inatloc_nb.hierarchies.inaturalist.cub_hierarchy`, 184
    species) or ImageNet (:func:`inatloc_nb.hierarchies.imagenet.ilsvrc_hierarchy`, 927 classes) tree."""
    from inatloc_nb.datasets.dataset import WSOLDataset

    if name == "cub":
        from inatloc_nb.hierarchies.inaturalist import cub_hierarchy, cub_label_to_leaf

        hierarchy, to_leaf = cub_hierarchy(), cub_label_to_leaf()
    elif name == "ilsvrc":
        from inatloc_nb.hierarchies.imagenet import ilsvrc_hierarchy, ilsvrc_label_to_leaf

        hierarchy, to_leaf = ilsvrc_hierarchy(), ilsvrc_label_to_leaf()
    else:
        raise InatlocError(f"no shipped hierarchy for {name!r}; choose 'cub' or 'ilsvrc'")
    n_classes = len(dataset.hierarchy.leaves)
    if n_classes != len(to_leaf):
        raise InatlocError(f"{dataset.name}: {n_classes} classes, but {name} has {len(to_leaf)}")
    names = [hierarchy.leaves[k] if k >= 0 else f"{dataset.class_names(0)[i]} (excluded)"
             for i, k in enumerate(to_leaf)]
    return WSOLDataset(name, dataset.splits, names, hierarchy, dataset.image_root)


def require_wsol_metadata(folder: str | Path, name: str) -> None:
    """Refuse a folder without split folders, saying that Choe et al.'s WSOL metadata of
    ``name`` (``"cub"`` or ``"ilsvrc"``) is needed and where it comes from; the raw
    CUB-200-2011 release (``images.txt``, ``bounding_boxes.txt``) is recognised and told apart.
    """
    folder = Path(folder)
    if find_splits(folder):
        return
    source = (f"Choe et al.'s WSOL metadata: the folder {WSOL_METADATA[name]} of "
              f"https://github.com/clovaai/wsolevaluation ({'/ '.join(SPLITS)}/ with image_ids.txt, "
              "class_labels.txt, image_sizes.txt, localization.txt); "
              + ("the same metadata ships with inatloc-nb as the dataset 'cub' (e.g. train --data cub "
                 "--image-root IMAGES)" if name == "cub" else
                 "its val and test splits ship with inatloc-nb as the dataset 'ilsvrc'"))
    raw = [d for d in (folder, folder / "CUB_200_2011")
           if entry_exists(d / "images.txt") and entry_exists(d / "bounding_boxes.txt")]
    if name == "cub" and raw:
        raise MetadataError(
            "this is the raw CUB-200-2011 release (images.txt, bounding_boxes.txt), which make-dataset cub "
            f"cannot use: it needs {source}. Its val split (D_f, 1,000 images with boxes) holds images "
            "Choe et al. collected (CUBV2) that are not in CUB-200-2011, so the WSOL splits cannot be "
            f"made from this folder. Give the {WSOL_METADATA[name]} folder instead, and the images "
            f"(this release's {raw[0].name}/images with the CUBV2 images added) with --images", folder)
    raise MetadataError(f"no split folder ({', '.join(SPLITS)}) found; make-dataset needs {source}", folder)


def link_images(out: str | Path, images: str | Path) -> Path:
    """Make ``out/images`` a symbolic link to ``images`` (the default image root of a dataset
    folder for ``train``, ``sweep`` and ``check``); an existing link is replaced."""
    images = Path(images)
    if not images.is_dir():
        raise InatlocError(f"{images}: image folder not found")
    link = Path(out) / "images"
    if link.is_symlink():
        link.unlink()
    elif link.exists():
        raise InatlocError(f"{link} exists and is not a link; remove it or pass the image root explicitly")
    link.symlink_to(images.resolve(), target_is_directory=True)
    return link
