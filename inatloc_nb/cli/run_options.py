"""Options and output shared by the commands that write a run folder (``train``, ``baseline``)."""
from __future__ import annotations

import argparse
from typing import Any

from inatloc_nb import validate as v
from inatloc_nb.method_support import BACKBONE_LAYOUTS
from inatloc_nb.protocol import LR_DECAYS, LR_GROUPS, SELECT_EPOCHS

#: argparse types of the shared numeric options (the ranges of ``RunConfig``).
EPOCHS = v.arg_type(v.integer, int, minimum=1)
IMAGE_SIZE = v.arg_type(v.integer, int, minimum=v.IMAGE_SIZE_RANGE[0], maximum=v.IMAGE_SIZE_RANGE[1])
BATCH_SIZE = v.arg_type(v.integer, int, minimum=v.BATCH_SIZE_RANGE[0], maximum=v.BATCH_SIZE_RANGE[1])
SEED = v.arg_type(v.integer, int, minimum=0, maximum=2**32 - 1)
NUM_WORKERS = v.arg_type(v.integer, int, minimum=0, maximum=1024)
LEARNING_RATE = v.arg_type(v.positive_float, float)
DEVICE = v.arg_type(v.device)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """``--data`` and ``--image-root``."""
    p.add_argument("--data", required=True,
                   help="metadata folder, shipped dataset (cub, ilsvrc, inatloc500) or synth:tiny / synth:demo")
    p.add_argument("--image-root", help="image folder (default: DATA/images when present)")
    p.add_argument("--allow-split-overlap", action="store_true",
                   help="accept image ids that are in train and in val or test (refused by default)")


def add_training_options(p: argparse.ArgumentParser, default_schedule: str) -> None:
    """Schedule, backbone, image size, seed, batch, device and ``--out``."""
    sched = p.add_mutually_exclusive_group()
    sched.add_argument("--epochs", type=EPOCHS, help="number of epochs (LR / 10 every 3, see --lr-decay)")
    sched.add_argument("--schedule", type=v.arg_type(v.schedule), default=default_schedule,
                       help="2epoch, 10epoch, a number of epochs, or E/D: E epochs with LR / 10 "
                            "every D (e.g. 50/15)")
    p.add_argument("--lr-groups", choices=LR_GROUPS, default="reference",
                   help="parameters at 10x LR: the reference code's (last backbone stage and fc) "
                        "or the paper text's (classifier only)")
    p.add_argument("--lr-decay", choices=LR_DECAYS, default="reference",
                   help="LR / 10 after epochs 2, 5, 8 (reference code) or 3, 6, 9 (paper text)")
    p.add_argument("--select-epoch", choices=SELECT_EPOCHS, default="last",
                   help="score the model after the last epoch (the reference code's default) or the "
                        "epoch (0 = before training) with the best D_f MaxBoxAccV2")
    p.add_argument("--backbone", default="resnet50",
                   help=f"{', '.join(BACKBONE_LAYOUTS)} (which methods run on each: `inatloc-nb train --help`)")
    p.add_argument("--no-pretrained", dest="pretrained", action="store_false",
                   help="start from random weights instead of ImageNet")
    p.add_argument("--weights", metavar="PATH",
                   help="local ImageNet weights file of the backbone (default: the torchvision/timm cache)")
    p.add_argument("--image-size", type=IMAGE_SIZE, default=224, metavar="PX")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--batch-size", type=BATCH_SIZE, default=32)
    p.add_argument("--num-workers", type=NUM_WORKERS,
                   help="data-loading processes (default: none on CPU; with a GPU the available "
                        "cores, at most 16, or $INATLOC_NB_LOADER_WORKERS)")
    p.add_argument("--prepared", metavar="CACHE",
                   help="read images from the prepared copy under CACHE (see `inatloc-nb prepare`)")
    for flag, what in (("amp", "mixed precision (bfloat16 where supported, else float16)"),
                       ("channels-last", "channels-last model and inputs"),
                       ("compile", "torch.compile of the backbone stages")):
        default = ("off; slower: 668 against 1,367 training images/s eager on an H200, plus ~45 s of "
                   "compilation, benchmarks/README.md" if flag == "compile" else "on with CUDA, off on CPU")
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                       help=f"{what} (default: {default})")
    p.add_argument("--device", type=DEVICE, help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run folder to write")


def config_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RunConfig`` fields the shared options set."""
    return dict(
        data=args.data, image_root=args.image_root,
        schedule=args.epochs if args.epochs is not None else args.schedule,
        lr_groups=args.lr_groups, lr_decay=args.lr_decay, select_epoch=args.select_epoch,
        backbone=args.backbone, pretrained=args.pretrained, weights=args.weights, image_size=args.image_size,
        seed=args.seed, batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
        amp=args.amp, channels_last=args.channels_last, compile=args.compile, prepared=args.prepared,
        allow_split_overlap=args.allow_split_overlap,
    )


def print_metrics(metrics: dict[str, Any]) -> None:
    """One line per evaluated split (D_test, D_f) with MaxBoxAccV2, per-IoU values and top-1."""
    for name, split in (("D_test", metrics), ("D_f", metrics.get("val", {}))):
        if "maxboxacc_v2" not in split:
            continue
        per_iou = "  ".join(f"IoU{d}: {v:.1f}" for d, v in split["per_iou"].items())
        top1 = f"  top-1 {split['top1']:.1f}" if split.get("top1") is not None else ""
        print(f"{name}: MaxBoxAccV2 {split['maxboxacc_v2']:.1f}  ({per_iou}){top1}  [{split['n_images']} images]")
