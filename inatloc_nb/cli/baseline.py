"""``inatloc-nb baseline``: Center, FSL-Seg, FSL-Det or CAM-Agg (``inatloc_nb.baselines``)."""
from __future__ import annotations

import argparse

from inatloc_nb.cli.run_options import (
    LEARNING_RATE, add_data_options, add_training_options, config_fields, print_metrics,
)
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
    add_data_options(p)
    p.add_argument("--level", default="species", help="level of the top-level metrics (CAM-Agg)")
    p.add_argument("--model", metavar="RUN_DIR", help="species-level training run (cam-agg)")
    p.add_argument("--lr", type=LEARNING_RATE, default=1e-3, help="learning rate (fsl-seg, fsl-det)")
    add_training_options(p, default_schedule="10epoch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the baseline and print its metrics."""
    from inatloc_nb.run import RunConfig, run_experiment

    if args.name == "cam-agg" and not args.model:
        raise InatlocError("cam-agg needs --model RUN_DIR (a finished species-level training run)")
    config = RunConfig(level=args.level, method=args.name, lr=args.lr, model_run=args.model,
                       **config_fields(args))
    print_metrics(run_experiment(config, args.out))
    return 0
