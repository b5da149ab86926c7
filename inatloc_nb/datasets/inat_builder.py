"""Build an iNatLoc-style WSOL dataset from the iNaturalist competition files (Sec. 3).

Sources, as released:

- iNat 2021 ``train.json`` (COCO-like): ``images`` (``id, file_name, width, height``),
  ``annotations`` (``image_id, category_id``) and ``categories`` carrying the taxonomy
  (``kingdom, phylum, class, order, family, genus, specific_epithet, name``...). Its images
  of the chosen species form D_w (``train``).
- iNat 2017 box files ``train_2017_bboxes.json`` / ``val_2017_bboxes.json`` (COCO, ``bbox``
  = ``[x, y, w, h]``; categories carry only ``name`` and ``supercategory``). Images with
  exactly one box are single-instance candidates for D_f (``val``) and D_test (``test``).

Species are matched across the two releases by scientific name (2021: ``genus`` +
``specific_epithet``; 2017: ``name``). Taxa are chosen by 2017 supercategory, by a list of
names, or as N random eligible species (enough single-instance boxed images for both
splits), all seeded. Each species then gets ``per_species["val"]`` and ``["test"]``
single-instance images (disjoint, drawn with ``numpy.random.default_rng(seed)`` from the
candidates sorted by source split and id) and its 2021 training images (all, or a seeded
sample). The JSON files are streamed with ``ijson`` (one pass per top-level array, with a
byte progress bar), keeping only the fields needed. A bare ``NaN`` or ``Infinity`` value (the
2021 README warns that latitude and longitude can be NaN; such a file is not strict JSON) is
read as null.

Image ids are ``inat21/<2021 file_name>`` and ``inat17/<2017 file_name>``: make an image
root with those two folders (``build_inat(..., image_roots=...)`` links them). Boxes are
written in the convention of the iNatLoc500 release and of Choe et al.'s CUB metadata:
``x0 = x``, ``y0 = y``, ``x1 = x + w``, ``y1 = y + h`` (so a box reaching the right or bottom
border has ``x1 == width`` or ``y1 == height``); a fractional coordinate widens the box to
whole pixels (``floor`` of ``x``, ``ceil`` of ``x + w``), and a box reaching past the border
is clamped to it (the number clamped is reported). Every choice and count is in the returned
summary and in ``build.json`` in the output folder. Bad input is reported before anything is
written.
"""
from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from inatloc_nb.core.atomic import atomic_write_json, atomic_write_parquet
from inatloc_nb.core.errors import InatlocError, MetadataError
from inatloc_nb.core.shipped import data_dir, read_shipped
from inatloc_nb.datasets.build import write_dataset

__all__ = ["TAXON_LEVELS", "BuildSummary", "stream_coco", "read_inat21", "read_inat17_boxes", "single_instance",
           "choose_species", "build_inat", "compare_with_inatloc500", "inatloc500_species"]

#: Levels written, finest first (``kingdom`` becomes the root when it is a single taxon).
TAXON_LEVELS = ("species", "genus", "family", "order", "class", "phylum", "kingdom")
_RANKS_2021 = ("kingdom", "phylum", "class", "order", "family", "genus", "specific_epithet")
_FLUSH = 200_000


@dataclass
class BuildSummary:
    """What a build chose and counted (also written to ``build.json``)."""

    out: Path
    n_species: int
    images: dict[str, int]
    boxes_clamped: int
    skipped: dict[str, int]
    comparison: pl.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [f"wrote {self.out}: {self.n_species} species, "
               + ", ".join(f"{split} {n} images" for split, n in self.images.items())]
        out += [f"skipped {n} {what}" for what, n in self.skipped.items() if n]
        if self.boxes_clamped:
            out.append(f"{self.boxes_clamped} boxes reaching past the image border were clamped to it")
        if self.comparison is not None:
            for row in self.comparison.iter_rows(named=True):
                out.append(
                    f"vs shipped iNatLoc500 {row['split']}: {row['same']} of {row['built']} images are the "
                    f"shipped {row['split']} images, {row['in_shipped']} are in the shipped val or test "
                    f"({row['shipped']} shipped for the {row['species']} shared species)")
        return out


# ----------------------------------------------------------------------------- streaming


