"""Read and write WSOL metadata in the Choe et al. (CVPR 2020) format.

One folder per split holds plain-text, comma-separated files, one row per line:

- ``image_ids.txt``: ``path/to/image.jpg`` (required; defines the row order)
- ``class_labels.txt``: ``path,label`` at the finest level (required)
- ``class_labels_<level>.txt``: the same rows relabelled at a coarser level (optional)
- ``image_sizes.txt``: ``path,width,height`` (optional; needed when boxes are present)
- ``localization.txt``: ``path,x0,y0,x1,y1``; several rows for one path are several boxes
  (optional; when present every image needs at least one box)

Class names sit at the dataset root in ``class_names.txt`` / ``class_names_<level>.txt``.

Lines may end in LF or CRLF, the last line may lack its newline and trailing blank lines are
ignored. Whitespace around each comma-separated field (an image id followed by spaces or a
tab in one file but not in another) is stripped, so every file gets the same ids. Every malformation raises :class:`~inatloc_nb.core.errors.MetadataError` naming the file
and the 1-based line (or the offending ids). Image ids may not contain commas.

Box coordinates are pixel coordinates ``(x0, y0, x1, y1)``. A box fits its image when
``0 <= x0 <= x1 <= width`` and ``0 <= y0 <= y1 <= height``: the right and bottom edges may lie
on the image border, as in the iNatLoc500 release (iNaturalist boxes converted with
``x1 = x + w``) and Choe et al.'s CUB metadata. The reference evaluation reads such boxes as
they are, and so does this package: nothing is clamped. A box beyond the border is an error.

**Size order.** Some datasets write ``image_sizes.txt`` as ``path,height,width``. With
``size_order="auto"`` the order is detected from the boxes: the order under which every box
fits is chosen. If both orders fit every box, the one under which no box ends on the border (``x1 == width`` or
``y1 == height``) is chosen; if that does not decide, the choice only matters when some image is not
square: then reading fails (name the order explicitly with ``size_order="wh"`` or ``"hw"``);
when every image is square, width,height is used. If neither order fits, the first box that
falls outside its image under the better-fitting order is reported. :func:`read_splits` reads a
whole dataset folder: a split without boxes takes the order detected on the splits with boxes.

**Unreadable entries.** A split folder or metadata file that exists but cannot be read (a
symbolic link loop, a broken link, a permission error) is an error naming it, never taken for a
missing split or an absent optional file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from inatloc_nb.core.atomic import atomic_write_text
from inatloc_nb.core.errors import MetadataError

SizeOrder = Literal["auto", "wh", "hw"]

IMAGE_IDS = "image_ids.txt"
CLASS_LABELS = "class_labels.txt"
IMAGE_SIZES = "image_sizes.txt"
LOCALIZATION = "localization.txt"

BOX_COLUMNS = ("x0", "y0", "x1", "y1")
#: The split folders of a dataset: D_w, D_f, D_test.
SPLITS = ("train", "val", "test")
_MAX_LISTED = 5


def level_labels_file(level: str) -> str:
    """File name of the labels at an extra ``level``: ``class_labels_<level>.txt``."""
    return f"class_labels_{level}.txt"


def class_names_file(level: str | None = None) -> str:
    """File name of the class names at ``level`` (``None``: the finest level)."""
    return "class_names.txt" if level is None else f"class_names_{level}.txt"


@dataclass(frozen=True)
class SplitMetadata:
    """The metadata of one split.

    ``images``: one row per image in ``image_ids.txt`` order with ``image_id`` (str),
    ``width``, ``height`` (Int64, null when the split has no ``image_sizes.txt``), ``label``
    (finest level) and ``label_<level>`` for every extra level. ``boxes``: ``image_id, x0, y0,
    x1, y1``, several rows per image allowed. ``size_order`` records how ``image_sizes.txt``
    was read (``"wh"``, ``"hw"``, or ``None`` when there were no sizes).
    """

    name: str
    images: pl.DataFrame
    boxes: pl.DataFrame = field(default_factory=lambda: _empty_boxes())
    size_order: Literal["wh", "hw"] | None = None

    def __post_init__(self) -> None:
        missing = [c for c in ("image_id", "width", "height", "label") if c not in self.images.columns]
        if missing:
            raise MetadataError(f"split {self.name!r}: images table lacks columns {missing}")
        missing = [c for c in ("image_id", *BOX_COLUMNS) if c not in self.boxes.columns]
        if missing:
            raise MetadataError(f"split {self.name!r}: boxes table lacks columns {missing}")
        int_cols = ["width", "height", "label", *(f"label_{lv}" for lv in self.levels)]
        images = self.images.with_columns(
            pl.col("image_id").cast(pl.String), *(pl.col(c).cast(pl.Int64) for c in int_cols)
        )
        boxes = self.boxes.select(
            pl.col("image_id").cast(pl.String), *(pl.col(c).cast(pl.Int64) for c in BOX_COLUMNS)
        )
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "boxes", boxes)

    @property
    def levels(self) -> tuple[str, ...]:
        """Names of the extra (coarser) levels present as ``label_<level>`` columns."""
        return tuple(c[len("label_"):] for c in self.images.columns if c.startswith("label_"))

    @property
    def has_sizes(self) -> bool:
        """Whether image sizes are known."""
        return self.images.height > 0 and self.images["width"].null_count() == 0

    def validate(self) -> None:
        """Check ids are unique, labels and sizes valid and every box fits its image.

        Raises :class:`MetadataError` naming the offending ids.
        """
        where = f"split {self.name!r}"
        ids = self.images["image_id"]
        dup = ids.filter(ids.is_duplicated()).unique(maintain_order=True).to_list()
        if dup:
            raise MetadataError(f"{where}: duplicate image ids {_list(dup)}")
        for col in ["label", *(f"label_{lv}" for lv in self.levels)]:
            bad = self.images.filter(pl.col(col).is_null() | (pl.col(col) < 0))["image_id"].to_list()
            if bad:
                raise MetadataError(f"{where}: missing or negative {col} for images {_list(bad)}")
        sized = self.images["width"].null_count() == 0 and self.images["height"].null_count() == 0
        if sized:
            bad = self.images.filter((pl.col("width") <= 0) | (pl.col("height") <= 0))["image_id"]
            if len(bad):
                raise MetadataError(f"{where}: non-positive image size for {_list(bad.to_list())}")
        if self.boxes.height == 0:
            return
        if not sized:
            raise MetadataError(f"{where}: boxes are given but image sizes are not")
        joined = self.boxes.join(self.images.select("image_id", "width", "height"), on="image_id", how="left")
        unknown = joined.filter(pl.col("width").is_null())["image_id"].unique(maintain_order=True)
        if len(unknown):
            raise MetadataError(f"{where}: boxes for unknown image ids {_list(unknown.to_list())}")
        outside = joined.filter(
            (pl.col("x0") < 0) | (pl.col("y0") < 0) | (pl.col("x1") < pl.col("x0"))
            | (pl.col("y1") < pl.col("y0")) | (pl.col("x1") > pl.col("width"))
            | (pl.col("y1") > pl.col("height"))
        )["image_id"].unique(maintain_order=True)
        if len(outside):
            raise MetadataError(f"{where}: boxes reversed or outside the image for {_list(outside.to_list())}")
        no_box = self.images.filter(~pl.col("image_id").is_in(self.boxes["image_id"].implode()))["image_id"]
        if len(no_box):
            raise MetadataError(f"{where}: images without a box {_list(no_box.to_list())}")


def read_split(
    split_dir: str | Path, levels: Sequence[str] | None = None, size_order: SizeOrder = "auto"
) -> SplitMetadata:
    """Read one split folder.

    ``levels``: the extra levels to read from ``class_labels_<level>.txt`` (``None``: every
    such file present). ``size_order``: how ``image_sizes.txt`` is ordered (see the module
    docstring for the ``"auto"`` rule).
    """
    split_dir = Path(split_dir)
    entries = folder_entries(split_dir, "split folder")
    ids_table = _read_rows(split_dir / IMAGE_IDS, 1, ints=False)
    ids = ids_table.ids
    index = _index_ids(ids_table)

    columns: dict[str, object] = {"image_id": ids}
    labels = _aligned(_read_rows(split_dir / CLASS_LABELS, 2), ids_table, index)
    _check_nonnegative(labels, "label")
    columns["label"] = labels.values[:, 0]
    if levels is None:
        prefix = "class_labels_"
        levels = sorted(name[len(prefix):-len(".txt")] for name in entries
                        if name.startswith(prefix) and name.endswith(".txt") and len(name) > len(prefix) + 4)
    for level in levels:
        table = _aligned(_read_rows(split_dir / level_labels_file(level), 2), ids_table, index)
        _check_nonnegative(table, "label")
        columns[f"label_{level}"] = table.values[:, 0]

    sizes_path, boxes_path = split_dir / IMAGE_SIZES, split_dir / LOCALIZATION
    n = len(ids)
    width = height = pl.Series([None] * n, dtype=pl.Int64)
    boxes = _empty_boxes()
    order: Literal["wh", "hw"] | None = None
    if IMAGE_SIZES in entries:
        sizes = _aligned(_read_rows(sizes_path, 3), ids_table, index)
        bad = np.flatnonzero((sizes.values <= 0).any(axis=1))
        if bad.size:
            raise MetadataError(f"image size must be positive, got {tuple(sizes.values[bad[0]])}",
                                sizes_path, sizes.lines[bad[0]])
        box_table = _read_boxes(boxes_path, ids_table, index) if LOCALIZATION in entries else None
        order = _size_order(sizes, box_table, index, size_order)
        first, second = sizes.values[:, 0], sizes.values[:, 1]
        width, height = (first, second) if order == "wh" else (second, first)
        if box_table is not None:
            boxes = pl.DataFrame(
                {"image_id": box_table.ids,
                 **{c: box_table.values[:, j] for j, c in enumerate(BOX_COLUMNS)}}
            )
    elif LOCALIZATION in entries:
        raise MetadataError(f"{LOCALIZATION} is present but {IMAGE_SIZES} is missing", sizes_path)
    columns["width"], columns["height"] = width, height
    images = pl.DataFrame(columns).select("image_id", "width", "height", "label",
                                          *(f"label_{lv}" for lv in levels))
    return SplitMetadata(split_dir.name, images, boxes, order)


def read_splits(
    root: str | Path, splits: Sequence[str] | None = None, size_order: SizeOrder = "auto"
) -> dict[str, SplitMetadata]:
    """Read the split folders of a dataset folder (in :data:`SPLITS` order, or the order of ``splits``).

    ``splits``: the splits to read (``None``: every one present). With ``size_order="auto"``
    a split without boxes (``train`` as ``make-dataset`` writes it) reads its sizes in the
    order detected on the dataset's splits with boxes, when they all agree. Raises
    :class:`MetadataError` naming the folder when no split is present, a requested split is
    missing, or a split folder cannot be read.
    """
    root = Path(root)
    present = find_splits(root)
    if not present:
        raise MetadataError(f"no split folder ({', '.join(SPLITS)}) found", root)
    wanted = present if splits is None else list(dict.fromkeys(splits))
    absent = [s for s in wanted if s not in present]
    if absent:
        raise MetadataError(f"split folder not found (the folder has {', '.join(present)})", root / absent[0])
    boxed = [s for s in present if LOCALIZATION in folder_entries(root / s, "split folder")]
    read = {s: read_split(root / s, size_order=size_order) for s in wanted if s in boxed}
    rest = [s for s in wanted if s not in read]
    if rest and size_order == "auto":
        for s in boxed:  # splits not asked for still tell the order
            if s not in read:
                read[s] = read_split(root / s, size_order=size_order)
        orders = {read[s].size_order for s in boxed}
        rest_order: SizeOrder = orders.pop() if len(orders) == 1 else size_order  # type: ignore[assignment]
    else:
        rest_order = size_order
    for s in rest:
        read[s] = read_split(root / s, size_order=rest_order)
    return {s: read[s] for s in wanted}


def find_splits(root: str | Path) -> list[str]:
    """The split folders (of :data:`SPLITS`) present in ``root``, in that order.

    An entry named like a split that is not a readable folder (a file, a broken link, a
    symbolic link loop, a permission error) raises :class:`MetadataError` naming it.
    """
    root = Path(root)
    entries = folder_entries(root, "metadata folder")
    present = []
    for split in SPLITS:
        if split in entries:
            folder_entries(root / split, "split folder")
            present.append(split)
    return present


def folder_entries(folder: str | Path, what: str = "folder") -> set[str]:
    """The names in ``folder``; :class:`MetadataError` naming it (as ``what``) when it is
    missing, not a folder, or cannot be listed."""
    folder = Path(folder)
    try:
        with os.scandir(folder) as listing:
            return {entry.name for entry in listing}
    except FileNotFoundError:
        raise MetadataError(f"{what} not found" + (" (a broken symbolic link)" if folder.is_symlink() else ""),
                            folder) from None
    except NotADirectoryError:
        raise MetadataError(f"{what} expected, but this is a file", folder) from None
    except OSError as exc:
        raise MetadataError(f"{what} cannot be read: {_reason(exc)}", folder) from None


def entry_exists(path: str | Path) -> bool:
    """Whether ``path`` names an entry (even a broken or looping link, which reading will then
    report); only an entry that is truly absent gives False. A folder on the way that cannot
    be searched raises :class:`MetadataError` naming ``path``."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise MetadataError(f"cannot be read: {_reason(exc)}", path) from None
    return True


