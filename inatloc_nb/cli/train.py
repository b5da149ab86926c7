"""``inatloc-nb train``: one WSOL training run (``inatloc_nb.run.run_experiment``)."""
from __future__ import annotations

import argparse
import json

from inatloc_nb.errors import InatlocError

#: Trainable WSOL methods offered on the command line.
TRAIN_METHODS = ("cam", "has", "acol", "spg", "adl", "cutmix")


def _param(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE parsed as JSON when possible (numbers, booleans), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand."""
    p = subparsers.add_parser(
        "train",
        help="train a WSOL classifier at one label granularity, extract and score its CAMs",
        description="Train at --level, extract CAMs of D_f (val) and D_test (test), score them "
        "with MaxBoxAccV2 and write a run folder (params.json, model.pth, cams/, metrics.json, ...).",
    )
    p.add_argument("--data", required=True,
                   help="metadata folder, shipped dataset (cub, ilsvrc, inatloc500) or synth:tiny / synth:demo")
    p.add_argument("--image-root", help="image folder (default: DATA/images when present)")
    p.add_argument("--level", required=True, help="training label level, e.g. species, genus, order")
    p.add_argument("--method", choices=TRAIN_METHODS, default="cam")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="override a method hyperparameter (repeatable), e.g. drop_rate=0.1")
    p.add_argument("--lr", type=float, required=True, help="learning rate (the classifier gets 10x)")
    sched = p.add_mutually_exclusive_group()
    sched.add_argument("--epochs", type=int, help="number of epochs (LR / 10 every 3)")
    sched.add_argument("--schedule", choices=("2epoch", "10epoch"), default="2epoch")
    p.add_argument("--backbone", default="resnet50", help="resnet50, resnet18 or tinycnn")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="start from random weights instead of ImageNet")
    p.add_argument("--image-size", type=int, default=224, metavar="PX")
    p.add_argument("--per-class", type=int, metavar="N", help="train on N images per class at --level")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-workers", type=int, help="data-loading processes (default: CPU count, at most 8)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment and print its metrics."""
    from inatloc_nb.run import RunConfig, run_experiment

    params = dict(args.param)
    if len(params) != len(args.param):
        raise InatlocError("a --param key is given more than once")
    config = RunConfig(
        data=args.data, image_root=args.image_root, level=args.level, method=args.method,
        method_params=params, lr=args.lr,
        schedule=args.epochs if args.epochs is not None else args.schedule,
        backbone=args.backbone, pretrained=args.pretrained, image_size=args.image_size,
        per_class=args.per_class, seed=args.seed, batch_size=args.batch_size,
        num_workers=args.num_workers, device=args.device,
    )
    metrics = run_experiment(config, args.out)
    for name, split in (("D_test", metrics), ("D_f", metrics.get("val", {}))):
        if "maxboxacc_v2" in split:
            per_iou = "  ".join(f"IoU{d}: {v:.1f}" for d, v in split["per_iou"].items())
            print(f"{name}: MaxBoxAccV2 {split['maxboxacc_v2']:.1f}  ({per_iou})  "
                  f"top-1 {split['top1']:.1f}  [{split['n_images']} images]")
    return 0
