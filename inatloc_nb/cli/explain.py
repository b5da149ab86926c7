"""``inatloc-nb explain RUN_DIR --explainer NAME``: score a post-hoc explainer on a finished run."""
from __future__ import annotations

import argparse
from pathlib import Path

from inatloc_nb.explainers import EXPLAINERS


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
    p.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    p.add_argument("--score-batch", type=int, default=64,
                   help="Score-CAM: masked images per forward pass (default 64)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--force", action="store_true", help="recompute even when already explained")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Explain the run (unless already done) and print its metrics."""
    import json

    from inatloc_nb.cli.run_options import print_metrics
    from inatloc_nb.errors import InatlocError
    from inatloc_nb.explainers import explain_dir, explain_run, is_explained

    for name, value in (("--batch-size", args.batch_size), ("--score-batch", args.score_batch)):
        if value is not None and value < 1:
            raise InatlocError(f"{name} must be at least 1, got {value}")
    if is_explained(args.run_dir, args.explainer) and not args.force:
        path = explain_dir(args.run_dir, args.explainer) / "metrics.json"
        print(f"already explained: {path} (use --force to recompute)")
        metrics = json.loads(path.read_text(encoding="utf-8"))
    else:
        metrics = explain_run(args.run_dir, args.explainer, batch_size=args.batch_size,
                              device=args.device, score_batch=args.score_batch)
    print_metrics(metrics)
    return 0