def write_split(split_dir: str | Path, split: SplitMetadata) -> Path:
    """Write ``split`` as a Choe-format folder (sizes as width,height); returns the folder.

    ``image_sizes.txt`` is written when sizes are known, ``localization.txt`` when there are
    boxes. The split is validated first (:meth:`SplitMetadata.validate`).
    """
    split.validate()
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    images = split.images
    ids = images["image_id"].to_list()
    atomic_write_text(split_dir / IMAGE_IDS, "".join(f"{i}\n" for i in ids))
    _write_rows(split_dir / CLASS_LABELS, ids, images.select("label"))
    for level in split.levels:
        _write_rows(split_dir / level_labels_file(level), ids, images.select(f"label_{level}"))
    if split.has_sizes:
        _write_rows(split_dir / IMAGE_SIZES, ids, images.select("width", "height"))
    if split.boxes.height:
        _write_rows(split_dir / LOCALIZATION, split.boxes["image_id"].to_list(), split.boxes.select(BOX_COLUMNS))
    return split_dir


def read_class_names(path: str | Path) -> list[str]:
    """Read class names in class-index order.

    Accepted layouts: ``index,name`` or ``name,index`` per line (indices ``0..n-1``, each
    once, in any order), or one name per line (the line order is the index).
    """
    path = Path(path)
    lines = _read_lines(path)
    if not lines:
        raise MetadataError("no class names", path)
    first = [_int_or_none(line.partition(",")[0]) for _, line in lines]
    last = [_int_or_none(line.rpartition(",")[2]) if "," in line else None for _, line in lines]
    if all(v is not None for v in first):
        pairs = [(i, line.partition(",")[2]) for i, (_, line) in zip(first, lines)]
    elif all(v is not None for v in last):
        pairs = [(i, line.rpartition(",")[0]) for i, (_, line) in zip(last, lines)]
    else:
        pairs = list(enumerate(line for _, line in lines))
    names: list[str | None] = [None] * len(pairs)
    for (lineno, _), (i, name) in zip(lines, pairs):
        name = name.strip()
        if not 0 <= i < len(pairs):
            raise MetadataError(f"class index {i} outside 0..{len(pairs) - 1}", path, lineno)
        if names[i] is not None:
            raise MetadataError(f"class index {i} given twice", path, lineno)
        if not name:
            raise MetadataError("empty class name", path, lineno)
        names[i] = name
    return [n for n in names if n is not None]


