"""``inatloc-nb check``: the dataset doctor (every image decoded, sizes and boxes compared)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check`` command."""
    parser = subparsers.add_parser(
        "check",
        help="check a dataset: decode every image, compare sizes and boxes with the metadata",
        description="Find missing, unreadable and truncated images, image sizes that differ from "
        "image_sizes.txt and boxes outside their image. Exit code 1 when anything is wrong.",
    )
    parser.add_argument("data", type=Path, help="Choe-format metadata folder (train/ val/ test/)")
    parser.add_argument("--image-root", type=Path, help="image folder (default: DATA/images)")
    parser.add_argument("--split", action="append", help="check only this split (repeatable)")
    parser.add_argument("--workers", type=int, help="decoding threads (default: the executor's choice)")
    parser.add_argument("--size-order", choices=("auto", "wh", "hw"), default="auto",
                        help="image_sizes.txt as width,height (wh) or height,width (hw); default: detect from the boxes")
    parser.add_argument("--show", type=int, default=10, help="offending lines shown per kind (default 10)")
    parser.add_argument("--metadata-only", action="store_true",
                        help="read no image: check every split's metadata and the hierarchy of its levels")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the dataset, print the summary and the first offending lines."""
    import polars as pl

    from inatloc_nb.core.errors import InatlocError
    from inatloc_nb.datasets.check import check_dataset

    if args.workers is not None and args.workers < 1:
        raise InatlocError(f"--workers must be at least 1, got {args.workers}")
    report = check_dataset(args.data, args.image_root, args.split, args.workers, progress=not args.quiet,
                           size_order=args.size_order, decode=not args.metadata_only)
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   tbl_formatting="ASCII_MARKDOWN"):
        summary = report.summary()
        print(summary if report.decoded else summary.select("split", "images"))
    if not report.decoded:
        print(f"{args.data}: the metadata of {sum(report.images.values())} images and the hierarchy of its "
              "levels are consistent; images not read (--metadata-only)")
        return 0
    if report.ok:
        print(f"{args.data}: all {sum(report.images.values())} images decode; sizes and boxes agree")
        return 0
    print(f"{len(report.problems)} problems; first of each kind:")
    for problem in report.first(args.show):
        print(f"  {problem.kind}: {problem.split} {problem.image_id}: {problem.detail}")
    return 1
