"""WSOL datasets: the splits' metadata, the label hierarchy and where the images are.

A :class:`WSOLDataset` comes from a Choe-format folder (:meth:`WSOLDataset.from_folder`) or
from the real metadata shipped in the project's ``data/`` folder (:func:`load_shipped`:
``"cub"``, ``"ilsvrc"``, ``"inatloc500"``; the folder can be moved with the environment
variable ``INATLOC_NB_DATA``; :mod:`inatloc_nb.core.shipped`).

Finest-level labels are leaf indices of ``hierarchy`` (``hierarchy.leaves`` order); every
coarser label is derived from the hierarchy, so all levels stay consistent.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.core.errors import InatlocError, MetadataError, ParentConflictError
from inatloc_nb.hierarchies import imagenet, inaturalist
from inatloc_nb.datasets.metadata import (
    CLASS_LABELS,
    IMAGE_IDS,
    SPLITS,
    SplitMetadata,
    class_names_file,
    entry_exists,
    id_lines,
    level_labels_file,
    read_class_names,
    read_split,
    read_splits,
)
from inatloc_nb.core.shipped import read_shipped
from inatloc_nb.hierarchies.taxonomy import Hierarchy

#: Taxonomic ranks finest first; extra label files with these names are ordered by them.
RANKS = ("species", "genus", "family", "order", "class", "phylum", "kingdom")
SHIPPED = ("cub", "ilsvrc", "inatloc500")
_MAX_LISTED = 20


class WSOLDataset:
    """Splits (``train`` = D_w, ``val`` = D_f, ``test`` = D_test), hierarchy and image root.

    ``splits`` hold finest labels as indices into ``class_names``; classes the hierarchy does
    not contain are excluded with a warning, and their images are listed in ``excluded``
    (columns ``split, image_id, class_name``). An image id in ``train`` and in ``val`` or
    ``test`` (train/test leakage) is refused unless ``allow_overlap`` is set.
    """

    def __init__(
        self,
        name: str,
        splits: Mapping[str, SplitMetadata],
        class_names: Sequence[str],
        hierarchy: Hierarchy,
        image_root: str | Path | None = None,
        allow_overlap: bool = False,
    ):
        if not allow_overlap:
            check_split_overlap(name, splits)
        self.name = name
        self.hierarchy = hierarchy
        self.image_root = None if image_root is None else Path(image_root)
        leaf_index = {leaf: i for i, leaf in enumerate(hierarchy.leaves)}
        to_leaf = np.array([leaf_index.get(n, -1) for n in class_names], dtype=np.int64)
        self.splits: dict[str, SplitMetadata] = {}
        excluded = []
        for split_name, split in splits.items():
            labels = split.images["label"].to_numpy()
            bad = np.flatnonzero((labels < 0) | (labels >= len(class_names)))
            if bad.size:
                raise MetadataError(
                    f"split {split_name!r}: label {labels[bad[0]]} of image "
                    f"{split.images['image_id'][int(bad[0])]!r} is outside the {len(class_names)} class names"
                )
            leaf = to_leaf[labels]
            keep = leaf >= 0
            if not keep.all():
                dropped = split.images.filter(pl.Series(~keep)).select(
                    pl.lit(split_name).alias("split"), "image_id",
                    pl.Series("class_name", [class_names[i] for i in labels[~keep]]),
                )
                excluded.append(dropped)
            images = split.images.filter(pl.Series(keep)).with_columns(pl.Series("label", leaf[keep]))
            images = images.select("image_id", "width", "height", "label")
            boxes = split.boxes.filter(pl.col("image_id").is_in(images["image_id"].implode()))
            self.splits[split_name] = SplitMetadata(split_name, images, boxes, split.size_order)
        self.excluded = pl.concat(excluded) if excluded else pl.DataFrame(
            schema={"split": pl.String, "image_id": pl.String, "class_name": pl.String})
        if self.excluded.height:
            classes = self.excluded["class_name"].unique(maintain_order=True).to_list()
            warnings.warn(
                f"{name}: {self.excluded.height} images of {len(classes)} classes not in the hierarchy "
                f"are excluded (see .excluded): {classes[:_MAX_LISTED]}", stacklevel=2)

    # ------------------------------------------------------------------------- builders

    @classmethod
    def from_folder(
        cls, metadata_root: str | Path, image_root: str | Path | None = None, size_order: str = "auto",
        allow_overlap: bool = False,
    ) -> WSOLDataset:
        """Read a Choe-format folder: ``train/ val/ test/`` (those present) and
        ``class_names*.txt`` at the root.

        Extra levels come from ``class_labels_<level>.txt`` (the same set in every split),
        ordered finest first by taxonomic rank, or by decreasing class count for other
        names. The finest level is called ``species`` when the extra levels are ranks, ``c0``
        when they are ``c1 .. cK`` (deepest-only levels, ordered by K), and ``leaf``
        otherwise. A coarsest level with a single class becomes the root (e.g.
        ``kingdom`` ``Animalia``), as does the single name in the first ``class_names_<rank>.txt``
        present for a rank above the coarsest level; otherwise the root is ``root``. With no extra
        levels the hierarchy is flat with deepest-only levels ``c0``. Missing class
        names files give the names ``"0", "1", ...`` (``"<level> <i>"`` for coarser levels).
        The image-size order detected on splits with boxes is used for splits without them.
        ``allow_overlap``: accept image ids shared by ``train`` and ``val``/``test``.
        """
        root = Path(metadata_root)
        splits = read_splits(root, size_order=size_order)  # type: ignore[arg-type]
        level_sets = {s: set(sp.levels) for s, sp in splits.items()}
        if len({frozenset(v) for v in level_sets.values()}) > 1:
            raise MetadataError(f"splits have different class_labels_<level>.txt files: "
                                f"{ {s: sorted(v) for s, v in level_sets.items()} }", root)
        images = pl.concat([sp.images for sp in splits.values()], how="vertical_relaxed")
        extra = _order_levels(images, next(iter(level_sets.values())))
        class_names = _class_names(root / class_names_file(), images["label"].to_numpy(), "")
        if not extra:
            return cls(root.name, splits, class_names, flat_hierarchy(class_names), image_root, allow_overlap)
        finest = "species" if all(lv in RANKS for lv in extra) else "c0" if extra == [
            f"c{k}" for k in range(1, len(extra) + 1)] else "leaf"
        labels = {finest: images["label"].to_numpy()}
        names = {finest: class_names}
        for level in extra:
            labels[level] = images[f"label_{level}"].to_numpy()
            names[level] = _class_names(root / class_names_file(level), labels[level], level)
        root_name, root_level = "root", None
        above = [r for r in RANKS[RANKS.index(extra[-1]) + 1:] if entry_exists(root / class_names_file(r))
                 ] if finest == "species" else []
        if len(names[extra[-1]]) == 1:
            root_name = names[extra[-1]][0]
        elif finest == "species" and above:
            top = read_class_names(root / class_names_file(above[0]))
            if len(top) == 1:
                root_name, root_level = top[0], above[0]
        try:
            hierarchy = Hierarchy.from_level_labels(labels, names, root_name, root_level)
        except ParentConflictError as exc:
            raise MetadataError(_conflict_message(exc, root, splits, finest)) from None
        return cls(root.name, splits, class_names, hierarchy, image_root, allow_overlap)

    # -------------------------------------------------------------------------- access

    @property
    def levels(self) -> tuple[str, ...]:
        """The hierarchy's levels, finest first."""
        return self.hierarchy.levels

    def _split(self, split: str) -> SplitMetadata:
        if split not in self.splits:
            raise InatlocError(f"{self.name} has no split {split!r}; splits are {list(self.splits)}")
        return self.splits[split]

    def images(self, split: str) -> pl.DataFrame:
        """``image_id, width, height, label`` and ``label_<level>`` for every coarser level."""
        images = self._split(split).images
        leaf = images["label"].to_numpy()
        return images.with_columns(
            pl.Series(f"label_{lv}", self.hierarchy.level_index(lv)[leaf]) for lv in self.levels[1:]
        )

    def labels(self, split: str, level: str | int = 0) -> np.ndarray:
        """Class indices at ``level`` (a level name, ``cK``, or an index into ``levels``)."""
        leaf = self._split(split).images["label"].to_numpy()
        return self.hierarchy.level_index(self.levels[level] if isinstance(level, int) else level)[leaf]

    def class_names(self, level: str | int = 0) -> tuple[str, ...]:
        """Names of the classes at ``level`` in class-index order."""
        return self.hierarchy.level_names(self.levels[level] if isinstance(level, int) else level)

    def boxes(self, split: str) -> pl.DataFrame:
        """``image_id, x0, y0, x1, y1`` in original-image pixels (several rows per image)."""
        return self._split(split).boxes

    def gt_boxes(self, split: str, size: int = 224) -> list[np.ndarray]:
        """Boxes per image (``images(split)`` order) rescaled to a ``size`` x ``size`` grid.

        Each coordinate becomes ``int(x * size / width)`` (``y`` with ``height``), truncated
        as in the reference wsolevaluation code. Returns int64 arrays of shape ``(n_i, 4)``.
        """
        meta = self._split(split)
        if meta.boxes.height == 0:
            raise MetadataError(f"{self.name} split {split!r} has no boxes")
        row = pl.DataFrame({"image_id": meta.images["image_id"]}).with_row_index("row")
        joined = (meta.boxes.with_row_index("order")
                  .join(row, on="image_id").join(meta.images.select("image_id", "width", "height"), on="image_id")
                  .sort("row", "order"))
        xy = joined.select("x0", "y0", "x1", "y1").to_numpy().astype(np.float64)
        scale = joined.select("width", "height").to_numpy().astype(np.float64)[:, [0, 1, 0, 1]]
        scaled = (xy * float(size) / scale).astype(np.int64)
        counts = np.bincount(joined["row"].to_numpy(), minlength=meta.images.height)
        return np.split(scaled, np.cumsum(counts)[:-1])

    def image_path(self, image_id: str) -> Path:
        """Path of an image under ``image_root``."""
        if self.image_root is None:
            raise InatlocError(f"{self.name} has no image root: give image_root to locate images")
        return self.image_root / image_id

    def items(self, split: str, level: str | int = 0, image_ids: Sequence[str] | None = None) -> list[tuple[Path, int]]:
        """``(image path, class index at level)`` pairs for training, optionally restricted to
        ``image_ids`` (e.g. from :meth:`subsample`), in that order."""
        ids = self._split(split).images["image_id"].to_list()
        labels = self.labels(split, level)
        if image_ids is None:
            return [(self.image_path(i), int(y)) for i, y in zip(ids, labels)]
        position = {i: k for k, i in enumerate(ids)}
        unknown = [i for i in image_ids if i not in position]
        if unknown:
            raise MetadataError(f"{len(unknown)} image ids not in {self.name} {split}: {unknown[:_MAX_LISTED]}")
        return [(self.image_path(i), int(labels[position[i]])) for i in image_ids]

    def check_images(self, split: str, progress: bool = True) -> int:
        """Open every image header of ``split``; returns the number checked.

        Raises :class:`MetadataError` listing every missing or unreadable file (the full list
        is in the exception's ``problems`` attribute).
        """
        from PIL import Image, UnidentifiedImageError
        from inatloc_nb.core.progress import track

        ids = self._split(split).images["image_id"].to_list()
        problems: list[str] = []
        for image_id in track(ids, desc=f"checking {self.name} {split} images", show=progress):
            path = self.image_path(image_id)
            if not path.is_file():
                problems.append(f"{path} (missing)")
                continue
            try:
                with Image.open(path) as im:
                    im.size  # noqa: B018 - reading the header is the check
            except (OSError, UnidentifiedImageError) as exc:
                problems.append(f"{path} (unreadable: {exc.__class__.__name__})")
        if problems:
            shown = "; ".join(problems[:_MAX_LISTED])
            more = f"; and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
            err = MetadataError(f"{len(problems)} of {len(ids)} images of split {split!r} missing or "
                                f"unreadable: {shown}{more}", self.image_root)
            err.problems = problems  # type: ignore[attr-defined]
            raise err
        return len(ids)

    def subsample(self, split: str, level: str | int, per_class: int, seed: int) -> list[str]:
        """``per_class`` images drawn uniformly without replacement from every category at
        ``level``, seeded; categories with fewer images keep all of them (reported by a
        warning). Returns the chosen image ids in ``images(split)`` order."""
        if per_class <= 0:
            raise InatlocError(f"per_class must be positive, got {per_class}")
        labels = self.labels(split, level)
        rng = np.random.default_rng(seed)
        chosen = np.zeros(len(labels), dtype=bool)
        short: list[str] = []
        names = self.class_names(level)
        for cls_idx in np.unique(labels):
            members = np.flatnonzero(labels == cls_idx)
            if len(members) <= per_class:
                chosen[members] = True
                if len(members) < per_class:
                    short.append(f"{names[cls_idx]} ({len(members)})")
            else:
                chosen[rng.choice(members, size=per_class, replace=False)] = True
        if short:
            warnings.warn(f"{self.name} {split} at {level}: {len(short)} categories have fewer than "
                          f"{per_class} images and keep all: {short[:_MAX_LISTED]}", stacklevel=2)
        ids = self._split(split).images["image_id"]
        return ids.filter(pl.Series(chosen)).to_list()

    # ----------------------------------------------------------------------- reporting

    def describe(self) -> pl.DataFrame:
        """One row per split: images, boxes and the number of categories at each level."""
        rows = []
        for split, meta in self.splits.items():
            row: dict[str, object] = {"split": split, "images": meta.images.height, "boxes": meta.boxes.height}
            for level in self.levels:
                row[f"n_{level}"] = len(np.unique(self.labels(split, level)))
            rows.append(row)
        return pl.DataFrame(rows)

    def __repr__(self) -> str:
        sizes = ", ".join(
            f"{s}={m.images.height}" + (f" ({m.boxes.height} boxes)" if m.boxes.height else "")
            for s, m in self.splits.items()
        )
        return f"WSOLDataset({self.name!r}, {sizes}, {self.hierarchy!r}, image_root={self.image_root})"