def write_class_names(path: str | Path, names: Iterable[str]) -> Path:
    """Write class names as ``index,name`` lines."""
    names = list(names)
    bad = [n for n in names if not n or "\n" in n or "\r" in n]
    if bad:
        raise MetadataError(f"class names must be non-empty single lines: {_list(bad)}", path)
    return atomic_write_text(path, "".join(f"{i},{n}\n" for i, n in enumerate(names)))


# --- parsing ---------------------------------------------------------------------------------


@dataclass
class _Rows:
    """The parsed rows of one file: ids, integer fields, the 1-based line of each row and,
    for boxes, the row of each box's image in ``image_ids.txt``."""

    path: Path
    ids: list[str]
    values: np.ndarray
    lines: np.ndarray
    image_rows: np.ndarray | None = None


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; CRLF, missing final newline and trailing
    blank lines are accepted, a blank line inside the file is an error."""
    data = read_file_bytes(path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MetadataError(f"not UTF-8 text: {exc.reason}", path, line) from None
    raw = text.split("\n")
    while raw and not raw[-1].strip():
        raw.pop()
    out = []
    for i, line in enumerate(raw, start=1):
        line = line.rstrip()
        if not line:
            raise MetadataError("blank line", path, i)
        out.append((i, line))
    return out


def id_lines(path: str | Path) -> dict[str, list[int]]:
    """``{image id: [1-based lines]}`` of a comma-separated metadata file (the first field of
    each non-blank line); empty when the file does not exist."""
    path = Path(path)
    if not entry_exists(path):
        return {}
    lines: dict[str, list[int]] = {}
    for number, line in _read_lines(path):
        lines.setdefault(line.split(",")[0].strip(), []).append(number)
    return lines


def read_file_bytes(path: str | Path) -> bytes:
    """The bytes of a metadata file; :class:`MetadataError` naming it when it is missing, a
    folder, a broken or looping link, or unreadable."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise MetadataError("file not found" + (" (a broken symbolic link)" if path.is_symlink() else ""),
                            path) from None
    except IsADirectoryError:
        raise MetadataError("file expected, but this is a folder", path) from None
    except OSError as exc:
        raise MetadataError(f"cannot be read: {_reason(exc)}", path) from None


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _read_rows(path: Path, n_fields: int, ints: bool = True) -> _Rows:
    """Parse ``id,int,...`` rows with exactly ``n_fields`` comma-separated fields."""
    lines = _read_lines(path)
    ids: list[str] = []
    values = np.zeros((len(lines), n_fields - 1), dtype=np.int64)
    for row, (lineno, line) in enumerate(lines):
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != n_fields:
            raise MetadataError(f"expected {n_fields} comma-separated fields, found {len(fields)}", path, lineno)
        if not fields[0]:
            raise MetadataError("empty image id", path, lineno)
        ids.append(fields[0])
        if ints:
            try:
                values[row] = [int(f) for f in fields[1:]]
            except ValueError:
                raise MetadataError(f"expected integers after the image id, found {fields[1:]}", path, lineno) from None
    return _Rows(path, ids, values, np.array([ln for ln, _ in lines], dtype=np.int64))


