"""``inatloc-nb train``: one WSOL training run (``inatloc_nb.runs.run.run_experiment``)."""
from __future__ import annotations

import argparse

from inatloc_nb.cli.run_options import add_run_options, config_fields, print_metrics
from inatloc_nb.training.run_config import trained_methods


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand: an option per ``RunConfig`` field."""
    from inatloc_nb.training.method_support import support_table

    p = subparsers.add_parser(
        "train",
        help="train a WSOL classifier at one label granularity, extract and score its CAMs",
        description="Train at --level, extract CAMs of D_f (val) and D_test (test), score them\n"
        "with MaxBoxAccV2 and write a run folder (params.json, model.pth, cams/, metrics.json, ...).",
        epilog="methods (--method) on backbones (--backbone):\n" + support_table(trained_methods())
        + "\nADL, SPG and bridgegap place their layers and taps by one rule on the backbone's last two\n"
        "stages (ResNet-50: the reference's layer3.0, layer4.0 and layer4.2); see docs/protocol.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_run_options(p, required=("data", "level", "lr"), skip=("model_run",))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the experiment and print its metrics."""
    from inatloc_nb.runs.run import RunConfig, run_experiment

    config = RunConfig(**config_fields(args))
    print_metrics(run_experiment(config, args.out))
    return 0
