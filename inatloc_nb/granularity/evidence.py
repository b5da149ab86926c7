"""Per-image localization evidence of finished runs: which images each run boxes correctly.

``image_hits`` turns a split's CAMs into one score per image: the mean, over the IoU
thresholds of MaxBoxAccV2 (30, 50, 70), of whether the image's best box reaches the
threshold at the split's optimal CAM threshold for that IoU. Its mean over the split is the
split's MaxBoxAccV2 / 100. ``run_evidence`` collects it for the single-level runs of a
results folder, joined with each image's finest category.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs.runfolder import RunFolder, run_folder

#: IoU thresholds (percent) of MaxBoxAccV2.
IOU_THRESHOLDS = (30, 50, 70)


def image_hits(cams, boxes: Sequence[np.ndarray],
               iou_thresholds: Sequence[int] = IOU_THRESHOLDS) -> np.ndarray:
    """(N,) per-image scores in [0, 1] of a ``CamSet``'s evaluation maps against the N images'
    ``boxes``: the mean over ``iou_thresholds`` of ``BoxAccuracyResult.image_correct``."""
    from inatloc_nb.metrics import BoxAccuracy
    from inatloc_nb.training.cam import accumulate

    result = accumulate(cams, boxes, BoxAccuracy(iou_thresholds=tuple(iou_thresholds))).compute()
    return np.mean([result.image_correct[d] for d in iou_thresholds], axis=0)


def run_image_hits(run_dir: str | Path, dataset, split: str = "val") -> pl.DataFrame:
    """``image_id, category, hit`` for ``split`` of one finished run folder (its ``cams/<split>.npz``)."""
    folder = RunFolder(run_dir)
    path, cams = folder.cams_path(split), folder.load_cams(split)
    images = dataset.images(split)
    if cams.image_ids != images["image_id"].to_list():
        raise InatlocError(f"{path}: its images are not those of {dataset.name} {split}; wrong dataset?")
    leaves = np.asarray(dataset.hierarchy.leaves, dtype=object)
    return pl.DataFrame({
        "image_id": cams.image_ids,
        "category": leaves[images["label"].to_numpy()].tolist(),
        "hit": image_hits(cams, dataset.gt_boxes(split)),
    })


def single_level_runs(store: pl.DataFrame, dataset: str, schedule: str | None = None,
                      method: str = "cam") -> pl.DataFrame:
    """The finished single-level runs (one row each: ``run_id, level, seed, data``) of
    ``dataset`` trained with ``method`` on all of D_w at a named level (no mixed labelling),
    for one ``schedule``. Without ``schedule``, the runs must share one (else the error lists them)."""
    from inatloc_nb.hierarchies.labelling import is_mixed

    runs = (store.filter((pl.col("status") == "ok") & (pl.col("dataset") == dataset) & (pl.col("method") == method)
                         & (pl.col("explainer") == "cam")  # the runs' own maps, not post-hoc explainers
                         & pl.col("per_class").is_null() & (pl.col("split") == "val")
                         & (pl.col("level") == pl.col("train_level")))
            .filter(~pl.col("level").map_elements(is_mixed, return_dtype=pl.Boolean)))
    if runs.height == 0:
        found = sorted(store["dataset"].unique().drop_nulls().to_list())
        raise InatlocError(f"no finished {method} runs of dataset {dataset!r} on all images (datasets: {found})")
    schedules = sorted(runs["schedule"].unique().to_list())
    if schedule is None and len(schedules) > 1:
        raise InatlocError(f"dataset {dataset!r} has {method} runs with schedules {schedules}; choose one")
    if schedule is not None:
        runs = runs.filter(pl.col("schedule") == str(schedule))
        if runs.height == 0:
            raise InatlocError(f"no {method} runs of {dataset!r} with schedule {schedule!r} (found {schedules})")
    return runs.select("run_id", "level", "seed", "data").unique("run_id").sort("level", "seed")


def sweep_dataset(store: pl.DataFrame, dataset: str):
    """The ``WSOLDataset`` the runs of ``dataset`` in a results store were trained on."""
    from inatloc_nb.training.run_config import load_dataset

    data = store.filter(pl.col("dataset") == dataset)["data"].drop_nulls().unique().to_list()
    if len(data) != 1:
        raise InatlocError(f"results store: dataset {dataset!r} has data {data or 'none'}; expected one source")
    return load_dataset(data[0])


def run_evidence(results_dir: str | Path, dataset: str, schedule: str | None = None,
                 split: str = "val", progress: bool = True) -> pl.DataFrame:
    """``run_id, level, seed, image_id, category, hit`` for every single-level CAM run of
    ``dataset`` in ``results_dir`` (see :func:`single_level_runs`), on ``split`` (D_f)."""
    from inatloc_nb.core.progress import track

    from inatloc_nb.runs import results

    results_dir = Path(results_dir)
    store = results.load(results_dir)
    runs = single_level_runs(store, dataset, schedule)
    ds = sweep_dataset(store, dataset)
    frames = []
    for row in track(runs.iter_rows(named=True), total=runs.height, desc=f"D_f evidence of {dataset}",
                    show=progress):
        hits = run_image_hits(run_folder(results_dir, row["run_id"]).path, ds, split)
        frames.append(hits.with_columns(run_id=pl.lit(row["run_id"]), level=pl.lit(row["level"]),
                                        seed=pl.lit(row["seed"], dtype=pl.Int64)))
    return pl.concat(frames).select("run_id", "level", "seed", "image_id", "category", "hit")