def _index_ids(table: _Rows) -> dict[str, int]:
    index: dict[str, int] = {}
    for row, image_id in enumerate(table.ids):
        if image_id in index:
            raise MetadataError(f"duplicate image id {image_id!r} (first on line "
                                f"{table.lines[index[image_id]]})", table.path, int(table.lines[row]))
        index[image_id] = row
    return index


def _positions(table: _Rows, ids_table: _Rows, index: dict[str, int]) -> np.ndarray:
    """Row position in ``image_ids.txt`` of each row of ``table``; unknown ids are an error."""
    pos = np.fromiter((index.get(i, -1) for i in table.ids), dtype=np.int64, count=len(table.ids))
    unknown = np.flatnonzero(pos < 0)
    if unknown.size:
        names = list(dict.fromkeys(table.ids[k] for k in unknown))
        raise MetadataError(f"{len(names)} image id(s) not in {ids_table.path}: {_list(names)}",
                            table.path, int(table.lines[unknown[0]]))
    return pos


def _missing_ids(table: _Rows, ids_table: _Rows, pos: np.ndarray) -> None:
    present = np.zeros(len(ids_table.ids), dtype=bool)
    present[pos] = True
    missing = np.flatnonzero(~present)
    if missing.size:
        names = [ids_table.ids[k] for k in missing]
        raise MetadataError(f"{len(names)} image id(s) of {ids_table.path} missing here: {_list(names)}", table.path)


