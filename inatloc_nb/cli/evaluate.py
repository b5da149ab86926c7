"""``inatloc-nb evaluate``: MaxBoxAcc(V2) or PxAP of saved score maps; ``inatloc-nb center``: the Center baseline."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from inatloc_nb.datasets.dataset import SHIPPED

METRICS = ("maxboxacc-v2", "maxboxacc", "pxap")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` and ``center`` commands."""
    p = subparsers.add_parser(
        "evaluate",
        help="score saved maps (<image_id without extension>.npy) with MaxBoxAccV2",
        description="Evaluate score maps against the boxes of a Choe-format metadata folder. A map may be "
                    "224 x 224 (used as is), the image's original size (resized bilinearly to 224 x 224), or a "
                    "network's native resolution below 224 x 224, e.g. a 28 x 28 CAM (upsampled bicubically and "
                    "min-max normalised, exactly as stored CAMs are).",
    )
    p.add_argument("--scoremaps", required=True, type=Path,
                   help="folder of <image_id without extension>.npy maps (224 x 224, original size or native CAM size)")
    p.add_argument("--metadata", required=True, type=Path,
                   help="Choe-format metadata folder (train/ val/ test/) or one split folder (e.g. metadata/CUB/test)")
    p.add_argument("--split", help="split of a metadata root (default test); a split folder as --metadata names its own")
    p.add_argument("--metric", choices=METRICS, default="maxboxacc-v2")
    p.add_argument("--iou", type=int, nargs="+", default=None, help="IoU thresholds in percent (default 30 50 70; V1: 50)")
    p.add_argument("--normalize", action="store_true", help="min-max normalise each map first")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_evaluate)

    c = subparsers.add_parser("center", help="MaxBoxAccV2 of the Center baseline (a centred Gaussian)")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--metadata", type=Path, help="Choe-format metadata folder or one split folder")
    source.add_argument("--dataset", choices=SHIPPED, help="shipped metadata")
    c.add_argument("--split", help="split to score (default test); a split folder as --metadata names its own")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=run_center)


def _report(result: Any, as_json: bool) -> None:
    """Print a BoxAccuracyResult: per-delta lines, or its ``to_dict()`` as one JSON object."""
    if as_json:
        print(json.dumps(result.to_dict()))
        return
    for d, value in result.per_iou.items():
        print(f"IoU {d}: MaxBoxAcc {value:.3f} at threshold {result.optimal_threshold[d]:.3f}")
    print(f"{result.metric}: {result.mean:.3f} over {result.n_images} images")


def run_evaluate(args: argparse.Namespace) -> int:
    """Evaluate a folder of score maps."""
    from inatloc_nb.core.errors import InatlocError
    from inatloc_nb.datasets.dataset import open_split
    from inatloc_nb.metrics import EVAL_SIZE, BoxAccuracy, iter_score_maps

    if args.metric == "pxap":
        raise InatlocError("PxAP needs foreground masks, which Choe-format box metadata does not hold; "
                           "use inatloc_nb.metrics.PxAP with the masks")
    dataset, args.split = open_split(args.metadata, args.split)
    image_ids = dataset.images(args.split)["image_id"].to_list()
    largest_only = args.metric == "maxboxacc"
    iou = args.iou or ((50,) if largest_only else (30, 50, 70))
    acc = BoxAccuracy(iou_thresholds=iou, largest_only=largest_only, normalize=args.normalize)
    sizes = list(dataset.images(args.split).select("width", "height").iter_rows())
    boxes = dataset.gt_boxes(args.split)
    for start, maps in iter_score_maps(args.scoremaps, image_ids, EVAL_SIZE, sizes, normalize=args.normalize):
        acc.update(maps, boxes[start : start + len(maps)])
    _report(acc.compute(), args.json)
    return 0


def run_center(args: argparse.Namespace) -> int:
    """Score the Center baseline on a metadata folder or shipped dataset."""
    from inatloc_nb.core.errors import InatlocError
    from inatloc_nb.datasets.dataset import load_shipped, open_split
    from inatloc_nb.metrics import BoxAccuracy, center_map

    if args.dataset:
        dataset, args.split = load_shipped(args.dataset, with_hierarchy=False), args.split or "test"
    else:
        dataset, args.split = open_split(args.metadata, args.split)
    if args.split not in dataset.splits:
        raise InatlocError(f"{dataset.name}: no split {args.split!r} (found {sorted(dataset.splits)})")
    acc = BoxAccuracy()
    acc.update_shared(center_map(), dataset.gt_boxes(args.split))
    _report(acc.compute(), args.json)
    return 0
