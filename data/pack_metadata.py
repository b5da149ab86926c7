"""Pack public WSOL metadata into the compact parquet files shipped in this folder.

Usage (see PROVENANCE.md for the exact commands that produced the shipped files)::

    python data/pack_metadata.py choe NAME METADATA_ROOT [--class-names file|dirs|index]
    python data/pack_metadata.py inatloc500 VAL_CSV TEST_CSV
    python data/pack_metadata.py table NAME CSV

``choe`` reads a Choe-format folder (``train/ val/ test/`` as present) with
:func:`inatloc_nb.metadata.read_split` and writes ``NAME_images.parquet`` (``split,
image_id, width, height, label``), ``NAME_boxes.parquet`` (``split, image_id, x0, y0, x1,
y1``) and ``NAME_classes.parquet`` (``label, name``). Class names come from the root's
``class_names.txt`` (``file``), from the folder of each image id, which must name exactly one
class (``dirs``), or are the label numbers (``index``).

``inatloc500`` reads the iNatLoc500 image lists (``file_name,source_dataset,
source_dataset_split,source_dataset_image_id`` with ``SPLIT/SUPERCATEGORY/GENUS SPECIES/
HASH.jpg`` file names); species are numbered in (supercategory, species) order.
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

from inatloc_nb.errors import InatlocError, MetadataError
from inatloc_nb.io import atomic_path
from inatloc_nb.metadata import class_names_file, read_class_names, read_split

SPLITS = ("train", "val", "test")


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


def pack_choe(name: str, root: Path, class_names: str, out: Path) -> None:
    """Pack a Choe-format metadata folder."""
    images, boxes = [], []
    for split in SPLITS:
        if not (root / split).is_dir():
            continue
        meta = read_split(root / split)
        print(f"{name} {split}: {meta.images.height} images, {meta.boxes.height} boxes, sizes {meta.size_order}")
        images.append(meta.images.select(pl.lit(split).alias("split"), "image_id", "width", "height", "label"))
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
    small = [pl.col(c).cast(pl.Int32) for c in ("width", "height", "label", "x0", "y0", "x1", "y1")]
    write(all_images.with_columns(small[:3]), out, f"{name}_images")
    write(pl.concat(boxes).with_columns(small[3:]), out, f"{name}_boxes")
    write(pl.DataFrame({"label": range(len(names)), "name": names}, schema={"label": pl.Int32, "name": pl.String}),
          out, f"{name}_classes")


def pack_inatloc500(csvs: list[Path], out: Path) -> None:
    """Pack the iNatLoc500 val/test image lists."""
    frames = []
    for path in csvs:
        table = pl.read_csv(path, schema_overrides={"source_dataset_image_id": pl.Int64})
        parts = table["file_name"].str.split("/")
        bad = table.with_row_index("line", offset=2).filter(parts.list.len() != 4)
        if bad.height:
            raise MetadataError(f"expected SPLIT/SUPERCATEGORY/SPECIES/FILE, found {bad['file_name'][0]!r}",
                                path, int(bad["line"][0]))
        frames.append(table.with_columns(
            parts.list.get(0).alias("split"), parts.list.get(1).alias("supercategory"),
            parts.list.get(2).alias("species")))
    images = pl.concat(frames)
    classes = (images.select("supercategory", "species").unique().sort("supercategory", "species")
               .with_row_index("label").with_columns(pl.col("label").cast(pl.Int32)))
    clash = classes.filter(pl.col("species").is_duplicated())
    if clash.height:
        raise MetadataError(f"species under two supercategories: {clash.rows()[:4]}", csvs[0])
    images = images.join(classes.select("species", "label"), on="species").select(
        "split", pl.col("file_name").alias("image_id"), pl.lit(None, pl.Int32).alias("width"),
        pl.lit(None, pl.Int32).alias("height"), "label", "source_dataset", "source_dataset_split",
        "source_dataset_image_id")
    for split, count in images.group_by("split", maintain_order=True).len().iter_rows():
        print(f"inatloc500 {split}: {count} images")
    write(images, out, "inatloc500_images")
    write(pl.DataFrame(schema={"split": pl.String, "image_id": pl.String,
                               **{c: pl.Int32 for c in ("x0", "y0", "x1", "y1")}}), out, "inatloc500_boxes")
    write(classes.select("label", pl.col("species").alias("name"), "supercategory"), out, "inatloc500_classes")


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
    inat = sub.add_parser("inatloc500", help="iNatLoc500 image lists")
    inat.add_argument("csvs", type=Path, nargs="+")
    table = sub.add_parser("table", help="one CSV file")
    table.add_argument("name")
    table.add_argument("csv", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.kind == "choe":
            pack_choe(args.name, args.root, args.class_names, args.out)
        elif args.kind == "inatloc500":
            pack_inatloc500(args.csvs, args.out)
        else:
            write(read_table(args.csv), args.out, args.name)
    except InatlocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
