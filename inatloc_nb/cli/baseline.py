"""``inatloc-nb baseline``: Center, FSL-Seg, FSL-Det or CAM-Agg (``inatloc_nb.baselines``)."""
from __future__ import annotations

import argparse

from inatloc_nb.errors import InatlocError

#: Baselines offered on the command line.
BASELINE_NAMES = ("center", "fsl-seg", "fsl-det", "cam-agg")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``baseline`` subcommand."""
    p = subparsers.add_parser(
        "baseline",
        help="score a localization baseline (Center, FSL-Seg, FSL-Det, CAM-Agg)",
        description="Run a baseline and write a run folder like `inatloc-nb train` does "
        "(params.json, metrics.json, cams/ where the baseline has maps). FSL-Seg and FSL-Det "
        "train on D_f (val); CAM-Agg reuses a species-level run (--model).",
    )
    p.add_argument("name", choices=BASELINE_NAMES)
    p.add_argument("--data", required=True,
                   help="metadata folder, shipped dataset (cub, ilsvrc, inatloc500) or synth:tiny / synth:demo")
    p.add_argument("--image-root", help="image folder (default: DATA/images when present)")
    p.add_argument("--level", default="species", help="level of the top-level metrics (CAM-Agg)")
    p.add_argument("--model", metavar="RUN_DIR", help="species-level training run (cam-agg)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (fsl-seg, fsl-det)")
    sched = p.add_mutually_exclusive_group()
    sched.add_argument("--epochs", type=int, help="number of epochs (LR / 10 every 3)")
    sched.add_argument("--schedule", choices=("2epoch", "10epoch"), default="10epoch")
    p.add_argument("--backbone", default="resnet50", help="resnet50, resnet18 or tinycnn (fsl-seg)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="start from random weights instead of ImageNet")
    p.add_argument("--image-size", type=int, default=224, metavar="PX")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, help="data-loading processes")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the baseline and print its metrics."""
    from inatloc_nb.baselines import run_baseline
    from inatloc_nb.run import RunConfig

    if args.name == "cam-agg" and not args.model:
        raise InatlocError("cam-agg needs --model RUN_DIR (a finished species-level training run)")
    config = RunConfig(
        data=args.data, image_root=args.image_root, level=args.level, method=args.name,
        lr=args.lr, schedule=args.epochs if args.epochs is not None else args.schedule,
        backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size,
        seed=args.seed, batch_size=args.batch_size, num_workers=args.num_workers,
        device=args.device, model_run=args.model,
    )
    metrics = run_baseline(config, args.out)
    for name, split in (("D_test", metrics), ("D_f", metrics.get("val", {}))):
        if "maxboxacc_v2" in split:
            per_iou = "  ".join(f"IoU{d}: {v:.1f}" for d, v in split["per_iou"].items())
            print(f"{name}: MaxBoxAccV2 {split['maxboxacc_v2']:.1f}  ({per_iou})  [{split['n_images']} images]")
    return 0
