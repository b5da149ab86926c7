"""Baselines of Table 2 and Fig. 3: Center, CAM-Agg, FSL-Seg and FSL-Det.

``run_baseline(config, out_dir)`` runs the one named by ``config.method`` and writes a run
folder with the same layout and ``metrics.json`` keys as a training run
(:mod:`inatloc_nb.runs.runfolder`).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.run_config import BASELINES, RunConfig, load_dataset


def _runners() -> dict[str, Callable]:
    from inatloc_nb.runs.baselines.cam_agg import run_cam_agg
    from inatloc_nb.runs.baselines.center import run_center
    from inatloc_nb.runs.baselines.fsl_det import run_fsl_det
    from inatloc_nb.runs.baselines.fsl_seg import run_fsl_seg

    return {"center": run_center, "cam-agg": run_cam_agg, "fsl-seg": run_fsl_seg, "fsl-det": run_fsl_det}


def run_baseline(config: RunConfig, out_dir: str | Path,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the baseline ``config.method`` and write its run folder; return metrics.json."""
    if config.method not in BASELINES:
        raise InatlocError(f"{config.method!r} is not a baseline; baselines: {', '.join(BASELINES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say(f"loading data {config.data}")
    dataset = load_dataset(config.data, config.image_root, config.allow_split_overlap)
    summary = _runners()[config.method](config, dataset, out, say=say)
    say(f"done: {out}")
    return summary


__all__ = ["run_baseline"]