def check_split_overlap(name: str, splits: Mapping[str, SplitMetadata]) -> None:
    """Refuse image ids of ``train`` (D_w) that are also in ``val`` (D_f) or ``test`` (D_test)."""
    if "train" not in splits:
        return
    train = splits["train"].images["image_id"]
    for other in ("val", "test"):
        if other not in splits:
            continue
        shared = train.filter(train.is_in(splits[other].images["image_id"].implode())).to_list()
        if shared:
            raise MetadataError(
                f"{name}: {len(shared)} image id(s) are in both train and {other} (train/test leakage): "
                f"{shared[:_MAX_LISTED]}; remove them from one split, or pass allow_overlap=True "
                "(--allow-split-overlap) to accept the overlap")


def flat_hierarchy(class_names: Sequence[str], level: str | None = None, root: str = "root") -> Hierarchy:
    """Every class directly under ``root``, in the given class-index order; the one level is
    called ``level`` (``None``: deepest-only ``c0``)."""
    return Hierarchy.from_parent_map({n: root for n in class_names}, root,
                                     levels=None if level is None else [level], leaves=list(class_names))


def _conflict_message(exc: ParentConflictError, root: Path, splits: Mapping[str, SplitMetadata], finest: str) -> str:
    """A parent conflict found on the concatenated splits, told by files and lines."""
    def label_file(level: str) -> str:
        return CLASS_LABELS if level == finest else level_labels_file(level)

    def where(row: int) -> str:
        for split, meta in splits.items():
            if row < meta.images.height:
                image_id = meta.images["image_id"][row]
                places = []
                for level in (exc.level, exc.parent_level):
                    path = root / split / label_file(level)
                    places.append(f"{path}:{id_lines(path).get(image_id, ['?'])[0]}")
                return f"image {image_id!r}: {' and '.join(places)}"
            row -= meta.images.height
        return f"row {row}"  # pragma: no cover - rows come from the concatenated splits

    (first, second), (row_a, row_b) = exc.parents, exc.rows
    return (f"{exc.level} {exc.node!r} is labelled under two {exc.parent_level} classes: {first!r} "
            f"({where(row_a)}) and {second!r} ({where(row_b)}); a class has one parent at each coarser level")