def _aligned(table: _Rows, ids_table: _Rows, index: dict[str, int]) -> _Rows:
    """Reorder a one-row-per-image file to ``image_ids.txt`` order, checking the id sets."""
    pos = _positions(table, ids_table, index)
    seen = np.full(len(ids_table.ids), -1, dtype=np.int64)
    for row, p in enumerate(pos):
        if seen[p] >= 0:
            raise MetadataError(f"image id {table.ids[row]!r} given twice (first on line "
                                f"{table.lines[seen[p]]})", table.path, int(table.lines[row]))
        seen[p] = row
    _missing_ids(table, ids_table, pos)
    order = seen
    return _Rows(table.path, ids_table.ids, table.values[order], table.lines[order])


def _check_nonnegative(table: _Rows, what: str) -> None:
    bad = np.flatnonzero((table.values < 0).any(axis=1))
    if bad.size:
        raise MetadataError(f"negative {what} {table.values[bad[0]].tolist()}", table.path, int(table.lines[bad[0]]))


def _read_boxes(path: Path, ids_table: _Rows, index: dict[str, int]) -> _Rows:
    """Boxes (``x1 >= x0``, ``y1 >= y0``) of known images; every image needs one."""
    table = _read_rows(path, 5)
    _check_nonnegative(table, "box coordinate")
    v = table.values
    bad = np.flatnonzero((v[:, 2] < v[:, 0]) | (v[:, 3] < v[:, 1]))
    if bad.size:
        raise MetadataError(f"box {tuple(v[bad[0]].tolist())} has x1 < x0 or y1 < y0", path, int(table.lines[bad[0]]))
    pos = _positions(table, ids_table, index)
    _missing_ids(table, ids_table, pos)
    table.image_rows = pos
    return table


