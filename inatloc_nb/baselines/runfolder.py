"""The run-folder layout shared by the baselines (the same files and keys as training runs).

``params.json`` (config, dataset, library versions), ``cams/<split>.npz`` (a ``CamSet`` of
native-resolution maps) where a baseline has per-image maps, ``analysis.parquet`` for map
baselines, and ``metrics.json`` last:
D_test's ``maxboxacc_v2, per_iou, optimal_threshold, top1, n_images`` at the top level, the
same keys for every other evaluated split under its name, and ``level, method, lr, seed,
per_class, n_train_images``. ``top1`` is None for baselines that do not classify.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from inatloc_nb.io import atomic_write_json, atomic_write_parquet
from inatloc_nb.run_config import ANALYSIS_IOU, package_versions

if TYPE_CHECKING:
    from inatloc_nb.data import WSOLDataset
    from inatloc_nb.metrics.boxacc import BoxAccuracy, BoxAccuracyResult
    from inatloc_nb.run_config import RunConfig

#: Maps scored per BoxAccuracy.update call.
CHUNK = 256


def write_params(out: Path, config: RunConfig, dataset: WSOLDataset, **extra: Any) -> None:
    """``params.json``: the config, the dataset name, library versions and ``extra``."""
    atomic_write_json(out / "params.json", {
        "config": config.to_dict(), "dataset": dataset.name, "versions": package_versions(), **extra,
    })


def score_maps(maps: np.ndarray, gt_boxes: list[np.ndarray], accuracy: BoxAccuracy | None = None) -> BoxAccuracy:
    """Add (N, 224, 224) evaluation maps in [0, 1] to a MaxBoxAccV2 accumulator (new by default)."""
    from inatloc_nb.metrics.boxacc import BoxAccuracy

    accuracy = accuracy or BoxAccuracy()
    for start in range(0, len(maps), CHUNK):
        accuracy.update(maps[start : start + CHUNK], gt_boxes[start : start + CHUNK])
    return accuracy


def split_metrics(result: BoxAccuracyResult, top1: float | None = None) -> dict[str, Any]:
    """The per-split block of ``metrics.json``."""
    return {
        "maxboxacc_v2": result.mean,
        "per_iou": {str(d): v for d, v in result.per_iou.items()},
        "optimal_threshold": {str(d): v for d, v in result.optimal_threshold.items()},
        "top1": top1,
        "n_images": result.n_images,
    }


def analysis_frame(chunks: Iterable[tuple[int, np.ndarray]], gt_boxes: list[np.ndarray], image_ids: list[str],
                   result: BoxAccuracyResult, split: str) -> pl.DataFrame:
    """Per-image analysis rows (App. F.1) at the split's optimal threshold for IoU 0.5, from
    ``(start, evaluation maps)`` chunks (e.g. ``CamSet.iter_maps()``)."""
    from inatloc_nb.metrics.analysis import analysis_table

    threshold = result.optimal_threshold[ANALYSIS_IOU]
    parts = [analysis_table(maps, gt_boxes[i : i + len(maps)], image_ids[i : i + len(maps)], threshold)
             for i, maps in chunks]
    return (pl.concat(parts)
            .rename({"gt_activation": "gt_activation_ratio"})
            .with_columns(split=pl.lit(split))
            .select("image_id", "split", "box_area_ratio", "gt_activation_ratio", "n_components"))


def write_analysis(out: Path, frames: Iterable[pl.DataFrame]) -> None:
    """``analysis.parquet`` from per-split frames."""
    atomic_write_parquet(out / "analysis.parquet", pl.concat(list(frames)))


def finish(out: Path, config: RunConfig, per_split: dict[str, dict[str, Any]], n_train: int,
           say: Callable[[str], None] = print, **extra: Any) -> dict[str, Any]:
    """Write ``metrics.json`` (D_test at the top level) and return it."""
    blocks = dict(per_split)
    summary = blocks.pop("test", {})
    summary.update(blocks)
    summary.update(level=config.level, method=config.method, lr=config.lr, seed=config.seed,
                   per_class=config.per_class, n_train_images=n_train, **extra)
    atomic_write_json(out / "metrics.json", summary)
    say(f"done: {out}")
    return summary
