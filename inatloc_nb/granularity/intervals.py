"""Intervals of paired D_test differences that include the test sample: a paired bootstrap.

A gain ("strategy minus the best single level, same training seed") varies with the training
seed *and* with the test images it is measured on. :class:`PairedBootstrap` redraws both. Per
dataset (world), each replicate draws the D_test images with replacement, once for every run
of that dataset (the runs of every seed and strategy share one test set, so a hard image is
hard for all of them), and the training seeds with replacement; it recomputes each run's
MaxBoxAccV2 on the drawn images, re-picking the optimal CAM threshold per IoU as the metric
does on any test set, and averages the paired gains over the drawn seeds. Replicates of
several datasets average element-wise (datasets are independent draws), which pools worlds.

The threshold is re-picked per replicate so that the interval covers the whole statistic,
threshold choice included; with the threshold fixed at the full test set's optimum, every
replicate would reuse a choice made on all images, which understates the spread. The point
estimate stays the plain difference of the runs' reported scores (the full test set, where
both coincide).

Per-image correctness at every threshold comes from :meth:`BoxAccuracy.image_curves` on the
run's saved CAMs, cached in the run folder (``cams/<split>-curves.npz``, keyed by the CAM
file's digest).
"""
from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.granularity.evidence import IOU_THRESHOLDS
from inatloc_nb.runs.runfolder import RunFolder, run_folder

#: Bootstrap replicates and generator seed of the comparison's intervals (docs/granularity.md).
N_BOOT = 2000
BOOT_SEED = 0
#: Coverage of the intervals.
LEVEL = 0.95


def image_curves(cams, boxes: Sequence[np.ndarray], iou_thresholds: Sequence[int] = IOU_THRESHOLDS) -> np.ndarray:
    """(N, D, T) bool: whether each image's best box reaches each IoU threshold (D) at each
    CAM threshold (T), for a ``CamSet``'s evaluation maps against the N images' ``boxes``."""
    from inatloc_nb.metrics import BoxAccuracy
    from inatloc_nb.training.cam import accumulate

    curves = accumulate(cams, boxes, BoxAccuracy(iou_thresholds=tuple(iou_thresholds))).image_curves()
    return np.stack([curves[d] for d in iou_thresholds], axis=1)


def run_image_curves(run_dir: str | Path, dataset, split: str = "test") -> np.ndarray:
    """:func:`image_curves` of a finished run folder's ``cams/<split>.npz``, cached beside it
    (``<split>-curves.npz``, recomputed when the CAM file changes)."""
    from inatloc_nb.core.atomic import atomic_write_bytes
    from inatloc_nb.training.cam import check_split_ids

    folder = RunFolder(run_dir)
    path, cams = folder.cams_path(split), folder.load_cams(split)  # maps read lazily, when needed
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    cache = path.with_name(f"{split}-curves.npz")
    if cache.is_file():
        with np.load(cache) as stored:
            if str(stored["cams_sha1"]) == digest:
                return np.unpackbits(stored["bits"], axis=-1, count=int(stored["n_thresholds"])).astype(bool)
    check_split_ids(cams, dataset)
    curves = image_curves(cams, dataset.gt_boxes(split))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, bits=np.packbits(curves, axis=-1), n_thresholds=curves.shape[-1],
                        cams_sha1=np.array(digest))
    atomic_write_bytes(cache, buffer.getvalue())
    return curves


def replicate_scores(curves: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) MaxBoxAccV2 (%) of one run under each replicate's image ``weights`` (B, N: how many
    times each image is drawn), the optimal threshold re-picked per replicate and IoU. With
    all weights 1 it is the run's MaxBoxAccV2."""
    n_images = curves.shape[0]
    if weights.shape[1] != n_images:
        raise InatlocError(f"bootstrap weights cover {weights.shape[1]} images, the curves {n_images}")
    w = weights.astype(np.float32)
    per_iou = []
    for d in range(curves.shape[1]):
        columns = np.unique(curves[:, d, :], axis=1).astype(np.float32)  # thresholds with equal hits count once
        per_iou.append((w @ columns).max(axis=1) / n_images)
    return 100.0 * np.mean(per_iou, axis=0)


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` percentile interval of bootstrap ``replicates``."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


class PairedBootstrap:
    """Bootstrap replicates of mean paired D_test gains for the runs of a results folder.

    ``variants`` (:func:`~inatloc_nb.granularity.selection.run_variants`) names each run's
    dataset (its ``data`` column locates the images). Replicates are reproducible: the draws
    of a dataset depend only on ``seed``, the dataset's name and its number of images and
    seeds, so every strategy of a dataset is measured on the same draws.
    """

    def __init__(self, results_dir: str | Path, variants: pl.DataFrame, n_boot: int = N_BOOT,
                 seed: int = BOOT_SEED, split: str = "test"):
        if n_boot < 100:
            raise InatlocError(f"n_boot must be at least 100, got {n_boot}")
        self.results_dir = Path(results_dir)
        self.variants = variants
        self.n_boot = int(n_boot)
        self.seed = int(seed)
        self.split = split
        self._datasets: dict[str, object] = {}
        self._weights: dict[str, np.ndarray] = {}
        self._scores: dict[str, np.ndarray] = {}

    def _rng(self, dataset: str, *stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32(dataset.encode()), *stream])

    def _dataset(self, name: str):
        from inatloc_nb.granularity.evidence import sweep_dataset

        if name not in self._datasets:
            self._datasets[name] = sweep_dataset(self.variants, name)
        return self._datasets[name]

    def weights(self, dataset: str) -> np.ndarray:
        """(B, N) draw counts of the dataset's ``split`` images, one row per replicate."""
        if dataset not in self._weights:
            n = self._dataset(dataset).images(self.split).height
            self._weights[dataset] = self._rng(dataset, 0).multinomial(n, np.full(n, 1 / n), size=self.n_boot)
        return self._weights[dataset]

    def run_replicates(self, dataset: str, run_id: str) -> np.ndarray:
        """(B,) MaxBoxAccV2 of one run of ``dataset`` under the dataset's image draws."""
        if run_id not in self._scores:
            curves = run_image_curves(run_folder(self.results_dir, run_id).path, self._dataset(dataset), self.split)
            self._scores[run_id] = replicate_scores(curves, self.weights(dataset))
        return self._scores[run_id]

    def gain_replicates(self, dataset: str, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """(B,) replicates of the mean over seeds of ``run - reference`` for ``pairs`` (one
        ``(run_id, reference_run_id)`` per training seed of ``dataset``), seeds redrawn too."""
        if not pairs:
            raise InatlocError(f"no paired runs of dataset {dataset!r} to bootstrap")
        gains = np.stack([self.run_replicates(dataset, run) - self.run_replicates(dataset, ref)
                          for run, ref in pairs])  # (seeds, B)
        drawn = self._rng(dataset, 1, len(pairs)).integers(0, len(pairs), size=(self.n_boot, len(pairs)))
        return gains[drawn, np.arange(self.n_boot)[:, None]].mean(axis=1)


__all__ = ["BOOT_SEED", "LEVEL", "N_BOOT", "PairedBootstrap", "image_curves", "percentile_interval",
           "replicate_scores", "run_image_curves"]
