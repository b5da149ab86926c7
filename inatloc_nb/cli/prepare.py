"""``inatloc-nb prepare DATA --out CACHE``: a prepared copy of a dataset at training resolution."""
from __future__ import annotations

import argparse

from inatloc_nb.core.validate import IMAGE_SIZE_RANGE, arg_type, integer


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` subcommand."""
    p = subparsers.add_parser(
        "prepare",
        help="decode and squish-resize a dataset once into uint8 arrays that training reads",
        description="Write the prepared copy of DATA (inatloc_nb.training.prepared.prepare_dataset): the train "
        "split squish-resized to 256/224 of --image-size, the evaluation splits to --image-size, as "
        "uint8 arrays under CACHE/<dataset>-<hash>-<size>px. Runs given --prepared CACHE read it "
        "instead of decoding JPEGs, with the same pixels.",
    )
    p.add_argument("data", help="metadata folder, shipped dataset name or synth:PRESET (as train --data)")
    p.add_argument("--image-root", help="image folder (default: DATA/images when present)")
    p.add_argument("--out", required=True, metavar="CACHE", help="cache root of prepared copies")
    p.add_argument("--image-size", type=arg_type(integer, int, minimum=IMAGE_SIZE_RANGE[0], maximum=IMAGE_SIZE_RANGE[1]),
                   default=224, metavar="PX", help="crop size of the runs (default 224)")
    p.add_argument("--splits", nargs="+", metavar="SPLIT", help="splits to prepare (default: all)")
    p.add_argument("--workers", type=arg_type(integer, int, minimum=1), help="decoding processes (default: the available cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the copy and print its folder."""
    from inatloc_nb.training.prepared import prepare_dataset
    from inatloc_nb.training.run_config import load_dataset

    dataset = load_dataset(args.data, args.image_root)
    folder = prepare_dataset(dataset, args.out, args.image_size, args.splits, workers=args.workers)
    print(folder)
    return 0
