"""Pack public WSOL metadata into the compact parquet files shipped in this folder.

Usage (see PROVENANCE.md for the exact commands that produced the shipped files)::

    python data/pack_metadata.py choe NAME METADATA_ROOT [--class-names file|dirs|index]
    python data/pack_metadata.py inatloc500 RELEASE_ROOT VAL_CSV TEST_CSV
    python data/pack_metadata.py table NAME CSV

``choe`` reads a Choe-format folder (``train/ val/ test/`` as present) with
:func:`inatloc_nb.datasets.metadata.read_split` and writes ``NAME_images.parquet`` (``split,
image_id, width, height, label`` and ``label_<level>`` for every ``class_labels_<level>.txt``),
``NAME_boxes.parquet`` (``split, image_id, x0, y0, x1, y1``), ``NAME_classes.parquet``
(``label, name``) and, when there are extra levels, ``NAME_level_classes.parquet`` (``level,
label, name`` from ``class_names_<level>.txt``). Class names come from the root's
``class_names.txt`` (``file``), from the folder of each image id, which must name exactly one
class (``dirs``), or are the label numbers (``index``).

``inatloc500`` packs the iNatLoc500 release's metadata folder (``val/`` and ``test/`` with
every level's ``class_labels_<level>.txt``, ``class_names*.txt``) as ``choe`` does, adds to
each image its source (``source_dataset, source_dataset_split, source_dataset_image_id``) from
the image lists ``{val,test}_image_mapping.csv`` (``file_name,source_dataset,
source_dataset_split,source_dataset_image_id``; every image must be listed) and the
``supercategory`` (the folder in the image path) to each species.
``table`` converts one CSV file to ``NAME.parquet`` (extra trailing fields of a row, such as
the free-text notes of ``cub_inat_mapping.csv``, go to a ``note`` column). All files are zstd-compressed and
written atomically to ``--out`` (default: this folder).
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import polars as pl

from inatloc_nb.core.atomic import atomic_path
from inatloc_nb.core.errors import InatlocError, MetadataError
from inatloc_nb.datasets.metadata import SPLITS, class_names_file, read_class_names, read_split



def write(frame: pl.DataFrame, out: Path, name: str) -> None:
    """Write ``frame`` as ``out/name.parquet`` (zstd) and say so."""
    target = out / f"{name}.parquet"
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression="zstd", compression_level=19, statistics=False)
    print(f"wrote {target} ({frame.height} rows, {target.stat().st_size / 1024:.0f} KiB)")


def _class_names_from_dirs(images: pl.DataFrame, root: Path) -> list[str]:
    pairs = images.select("label", pl.col("image_id").str.replace(r"/[^/]*$", "").alias("name")).unique()
    for column in ("label", "name"):
        clash = pairs.filter(pl.col(column).is_duplicated()).sort("label")
        if clash.height:
            raise MetadataError(f"image folders do not name one class per label: {clash.head(4).rows()}", root)
    return pairs.sort("label")["name"].to_list()


def read_choe(root: Path, class_names: str) -> tuple[pl.DataFrame, pl.DataFrame, list[str], pl.DataFrame]:
    """A Choe-format folder as ``(images, boxes, class names, level classes)`` tables."""
    images, boxes = [], []
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        meta = read_split(root / split)
        print(f"{root.name} {split}: {meta.images.height} images, {meta.boxes.height} boxes, sizes {meta.size_order}, "
              f"levels {list(meta.levels)}")
        images.append(meta.images.select(pl.lit(split).alias("split"), pl.all()))
        boxes.append(meta.boxes.select(pl.lit(split).alias("split"), pl.all()))
    if not images:
        raise MetadataError("no split folder found", root)
    all_images = pl.concat(images)
    n_classes = int(all_images["label"].max()) + 1
    if class_names == "file":
        names = read_class_names(root / class_names_file())
    elif class_names == "dirs":
        names = _class_names_from_dirs(all_images, root)
    else:
        names = [str(i) for i in range(n_classes)]
    if len(names) < n_classes:
        raise MetadataError(f"{len(names)} class names for labels up to {n_classes - 1}", root)
    levels = [c[len("label_"):] for c in all_images.columns if c.startswith("label_")]
    level_classes = pl.DataFrame(schema={"level": pl.String, "label": pl.Int32, "name": pl.String})
    for level in levels:
        level_names = read_class_names(root / class_names_file(level))
        top = int(all_images[f"label_{level}"].max())
        if top >= len(level_names):
            raise MetadataError(f"{len(level_names)} {level} names for labels up to {top}", root / class_names_file(level))
        level_classes = pl.concat([level_classes, pl.DataFrame(
            {"level": level, "label": range(len(level_names)), "name": level_names},
            schema=level_classes.schema)])
    small = [pl.col(c).cast(pl.Int32) for c in ("width", "height", "label", *(f"label_{lv}" for lv in levels))]
    box_ints = [pl.col(c).cast(pl.Int32) for c in ("x0", "y0", "x1", "y1")]
    return all_images.with_columns(small), pl.concat(boxes).with_columns(box_ints), names, level_classes


def write_choe(name: str, tables: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, pl.DataFrame], out: Path) -> None:
    """Write ``NAME_images``, ``NAME_boxes``, ``NAME_classes`` and, with extra levels, ``NAME_level_classes``."""
    images, boxes, classes, level_classes = tables
    write(images, out, f"{name}_images")
    write(boxes, out, f"{name}_boxes")
    write(classes, out, f"{name}_classes")
    if level_classes.height:
        write(level_classes, out, f"{name}_level_classes")


def _classes(names: list[str]) -> pl.DataFrame:
    return pl.DataFrame({"label": range(len(names)), "name": names}, schema={"label": pl.Int32, "name": pl.String})


def pack_choe(name: str, root: Path, class_names: str, out: Path) -> None:
    """Pack a Choe-format metadata folder."""
    images, boxes, names, level_classes = read_choe(root, class_names)
    write_choe(name, (images, boxes, _classes(names), level_classes), out)


def pack_inatloc500(root: Path, csvs: list[Path], out: Path) -> None:
    """Pack the iNatLoc500 release's val/test metadata with each image's source."""
    images, boxes, names, level_classes = read_choe(root, "file")
    sources = []
    for path in csvs:
        table = pl.read_csv(path, schema_overrides={"source_dataset_image_id": pl.Int64})
        dup = table.with_row_index("line", offset=2).filter(pl.col("file_name").is_duplicated())
        if dup.height:
            raise MetadataError(f"image {dup['file_name'][0]!r} listed twice", path, int(dup["line"][0]))
        sources.append(table)
    source = pl.concat(sources)
    unlisted = images.join(source, left_on="image_id", right_on="file_name", how="anti")["image_id"]
    if len(unlisted):
        raise MetadataError(f"{len(unlisted)} release images are in no image list, e.g. {unlisted[0]!r}", csvs[0])
    images = images.join(source, left_on="image_id", right_on="file_name", how="left", maintain_order="left")
    parts = images.select("label", pl.col("image_id").str.split("/").alias("parts")).select(
        "label", pl.col("parts").list.get(-3).alias("supercategory"), pl.col("parts").list.get(-2).alias("species"))
    pairs = parts.unique().sort("label")
    clash = pairs.filter(pl.col("label").is_duplicated())
    if clash.height:
        raise MetadataError(f"species label {clash['label'][0]} names two folders: {clash.head(2).rows()}", root)
    classes = _classes(names).join(pairs.select("label", "supercategory", folder="species"), on="label", how="left")
    wrong = classes.filter(pl.col("folder") != pl.col("name"))
    if wrong.height:
        raise MetadataError(f"class_names.txt names label {wrong['label'][0]} {wrong['name'][0]!r}, its image "
                            f"folders {wrong['folder'][0]!r}", root / class_names_file())
    for split, count in images.group_by("split", maintain_order=True).len().iter_rows():
        print(f"inatloc500 {split}: {count} images")
    write_choe("inatloc500", (images, boxes, classes.drop("folder"), level_classes), out)


def read_table(path: Path) -> pl.DataFrame:
    """A CSV file whose rows may carry extra trailing fields (free-text notes): those are
    joined into a ``note`` column. Integer columns are typed as such."""
    with open(path, newline="", encoding="utf-8") as f:
        header, *rows = list(csv.reader(f))
    columns: dict[str, list[str | None]] = {name: [] for name in [*header, "note"]}
    for line, row in enumerate(rows, start=2):
        if len(row) < len(header):
            raise MetadataError(f"expected {len(header)} fields, found {len(row)}", path, line)
        for name, value in zip(header, row):
            columns[name].append(value)
        columns["note"].append(",".join(row[len(header):]) or None)
    frame = pl.DataFrame(columns, schema={name: pl.String for name in columns})
    integer = [c for c in header if frame[c].str.contains(r"^-?\d+$").all()]
    return frame.with_columns(pl.col(integer).cast(pl.Int64))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    sub = parser.add_subparsers(dest="kind", required=True)
    choe = sub.add_parser("choe", help="a Choe-format metadata folder")
    choe.add_argument("name")
    choe.add_argument("root", type=Path)
    choe.add_argument("--class-names", choices=("file", "dirs", "index"), default="file")
    inat = sub.add_parser("inatloc500", help="the iNatLoc500 release's val/test metadata and image lists")
    inat.add_argument("root", type=Path)
    inat.add_argument("csvs", type=Path, nargs="+")
    table = sub.add_parser("table", help="one CSV file")
    table.add_argument("name")
    table.add_argument("csv", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.kind == "choe":
            pack_choe(args.name, args.root, args.class_names, args.out)
        elif args.kind == "inatloc500":
            pack_inatloc500(args.root, args.csvs, args.out)
        else:
            write(read_table(args.csv), args.out, args.name)
    except InatlocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
