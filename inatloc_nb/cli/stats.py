"""``inatloc-nb stats``: images per category at every level of a dataset (Table A1)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

SHIPPED_NOTES = {
    "inatloc500": "only the iNatLoc500 release's val and test metadata ship (25 images per species), "
    "so these statistics are over those, not over the training set D_w",
    "ilsvrc": "only the ImageNet val (ImageNetV2) and test lists ship; levels are the deepest-only "
    "c0, c1, ... of the WordNet tree (App. C); App. A samples 200 images per class for D_w",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``stats`` command."""
    parser = subparsers.add_parser(
        "stats",
        help="per-level category statistics of a dataset (Table A1)",
        description="For every level of the label hierarchy: number of categories and the "
        "min / max / mean images per category, and the imbalance (max / min).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=("inatloc500", "cub", "ilsvrc"), help="a dataset shipped in data/")
    source.add_argument("folder", nargs="?", type=Path, help="a Choe-format metadata folder")
    parser.add_argument(
        "--split", help="split to count (default: train, or every split present when there is no train split)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the dataset, compute the statistics and print them."""
    import warnings

    import numpy as np
    import polars as pl

    from inatloc_nb.core.errors import InatlocError
    from inatloc_nb.datasets.dataset import WSOLDataset, load_shipped
    from inatloc_nb.hierarchies.level_stats import level_statistics

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if args.dataset:
            dataset = load_shipped(args.dataset)
            notes += [SHIPPED_NOTES[args.dataset]] if args.dataset in SHIPPED_NOTES else []
        else:
            dataset = WSOLDataset.from_folder(args.folder)
    notes += [str(w.message) for w in caught]
    if args.split is not None:
        if args.split not in dataset.splits:
            raise InatlocError(f"{dataset.name} has no split {args.split!r}; splits are {list(dataset.splits)}")
        splits = [args.split]
    elif "train" in dataset.splits:
        splits = ["train"]
    else:
        splits = list(dataset.splits)
        notes.append(f"no train split: counting {' + '.join(splits)}")
    labels = np.concatenate([dataset.labels(split) for split in splits])
    stats = level_statistics(dataset.hierarchy, labels)
    hierarchy = {level: len(dataset.hierarchy.level_names(level)) for level in dataset.hierarchy.levels}
    if args.json:
        print(json.dumps({
            "dataset": dataset.name, "splits": splits, "n_images": int(labels.size),
            "levels": stats.to_dicts(), "hierarchy": hierarchy, "notes": notes,
        }, indent=2))
        return 0
    print(f"{dataset.name}: {labels.size} images ({' + '.join(splits)})")
    for note in notes:
        print(f"note: {note}")
    with pl.Config(tbl_rows=-1, tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True,
                   float_precision=1, tbl_formatting="ASCII_MARKDOWN"):
        print(stats)
    print("hierarchy categories per level: " + ", ".join(f"{lv} {n}" for lv, n in hierarchy.items()))
    return 0