def _order_levels(images: pl.DataFrame, levels: set[str]) -> list[str]:
    """Extra levels finest first: by rank when all are ranks, else by decreasing class count."""
    if all(lv in RANKS for lv in levels):
        return sorted(levels, key=RANKS.index)
    if all(re.fullmatch(r"c[1-9]\d*", lv) for lv in levels):
        return sorted(levels, key=lambda lv: int(lv[1:]))
    return sorted(levels, key=lambda lv: (-images[f"label_{lv}"].n_unique(), lv))


def _class_names(path: Path, labels: np.ndarray, level: str) -> list[str]:
    """Names from ``path`` if present, else generated from the label range."""
    if entry_exists(path):
        names = read_class_names(path)
        if labels.size and labels.max() >= len(names):
            raise MetadataError(f"label {labels.max()} has no name among the {len(names)} classes", path)
        return names
    n = int(labels.max()) + 1 if labels.size else 0
    return [f"{level} {i}" if level else str(i) for i in range(n)]


def load_shipped(name: str, with_hierarchy: bool = True, image_root: str | Path | None = None) -> WSOLDataset:
    """Load the real metadata shipped in ``data/``: ``"cub"``, ``"ilsvrc"`` or ``"inatloc500"``.

    With ``with_hierarchy`` CUB and iNatLoc500 get their iNaturalist taxonomy
    (:mod:`inatloc_nb.hierarchies.inaturalist`; CUB classes without an unambiguous species are excluded)
    and ILSVRC its WordNet tree (:mod:`inatloc_nb.hierarchies.imagenet`: classes named by wnid, levels
    ``cK``, the 73 classes App. C drops are excluded); otherwise the hierarchy is flat.
    """
    if name not in SHIPPED:
        raise InatlocError(f"unknown shipped dataset {name!r}; choose from {list(SHIPPED)}")
    images, boxes, classes = (read_shipped(f"{name}_{part}.parquet") for part in ("images", "boxes", "classes"))
    class_names = classes.sort("label")["name"].to_list()
    splits = {}
    for split in SPLITS:
        part = images.filter(pl.col("split") == split)
        if part.height:
            splits[split] = SplitMetadata(
                split, part.select("image_id", "width", "height", "label"),
                boxes.filter(pl.col("split") == split).drop("split"),
                "wh" if part["width"].null_count() == 0 else None)
    if with_hierarchy and name == "ilsvrc":
        hierarchy = imagenet.ilsvrc_hierarchy()  # classes are named by their wnid; 73 are excluded (App. C)
        class_names = imagenet.ilsvrc_classes()["wnid"].to_list()
    elif with_hierarchy:
        hierarchy = inaturalist.cub_hierarchy() if name == "cub" else inaturalist.inatloc500_hierarchy()
        if name == "cub":  # CUB classes are named by their leaf (species); unmapped ones stay excluded
            class_names = [hierarchy.leaves[k] if k >= 0 else c
                           for c, k in zip(class_names, inaturalist.cub_label_to_leaf())]
    else:
        hierarchy = flat_hierarchy(class_names, None if name == "ilsvrc" else "species")
    return WSOLDataset(name, splits, class_names, hierarchy, image_root)


def open_split(path: str | Path, split: str | None = None) -> tuple[WSOLDataset, str]:
    """One split to score: a metadata root with ``split`` (default ``test``), or a split folder.

    A split folder (one holding ``image_ids.txt``, as the reference code's ``metadata/CUB/test``)
    is read alone, flat, with class names from its parent's ``class_names.txt`` when present;
    ``split`` must then be None or the folder's name. Returns ``(dataset, split name)``.
    """
    path = Path(path)
    if entry_exists(path / IMAGE_IDS):
        if split is not None and split != path.name:
            raise InatlocError(f"{path} is the split folder {path.name!r}, but split {split!r} was asked "
                               "for; give the metadata root with that split, or no split")
        meta = read_split(path)
        names = _class_names(path.parent / class_names_file(), meta.images["label"].to_numpy(), "")
        return WSOLDataset(path.parent.name or path.name, {path.name: meta}, names, flat_hierarchy(names)), path.name
    split = split or "test"
    dataset = WSOLDataset.from_folder(path)
    if split not in dataset.splits:
        raise InatlocError(f"{path}: no split {split!r} (found {sorted(dataset.splits)}); give --split "
                           "or a split folder")
    return dataset, split
