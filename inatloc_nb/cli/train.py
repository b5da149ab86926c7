"""``inatloc-nb train``: one WSOL training run (``inatloc_nb.run.run_experiment``)."""
from __future__ import annotations

import argparse
import json

from inatloc_nb.cli.run_options import (
    LEARNING_RATE, add_data_options, add_training_options, config_fields, print_metrics,
)
from inatloc_nb.validate import arg_type, integer
from inatloc_nb.errors import InatlocError

#: Trainable WSOL methods offered on the command line.
TRAIN_METHODS = ("cam", "has", "acol", "spg", "adl", "cutmix", "bridgegap")


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
    from inatloc_nb.method_support import support_table

    p = subparsers.add_parser(
        "train",
        help="train a WSOL classifier at one label granularity, extract and score its CAMs",
        description="Train at --level, extract CAMs of D_f (val) and D_test (test), score them\n"
        "with MaxBoxAccV2 and write a run folder (params.json, model.pth, cams/, metrics.json, ...).",
        epilog="methods (--method) on backbones (--backbone):\n" + support_table(TRAIN_METHODS)
        + "\nADL, SPG and bridgegap place their layers and taps by one rule on the backbone's last two\n"
        "stages (ResNet-50: the reference's layer3.0, layer4.0 and layer4.2); see docs/protocol.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_data_options(p)
    p.add_argument("--level", required=True, help="training label level, e.g. species, genus, order")
    p.add_argument("--method", choices=TRAIN_METHODS, default="cam",
                   help="WSOL method (which backbones each runs on: the table below)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   help="override a method hyperparameter (repeatable), e.g. drop_rate=0.1")
    p.add_argument("--lr", type=LEARNING_RATE, required=True, help="learning rate (the classifier gets 10x)")
    p.add_argument("--per-class", type=arg_type(integer, int, minimum=1), metavar="N", help="train on N images per class at --level")
    add_training_options(p, default_schedule="2epoch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment and print its metrics."""
    from inatloc_nb.run import RunConfig, run_experiment

    params = dict(args.param)
    if len(params) != len(args.param):
        raise InatlocError("a --param key is given more than once")
    config = RunConfig(level=args.level, method=args.method, method_params=params, lr=args.lr,
                       per_class=args.per_class, **config_fields(args))
    print_metrics(run_experiment(config, args.out))
    return 0
