"""``inatloc-nb explain RUN_DIR --explainer NAME``: score a post-hoc explainer on a finished run."""
from __future__ import annotations

import argparse
from pathlib import Path

from inatloc_nb.cli.run_options import field_type
from inatloc_nb.core import validate as v
from inatloc_nb.runs.explainers import EXPLAINERS

#: Score-CAM's masked images per forward pass.
SCORE_BATCH = v.arg_type(v.integer, int, minimum=1, maximum=65536)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``explain`` command."""
    p = subparsers.add_parser(
        "explain",
        help="score a post-hoc explainer (Grad-CAM, Score-CAM, ...) on a finished training run",
        description="Explain every evaluated split of a finished run (params.json, model.pth, "
        "metrics.json) with one pytorch-grad-cam explainer for the image's class at the run's "
        "training level, score the maps with MaxBoxAccV2 like the run's CAMs and write "
        "RUN_DIR/explain/NAME/ (cams/, timings.json, metrics.json).",
    )
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="finished run folder")
    p.add_argument("--explainer", required=True, choices=tuple(EXPLAINERS))
    p.add_argument("--batch-size", type=field_type("batch_size"), help="images per batch (default: the run's)")
    p.add_argument("--score-batch", type=SCORE_BATCH, default=64,
                   help="Score-CAM: masked images per forward pass (default 64)")
    p.add_argument("--device", type=field_type("device"), help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="recompute even when already explained")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain the run (unless already done) and print its metrics."""
    from inatloc_nb.cli.run_options import print_metrics
    from inatloc_nb.runs.explainers import explain_dir, explain_run, is_explained
    from inatloc_nb.runs.runfolder import RunFolder

    v.device_available(args.device, "--device")
    if is_explained(args.run_dir, args.explainer) and not args.force:
        done = RunFolder(explain_dir(args.run_dir, args.explainer))
        print(f"already explained: {done.metrics_path} (use --force to recompute)")
        metrics = done.read_metrics()
    else:
        metrics = explain_run(args.run_dir, args.explainer, batch_size=args.batch_size,
                              device=args.device, score_batch=args.score_batch)
    print_metrics(metrics)
    return 0