def _size_order(sizes: _Rows, boxes: _Rows | None, index: dict[str, int], requested: SizeOrder) -> Literal["wh", "hw"]:
    """Choose how to read ``image_sizes.txt`` (see the module docstring)."""
    if requested not in ("auto", "wh", "hw"):
        raise MetadataError(f"size_order must be 'auto', 'wh' or 'hw', got {requested!r}", sizes.path)
    first, second = sizes.values[:, 0], sizes.values[:, 1]
    if boxes is None:
        fits = inside = {"wh": np.ones(0, bool), "hw": np.ones(0, bool)}
        rows = np.zeros(0, dtype=np.int64)
    else:
        rows = boxes.image_rows
        x1, y1 = boxes.values[:, 2], boxes.values[:, 3]
        fits = {"wh": (x1 <= first[rows]) & (y1 <= second[rows]),
                "hw": (x1 <= second[rows]) & (y1 <= first[rows])}
        inside = {"wh": (x1 < first[rows]) & (y1 < second[rows]), "hw": (x1 < second[rows]) & (y1 < first[rows])}
    if requested == "auto":
        ok = [o for o in ("wh", "hw") if fits[o].all()]
        if len(ok) == 1:
            return ok[0]  # type: ignore[return-value]
        strictly = [o for o in ok if inside[o].all()]
        if len(ok) == 2 and len(strictly) == 1:
            return strictly[0]  # type: ignore[return-value]
        if len(ok) == 2:
            non_square = int((first != second).sum())
            if non_square == 0:
                return "wh"
            raise MetadataError(
                f"cannot tell whether sizes are width,height or height,width: every box in "
                f"{boxes.path if boxes is not None else LOCALIZATION + ' (absent)'} fits both and "
                f"{non_square} image(s) are not square; name the order with --size-order wh (width,height, "
                f"as make-dataset and synth write it) or --size-order hw", sizes.path)
        requested = "wh" if (~fits["wh"]).sum() <= (~fits["hw"]).sum() else "hw"
        note = " (neither width,height nor height,width fits every box)"
    else:
        note = f" (sizes read as {'width,height' if requested == 'wh' else 'height,width'})"
    bad = np.flatnonzero(~fits[requested])
    if bad.size:
        k = bad[0]
        r = rows[k]
        w, h = (first[r], second[r]) if requested == "wh" else (second[r], first[r])
        raise MetadataError(
            f"box {tuple(boxes.values[k].tolist())} lies outside the {w}x{h} image "  # type: ignore[union-attr]
            f"({sizes.path} line {sizes.lines[r]}){note}", boxes.path, int(boxes.lines[k]))  # type: ignore[union-attr]
    return requested  # type: ignore[return-value]


def _write_rows(path: Path, ids: list[str], values: pl.DataFrame) -> None:
    cols = [values[c].to_list() for c in values.columns]
    atomic_write_text(path, "".join(",".join(map(str, (i, *row))) + "\n" for i, *row in zip(ids, *cols)))


def _empty_boxes() -> pl.DataFrame:
    return pl.DataFrame(schema={"image_id": pl.String, **{c: pl.Int64 for c in BOX_COLUMNS}})


def _int_or_none(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _list(items: Sequence[object]) -> str:
    shown = ", ".join(repr(i) for i in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"{shown} and {more} more" if more > 0 else shown