class _Columns:
    """Rows appended as tuples, flushed to polars frames in chunks to bound memory."""

    def __init__(self, schema: dict[str, Any]):
        self.schema, self.rows, self.frames = schema, [], []

    def add(self, row: tuple) -> None:
        self.rows.append(row)
        if len(self.rows) >= _FLUSH:
            self._flush()

    def _flush(self) -> None:
        if self.rows:
            self.frames.append(pl.DataFrame(self.rows, schema=self.schema, orient="row"))
            self.rows = []

    def frame(self) -> pl.DataFrame:
        self._flush()
        return pl.concat(self.frames) if self.frames else pl.DataFrame(schema=self.schema)


def stream_coco(path: str | Path, sections: Sequence[str], progress: bool = True) -> Iterator[tuple[str, dict]]:
    """Yield ``(section, object)`` for every item of the top-level arrays ``sections``.

    One streaming pass per section with ijson's C parser (about twice as fast as one pass
    that assembles the items in Python), so memory stays bounded by what the caller keeps.
    Raises ``MetadataError`` naming the file when it is not valid JSON or a section is
    missing or empty.
    """
    import ijson
    from inatloc_nb.core.progress import track

    path = Path(path)
    if not path.is_file():
        raise MetadataError("JSON file not found", path)
    size = path.stat().st_size
    with track(total=size * len(sections), unit="B", unit_scale=True, desc=f"reading {path.name}",
              show=progress) as bar:
        for section in sections:
            count = 0
            with path.open("rb") as raw:
                try:
                    for obj in ijson.items(_NonFiniteAsNull(raw, bar), f"{section}.item", use_float=True):
                        count += 1
                        yield section, obj
                except ijson.JSONError as exc:
                    raise MetadataError(f"not valid JSON near byte {raw.tell()}: {exc}", path) from None
                bar.update(size - raw.tell())
            if not count:
                raise MetadataError(f"no items in a top-level {section!r} array (missing or empty; "
                                    "expected a COCO-style JSON file)", path)


#: A member value that is a bare NaN / Infinity / -Infinity (not strict JSON). The member name
#: is restricted to identifier characters, which cannot stand outside a string in valid JSON, so
#: its closing quote ends a string and the value after the colon lies outside any string: text
#: inside strings is never rewritten. No match spans a comma, the reader's cut point.
_NON_FINITE = re.compile(rb'("[A-Za-z_][A-Za-z0-9_]*"\s*:\s*)(?:NaN|-?Infinity)')
_CHUNK = 1 << 16


class _NonFiniteAsNull:
    """A binary reader for ijson that turns member values ``NaN``/``Infinity`` into ``null``
    (ijson refuses them) and counts the bytes read on the progress bar. Chunks without such a
    token pass through untouched."""

    def __init__(self, raw: Any, bar: Any):
        self.raw, self.bar = raw, bar
        self.carry, self.ready = b"", b""

    def read(self, size: int = -1) -> bytes:
        if size == 0:  # ijson probes the kind of reader with read(0)
            return b""
        while size < 0 or len(self.ready) < size:
            data = self.raw.read(max(size, _CHUNK))
            self.bar.update(len(data))
            if not data:
                self.ready += self._rewrite(self.carry)
                self.carry = b""
                break
            text = self.carry + data
            cut = text.rfind(b",") + 1
            self.ready += self._rewrite(text[:cut])
            self.carry = text[cut:]
        if size < 0:
            size = len(self.ready)
        out, self.ready = self.ready[:size], self.ready[size:]
        return out

    @staticmethod
    def _rewrite(text: bytes) -> bytes:
        if b"NaN" in text or b"Infinity" in text:
            return _NON_FINITE.sub(rb"\1null", text)
        return text


def _field(obj: dict, key: str, path: Path, section: str, kind: type | tuple = (int,)) -> Any:
    value = obj.get(key)
    if value is None or not isinstance(value, kind) or isinstance(value, bool):
        raise MetadataError(f"{section} entry {_describe(obj)} has no valid {key!r} (got {value!r})", path)
    return value


def _describe(obj: dict) -> str:
    return f"id {obj['id']}" if "id" in obj else str(obj)[:80]


# ----------------------------------------------------------------------------- readers


