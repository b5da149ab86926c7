"""Level ensembles: one fused CAM from the single-level runs of several levels.

The grid search trains one classifier per level and keeps one. The models of the other
levels are already trained; averaging their CAMs per image costs no training. For one
dataset and seed, :func:`ensemble_scores` averages the evaluation maps (bicubic, min-max
normalised, as the metric sees them) of the runs of every contiguous range of two or more
levels (``genus..order``: genus, family and order), normalises the mean again and scores it
with MaxBoxAccV2. The range to use is chosen on D_f, like the grid search's level
(:func:`inatloc_nb.granularity.selection.comparison_table`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.runs.runfolder import RunFolder, run_folder

#: Cache of :func:`ensemble_scores` in a results folder.
ENSEMBLES_FILE = "level_ensembles.parquet"


def level_range(levels: Sequence[str]) -> str:
    """The name of a contiguous range of levels, finest first: ``genus..order``."""
    return f"{levels[0]}..{levels[-1]}"


def _ranges(levels: Sequence[str]) -> list[tuple[int, int]]:
    """``(first, stop)`` index pairs of every contiguous range of two or more ``levels``."""
    return [(i, j) for i in range(len(levels)) for j in range(i + 2, len(levels) + 1)]


def fused_scores(run_dirs: Sequence[Path], levels: Sequence[str], dataset, split: str,
                 chunk: int = 64) -> dict[str, float]:
    """MaxBoxAccV2 of the fused CAM of every contiguous range of ``levels`` (one run folder
    each, finest first) on ``split``: ``{level_range: score}``."""
    from inatloc_nb.metrics import BoxAccuracy
    from inatloc_nb.metrics.scoremaps import normalize_scoremap
    from inatloc_nb.training.cam import check_split_ids

    cams = []
    for run_dir in run_dirs:
        cams.append(RunFolder(run_dir).load_cams(split))
        check_split_ids(cams[-1], dataset)
    ranges = _ranges(levels)
    accuracies = [BoxAccuracy() for _ in ranges]
    boxes = dataset.gt_boxes(split)
    for start in range(0, len(cams[0]), chunk):
        stop = min(start + chunk, len(cams[0]))
        maps = np.stack([c.maps(start, stop) for c in cams])  # (levels, images, 224, 224)
        # prefix sums over levels: the sum of any contiguous range is one subtraction
        totals = np.concatenate([np.zeros_like(maps[:1]), np.cumsum(maps, axis=0)])
        for (i, j), accuracy in zip(ranges, accuracies, strict=True):
            accuracy.update(normalize_scoremap((totals[j] - totals[i]) / (j - i)), boxes[start:stop])
    return {level_range(levels[i:j]): acc.compute().mean for (i, j), acc in zip(ranges, accuracies, strict=True)}


def ensemble_scores(results_dir: str | Path, variants: pl.DataFrame, splits: tuple[str, ...] = ("val", "test"),
                    progress: bool = True) -> pl.DataFrame:
    """``dataset, seed, levels, split, maxboxacc_v2`` of the fused CAMs of every contiguous
    range of levels of the ``single`` runs in ``variants`` (from
    :func:`~inatloc_nb.granularity.selection.run_variants`), per dataset and seed. Cached in
    ``results_dir`` (:data:`ENSEMBLES_FILE`, written atomically), recomputed when the runs change."""
    from inatloc_nb.core.progress import track

    from inatloc_nb.core.atomic import atomic_write_parquet
    from inatloc_nb.granularity.evidence import sweep_dataset

    results_dir = Path(results_dir)
    runs = (variants.filter(pl.col("variant") == "single").select("run_id", "dataset", "seed", "level")
            .unique().sort("dataset", "seed", "level"))
    key = ",".join(runs["run_id"].to_list())
    cache = results_dir / ENSEMBLES_FILE
    if cache.is_file():
        cached = pl.read_parquet(cache)
        if cached.height and cached["runs"][0] == key:
            return cached.drop("runs")
    rows = []
    datasets = {name: sweep_dataset(variants, name) for name in runs["dataset"].unique()}
    groups = list(runs.group_by("dataset", "seed", maintain_order=True))
    for (dataset, seed), group in track(groups, desc="level ensembles", show=progress):
        ds = datasets[dataset]
        by_level = dict(zip(group["level"], group["run_id"], strict=True))  # one run each: run_variants checks
        levels = [lv for lv in ds.hierarchy.levels if lv in by_level]
        if len(levels) < 2:
            continue
        for split in splits:
            scores = fused_scores([run_folder(results_dir, by_level[lv]).path for lv in levels], levels, ds, split)
            rows += [{"dataset": dataset, "seed": seed, "levels": name, "split": split, "maxboxacc_v2": score}
                     for name, score in scores.items()]
    table = pl.DataFrame(rows, schema={"dataset": pl.String, "seed": pl.Int64, "levels": pl.String,
                                       "split": pl.String, "maxboxacc_v2": pl.Float64})
    atomic_write_parquet(cache, table.with_columns(runs=pl.lit(key)))
    return table


__all__ = ["ENSEMBLES_FILE", "ensemble_scores", "fused_scores", "level_range"]
