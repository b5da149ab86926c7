"""``inatloc-nb baseline``: Center, FSL-Seg, FSL-Det or CAM-Agg (``inatloc_nb.runs.baselines``)."""
from __future__ import annotations

import argparse

from inatloc_nb.cli.run_options import add_run_options, config_fields, print_metrics
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.run_config import BASELINES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``baseline`` subcommand."""
    p = subparsers.add_parser(
        "baseline",
        help="score a localization baseline (Center, FSL-Seg, FSL-Det, CAM-Agg)",
        description="Run a baseline and write a run folder like `inatloc-nb train` does "
        "(params.json, metrics.json, cams/ where the baseline has maps). FSL-Seg and FSL-Det "
        "train on D_f (val); CAM-Agg reuses a species-level run (--model).",
    )
    p.add_argument("name", choices=BASELINES)
    add_run_options(p, skip=("method", "method_params", "per_class"), defaults={"schedule": "10epoch"})
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the baseline and print its metrics."""
    from inatloc_nb.runs.run import RunConfig, run_experiment

    if args.name == "cam-agg" and not args.model_run:
        raise InatlocError("cam-agg needs --model RUN_DIR (a finished species-level training run)")
    config = RunConfig(method=args.name, **config_fields(args))
    print_metrics(run_experiment(config, args.out))
    return 0