def read_inat21(path: str | Path, progress: bool = True) -> tuple[pl.DataFrame, pl.DataFrame]:
    """iNat 2021 ``train.json`` -> ``(categories, images)``.

    ``categories``: ``category_id, species, kingdom, phylum, class, order, family, genus``
    (``species`` = genus + specific epithet); ``images``: ``image_id, file_name, width,
    height, category_id`` (one annotation per image). Raises ``MetadataError`` naming the
    file and entry id of a missing field, an image with two annotations or an unknown category.
    """
    path = Path(path)
    cats: list[tuple] = []
    images = _Columns({"image_id": pl.Int64, "file_name": pl.String, "width": pl.Int64, "height": pl.Int64})
    annotations = _Columns({"image_id": pl.Int64, "category_id": pl.Int64})
    for section, obj in stream_coco(path, ("images", "annotations", "categories"), progress):
        if section == "images":
            images.add((_field(obj, "id", path, section), _field(obj, "file_name", path, section, str),
                        _field(obj, "width", path, section), _field(obj, "height", path, section)))
        elif section == "annotations":
            annotations.add((_field(obj, "image_id", path, section), _field(obj, "category_id", path, section)))
        else:
            ranks = [_field(obj, rank, path, section, str) for rank in _RANKS_2021]
            cats.append((_field(obj, "id", path, section), f"{ranks[5]} {ranks[6]}", *ranks[:6]))
    categories = pl.DataFrame(cats, schema=["category_id", "species", *_RANKS_2021[:6]], orient="row")
    _unique(categories, "category_id", path, "category")
    ann = annotations.frame()
    _unique(ann, "image_id", path, "annotation image")
    frame = images.frame()
    _unique(frame, "image_id", path, "image")
    joined = frame.join(ann, on="image_id", how="left")
    unlabelled = joined.filter(pl.col("category_id").is_null())
    if unlabelled.height:
        raise MetadataError(f"{unlabelled.height} images have no annotation, e.g. id {unlabelled['image_id'][0]}", path)
    unknown = joined.join(categories, on="category_id", how="anti")
    if unknown.height:
        raise MetadataError(f"image {unknown['image_id'][0]} has unknown category {unknown['category_id'][0]}", path)
    return categories, joined


def read_inat17_boxes(path: str | Path, source_split: str, progress: bool = True) -> pl.DataFrame:
    """One iNat 2017 box file -> one row per box.

    Columns ``source_split, image_id, file_name, width, height, species, supercategory,
    annotation_id, x, y, w, h`` (COCO ``bbox``). Raises ``MetadataError`` naming the file and
    the entry of a missing field, a bbox that is not four numbers, or an unknown category/image.
    """
    path = Path(path)
    cats: list[tuple] = []
    images = _Columns({"image_id": pl.Int64, "file_name": pl.String, "width": pl.Int64, "height": pl.Int64})
    boxes = _Columns({"annotation_id": pl.Int64, "image_id": pl.Int64, "category_id": pl.Int64,
                      "x": pl.Float64, "y": pl.Float64, "w": pl.Float64, "h": pl.Float64})
    for section, obj in stream_coco(path, ("images", "annotations", "categories"), progress):
        if section == "images":
            images.add((_field(obj, "id", path, section), _field(obj, "file_name", path, section, str),
                        _field(obj, "width", path, section), _field(obj, "height", path, section)))
        elif section == "annotations":
            bbox = obj.get("bbox")
            if not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
                raise MetadataError(f"annotation {_describe(obj)}: bbox must be [x, y, w, h], got {bbox!r}", path)
            boxes.add((_field(obj, "id", path, section), _field(obj, "image_id", path, section),
                       _field(obj, "category_id", path, section), *map(float, bbox)))
        else:
            cats.append((_field(obj, "id", path, section), _field(obj, "name", path, section, str),
                         _field(obj, "supercategory", path, section, str)))
    categories = pl.DataFrame(cats, schema=["category_id", "species", "supercategory"], orient="row")
    _unique(categories, "category_id", path, "category")
    frame = images.frame()
    _unique(frame, "image_id", path, "image")
    box = boxes.frame()
    for table, key, what in ((frame, "image_id", "image"), (categories, "category_id", "category")):
        unknown = box.join(table, on=key, how="anti")
        if unknown.height:
            raise MetadataError(f"annotation {unknown['annotation_id'][0]} refers to unknown {what} "
                                f"{unknown[key][0]}", path)
    return (box.join(frame, on="image_id").join(categories, on="category_id")
            .select(pl.lit(source_split).alias("source_split"), "image_id", "file_name", "width", "height",
                    "species", "supercategory", "annotation_id", "x", "y", "w", "h"))


def _unique(frame: pl.DataFrame, column: str, path: Path, what: str) -> None:
    dup = frame.filter(pl.col(column).is_duplicated())
    if dup.height:
        raise MetadataError(f"{what} id {dup[column][0]} appears twice", path)


# ----------------------------------------------------------------------------- selection


def single_instance(boxes: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Images with exactly one usable box, in the release's convention ``x1 = x + w``,
    ``y1 = y + h`` (see the module docstring).

    Returns ``(table, skipped)``: ``table`` has ``source_split, image_id, file_name, width,
    height, species, supercategory, x0, y0, x1, y1, clamped``; ``skipped`` counts images with
    several boxes and boxes that do not overlap their image (zero or negative size, or
    entirely outside).
    """
    per_image = boxes.group_by("source_split", "image_id").agg(pl.len().alias("n"))
    single = boxes.join(per_image.filter(pl.col("n") == 1), on=["source_split", "image_id"]).drop("n")
    table = single.with_columns(
        x0=pl.col("x").floor().cast(pl.Int64), y0=pl.col("y").floor().cast(pl.Int64),
        x1=(pl.col("x") + pl.col("w")).ceil().cast(pl.Int64), y1=(pl.col("y") + pl.col("h")).ceil().cast(pl.Int64))
    usable = ((pl.col("w") > 0) & (pl.col("h") > 0) & (pl.col("x0") < pl.col("width"))
              & (pl.col("y0") < pl.col("height")) & (pl.col("x1") > 0) & (pl.col("y1") > 0))
    bad = table.filter(~usable).height
    table = table.filter(usable)
    clipped = dict(
        x0=pl.col("x0").clip(0, None), y0=pl.col("y0").clip(0, None),
        x1=pl.min_horizontal("x1", "width"), y1=pl.min_horizontal("y1", "height"))
    outside = ((pl.col("x0") < 0) | (pl.col("y0") < 0)
               | (pl.col("x1") > pl.col("width")) | (pl.col("y1") > pl.col("height")))
    table = table.with_columns(**clipped, clamped=outside)  # evaluated on the values before clipping
    skipped = {"images with several boxes": int((per_image["n"] > 1).sum()), "boxes outside their image": bad}
    return table.drop("annotation_id", "x", "y", "w", "h").sort("source_split", "image_id"), skipped


def choose_species(
    candidates: pl.DataFrame,
    *,
    supercategories: Sequence[str] | None = None,
    species: Sequence[str] | None = None,
    n_species: int | None = None,
    seed: int = 0,
) -> list[str]:
    """Pick species from ``candidates`` (``species, supercategory, n_boxed, n_train, eligible``).

    ``species`` must all be eligible (else ``InatlocError`` listing those that are not and
    why); ``supercategories`` keeps eligible species of those groups; ``n_species`` then draws
    that many at random (seeded). Returns names sorted by (supercategory, species).
    """
    pool = candidates
    if species is not None:
        wanted = list(dict.fromkeys(species))
        found = candidates.filter(pl.col("species").is_in(wanted))
        absent = sorted(set(wanted) - set(found["species"]))
        weak = found.filter(~pl.col("eligible"))
        if absent or weak.height:
            detail = [f"{n} (not in both releases)" for n in absent[:10]] + [
                f"{r['species']} ({r['n_boxed']} single-instance boxed, {r['n_train']} train images)"
                for r in weak.head(10).iter_rows(named=True)]
            raise InatlocError(f"{len(absent) + weak.height} requested species cannot be used: {detail}")
        pool = found
    if supercategories is not None:
        unknown = sorted(set(supercategories) - set(candidates["supercategory"]))
        if unknown:
            raise InatlocError(f"unknown supercategories {unknown}; the box files have "
                               f"{sorted(candidates['supercategory'].unique())}")
        pool = pool.filter(pl.col("supercategory").is_in(list(supercategories)))
    pool = pool.filter(pl.col("eligible")).sort("supercategory", "species")
    if n_species is not None:
        if n_species > pool.height:
            raise InatlocError(f"only {pool.height} eligible species to choose {n_species} from")
        rows = np.random.default_rng(seed).choice(pool.height, size=n_species, replace=False)
        pool = pool[np.sort(rows)]
    if pool.height == 0:
        raise InatlocError("no eligible species selected (check the supercategories and the per-species counts)")
    return pool["species"].to_list()


def _draw(table: pl.DataFrame, counts: Sequence[int], rng: np.random.Generator) -> list[pl.DataFrame]:
    """Disjoint seeded draws of ``counts`` rows each from ``table`` (row order fixed by the caller)."""
    order = rng.permutation(table.height)
    out, start = [], 0
    for n in counts:
        out.append(table[np.sort(order[start:start + n])])
        start += n
    return out


def build_inat(
    inat21_train: str | Path,
    inat17_boxes: Sequence[str | Path],
    out: str | Path,
    *,
    supercategories: Sequence[str] | None = None,
    species: Sequence[str] | None = None,
    n_species: int | None = None,
    per_species: dict[str, int | None] | None = None,
    seed: int = 0,
    image_roots: dict[str, str | Path] | None = None,
    progress: bool = True,
) -> BuildSummary:
    """Build the dataset (see the module docstring) and write it to ``out``.

    ``inat17_boxes``: box files named ``<split>_2017_bboxes.json`` (the source split is read
    from the name). ``per_species``: ``{"train": K or None (all), "val": 25, "test": 25}``.
    ``image_roots``: ``{"inat21": DIR, "inat17": DIR}`` to link under ``out/images``.
    """
    counts = {"train": None, "val": 25, "test": 25, **(per_species or {})}
    _check_roots(image_roots or {})
    for split, k in counts.items():
        if k is not None and (not isinstance(k, int) or k < (0 if split == "train" else 1)):
            raise InatlocError(f"images per species for {split} must be a positive integer, got {k!r}")
    categories, train = read_inat21(inat21_train, progress)
    boxes = []
    for path in inat17_boxes:
        split = Path(path).name.split("_")[0]
        if split not in ("train", "val"):
            raise InatlocError(f"{path}: cannot tell the iNat 2017 split; name the file "
                               "train_2017_bboxes.json or val_2017_bboxes.json")
        boxes.append(read_inat17_boxes(path, split, progress))
    if not boxes:
        raise InatlocError("give at least one iNat 2017 box file")
    single, skipped = single_instance(pl.concat(boxes))
    need = counts["val"] + counts["test"]
    n_train = train.join(categories, on="category_id").group_by("species").agg(pl.len().alias("n_train"))
    candidates = (single.group_by("species", "supercategory").agg(pl.len().alias("n_boxed"))
                  .join(n_train, on="species", how="left").with_columns(pl.col("n_train").fill_null(0))
                  .with_columns(eligible=(pl.col("n_boxed") >= need)
                                & (pl.col("n_train") >= max(1, counts["train"] or 1))))
    chosen = choose_species(candidates, supercategories=supercategories, species=species, n_species=n_species,
                            seed=seed)
    rng = np.random.default_rng(seed)
    lineage = categories.filter(pl.col("species").is_in(chosen))
    species_order = candidates.filter(pl.col("species").is_in(chosen)).sort("supercategory", "species")["species"]
    label = {name: i for i, name in enumerate(species_order)}
    rows, box_rows = [], []
    for name in species_order:
        pool = single.filter(pl.col("species") == name)
        val, test = _draw(pool, [counts["val"], counts["test"]], rng)
        own = train.join(lineage.filter(pl.col("species") == name), on="category_id").sort("image_id")
        if counts["train"] is not None:
            (own,) = _draw(own, [counts["train"]], rng)
        rows.append(own.select(pl.lit("train").alias("split"), pl.format("inat21/{}", "file_name").alias("image_id"),
                               "width", "height", pl.lit("train21").alias("source_split"),
                               pl.col("image_id").alias("source_image_id"), pl.lit(name).alias("species")))
        for split, part in (("val", val), ("test", test)):
            ids = pl.format("inat17/{}", "file_name").alias("image_id")
            rows.append(part.select(pl.lit(split).alias("split"), ids, "width", "height", "source_split",
                                    pl.col("image_id").alias("source_image_id"), pl.lit(name).alias("species")))
            box_rows.append(part.select(pl.lit(split).alias("split"), ids, "x0", "y0", "x1", "y1", "clamped"))
    images = pl.concat(rows, how="vertical_relaxed")
    box_table = pl.concat(box_rows)
    images, names = _with_levels(images, lineage, list(species_order), label)
    out = Path(out)
    write_dataset(out, images.drop("source_split", "source_image_id", "species"), box_table.drop("clamped"), names)
    if image_roots:
        _link_roots(out / "images", image_roots)
    comparison = compare_with_inatloc500(images)
    summary = BuildSummary(
        out, len(species_order), {s: images.filter(pl.col("split") == s).height for s in ("train", "val", "test")},
        int(box_table["clamped"].sum()), skipped, comparison,
        {"inat21_train": str(inat21_train), "inat17_boxes": [str(p) for p in inat17_boxes], "seed": seed,
         "per_species": counts, "supercategories": supercategories, "n_species": n_species,
         "species": list(species) if species is not None else None})
    atomic_write_json(out / "build.json", {
        **summary.params, "n_species": summary.n_species, "images": summary.images,
        "boxes_clamped": summary.boxes_clamped, "skipped": skipped,
        "comparison": comparison.to_dicts() if comparison is not None else None})
    atomic_write_parquet(out / "sources.parquet", images.select("split", "image_id", "source_split", "source_image_id"))
    return summary


def _with_levels(images: pl.DataFrame, lineage: pl.DataFrame, order: list[str], label: dict[str, int]
                 ) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """Add ``label`` and ``label_<level>`` columns; class names per level (coarser: sorted)."""
    table = pl.DataFrame({"species": order}).join(lineage.drop("category_id"), on="species", how="left")
    names: dict[str, list[str]] = {"species": order}
    images = images.with_columns(label=pl.col("species").replace_strict(label, return_dtype=pl.Int64))
    for level in TAXON_LEVELS[1:]:
        level_names = sorted(table[level].unique().to_list())
        names[level] = level_names
        index = {n: i for i, n in enumerate(level_names)}
        per_species = dict(zip(table["species"], [index[v] for v in table[level]]))
        images = images.with_columns(pl.col("species").replace_strict(per_species, return_dtype=pl.Int64)
                                     .alias(f"label_{level}"))
    return images, names


def _check_roots(roots: dict[str, str | Path]) -> None:
    """Image roots are named ``inat21`` / ``inat17`` and are folders."""
    for name, target in roots.items():
        if name not in ("inat21", "inat17"):
            raise InatlocError(f"image roots are 'inat21' and 'inat17', got {name!r}")
        if not Path(target).is_dir():
            raise InatlocError(f"{target}: {name} image folder not found")


def _link_roots(folder: Path, roots: dict[str, str | Path]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in roots.items():
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(target).resolve(), target_is_directory=True)


def compare_with_inatloc500(images: pl.DataFrame) -> pl.DataFrame | None:
    """Per split (val, test): how many built images are the shipped iNatLoc500 ones.

    Matches by iNat 2017 source split and image id against ``data/inatloc500_images.parquet``,
    over the species both share: ``same`` (in the shipped list of the same split) and
    ``in_shipped`` (in the shipped val or test list); None when they share no species.
    """
    path = data_dir() / "inatloc500_images.parquet"
    if not path.is_file():
        return None
    shipped = pl.read_parquet(path).with_columns(
        species=pl.col("image_id").str.split("/").list.get(-2))
    shared = set(images["species"].unique()) & set(shipped["species"].unique())
    if not shared:
        return None
    rows = []
    for split in ("val", "test"):
        built = images.filter((pl.col("split") == split) & pl.col("species").is_in(list(shared)))
        ship = shipped.filter((pl.col("split") == split) & pl.col("species").is_in(list(shared)))
        keys = dict(left_on=["source_split", "source_image_id"],
                    right_on=["source_dataset_split", "source_dataset_image_id"], how="semi")
        same = built.join(ship, **keys).height
        anywhere = built.join(shipped.filter(pl.col("split").is_in(["val", "test"])), **keys).height
        rows.append({"split": split, "species": len(shared), "built": built.height, "shipped": ship.height,
                     "same": same, "in_shipped": anywhere})
    return pl.DataFrame(rows)


def inatloc500_species() -> list[str]:
    """The 500 iNatLoc500 species (shipped class list)."""
    return read_shipped("inatloc500_classes.parquet", "shipped iNatLoc500 class list").sort("label")["name"].to_list()
