"""MaxBoxAcc and MaxBoxAccV2 (Choe et al., CVPR 2020) as an update/compute/merge accumulator.

Per image and threshold, the best IoU between any box of the binarised map and any
ground-truth box decides correctness at each IoU threshold delta; BoxAcc(t, delta) is the
percentage of correct images, MaxBoxAcc(delta) its maximum over t, and MaxBoxAccV2 the mean
over delta in {30, 50, 70}.

- V2 (``largest_only=False``) boxes every contour; it runs on the component-tree kernels of
  :mod:`inatloc_nb.metrics.component_tree` and gives the same per-threshold counts as
  calling ``cv2.findContours`` at each threshold.
- V1 (``largest_only=True``) keeps the contour of largest ``cv2.contourArea`` (first one
  on ties, as ``max`` does); it calls OpenCV once per distinct binarisation of each map.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from inatloc_nb.core.errors import ScoreMapError
from inatloc_nb.metrics.component_tree import batch_best_iou
from inatloc_nb.metrics.scoremaps import (
    as_numpy,
    cam_thresholds,
    check_gt_boxes,
    check_score_maps,
    quantize,
    threshold_cutoffs,
)

#: Maps handed to one worker at a time.
_CHUNK = 16
#: Images whose IoUs with a shared map's boxes are computed in one array operation.
_SHARED_CHUNK = 4096


def multiple_iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(n, m) IoU of inclusive-pixel boxes; a non-positive denominator gives 0."""
    a = boxes[:, None, :].astype(np.int64)
    b = gt[None, :, :].astype(np.int64)
    iw = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1)
    ih = np.maximum(0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1)
    inter = iw * ih
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denom = area_a + area_b - inter
    ok = denom > 0
    return np.where(ok, inter / np.where(ok, denom, 1), 0.0)


def contour_boxes(binary: np.ndarray, largest_only: bool = False) -> np.ndarray:
    """(n, 4) boxes of a binary map's contours as the protocol draws them.

    Rectangles (x, y, w, h) of ``findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)`` become
    (x, y, min(x + w, W - 1), min(y + h, H - 1)); no contour gives [(0, 0, 0, 0)].
    """
    height, width = binary.shape
    contours = cv2.findContours(binary.astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.zeros((1, 4), dtype=np.int64)
    if largest_only:
        contours = [max(contours, key=cv2.contourArea)]
    rects = np.array([cv2.boundingRect(c) for c in contours], dtype=np.int64)
    x, y, w, h = rects.T
    return np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)


def binarisation_boxes(q: np.ndarray, cutoffs: np.ndarray, largest_only: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """Contour boxes of each distinct binarisation ``q > cutoff`` of one quantised map, by OpenCV.

    Cutoffs with no grey level between them give the same binary map, so OpenCV runs once
    per distinct map. Returns ``(key, boxes)``: threshold ``i`` uses ``boxes[key[i]]``.
    """
    levels = np.unique(q)
    _, first, key = np.unique(np.searchsorted(levels, cutoffs, side="right"), return_index=True, return_inverse=True)
    boxes = [contour_boxes(q > cutoffs[i], largest_only) for i in first]
    return key, boxes


def _largest_contour_best_iou(q: np.ndarray, cutoffs: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """V1 best IoU per threshold of one map."""
    key, boxes = binarisation_boxes(q, cutoffs, largest_only=True)
    return np.array([multiple_iou(b, gt).max() for b in boxes])[key]


def best_iou_curves(
    score_maps: np.ndarray,
    gt_boxes: Sequence[np.ndarray],
    thresholds: np.ndarray,
    largest_only: bool = False,
    n_jobs: int | None = None,
) -> np.ndarray:
    """(B, T) best IoU per map and threshold; maps in [0, 1], boxes validated.

    Work is spread over ``n_jobs`` threads (default: all cores); the result does not
    depend on it. Each chunk of maps is quantised where it is scored, while it is in cache.
    """
    out = np.empty((len(score_maps), len(thresholds)), dtype=np.float64)

    def run(start: int) -> None:
        stop = min(start + _CHUNK, len(score_maps))
        q = np.ascontiguousarray(quantize(score_maps[start:stop]))
        cutoffs = threshold_cutoffs(q, thresholds)
        if largest_only:
            for b in range(start, stop):
                out[b] = _largest_contour_best_iou(q[b - start], cutoffs[b - start], gt_boxes[b])
            return
        chunk_gt = gt_boxes[start:stop]
        gt_start = np.concatenate([[0], np.cumsum([len(g) for g in chunk_gt])]).astype(np.int64)
        batch_best_iou(q, cutoffs, np.concatenate(chunk_gt).astype(np.int64), gt_start, out[start:stop])

    starts = range(0, len(score_maps), _CHUNK)
    workers = min(n_jobs or os.cpu_count() or 1, len(starts))
    if workers <= 1:
        for s in starts:
            run(s)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    return out


@dataclass
class BoxAccuracyResult:
    """What :meth:`BoxAccuracy.compute` returns. Accuracies are percentages."""

    per_iou: dict[int, float]
    mean: float
    optimal_threshold: dict[int, float]
    curves: dict[int, np.ndarray]
    correct: dict[int, np.ndarray]
    n_images: int
    metric: str
    """``"maxboxacc_v2"`` (every contour) or ``"maxboxacc"`` (V1, largest contour)."""
    image_correct: dict[int, np.ndarray] = field(repr=False)
    """Per-image correctness (bool, update order) at each delta's optimal threshold."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: ``metric`` key (the mean), ``per_iou``, ``optimal_threshold``, ``n_images``."""
        return {
            self.metric: self.mean,
            "per_iou": {str(d): v for d, v in self.per_iou.items()},
            "optimal_threshold": {str(d): v for d, v in self.optimal_threshold.items()},
            "n_images": self.n_images,
        }


class BoxAccuracy:
    """Accumulator for MaxBoxAccV2 (default) or MaxBoxAcc V1 (``largest_only=True``, use ``iou_thresholds=(50,)``).

    ``update(score_maps, gt_boxes)`` takes (B, H, W) maps (numpy or torch; the protocol's
    grid is 224 x 224) and one (n_i, 4) integer box array per map on the same grid.
    ``normalize=True`` min-max normalises each map first; otherwise maps must lie in [0, 1].
    """

    def __init__(
        self,
        iou_thresholds: Sequence[int] = (30, 50, 70),
        n_thresholds: int = 1000,
        largest_only: bool = False,
        normalize: bool = False,
        n_jobs: int | None = None,
    ):
        self.iou_thresholds = tuple(int(d) for d in iou_thresholds)
        if not self.iou_thresholds or any(not 0 < d <= 100 for d in self.iou_thresholds):
            raise ValueError(f"IoU thresholds are integer percents in (0, 100], got {iou_thresholds}")
        self.n_thresholds = int(n_thresholds)
        self.thresholds = cam_thresholds(self.n_thresholds)
        self.largest_only = bool(largest_only)
        self.normalize = bool(normalize)
        self.n_jobs = n_jobs
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        self.correct = {d: np.zeros(self.n_thresholds, dtype=np.int64) for d in self.iou_thresholds}
        self.n_images = 0
        self._packed: dict[int, list[np.ndarray]] = {d: [] for d in self.iou_thresholds}

    def _config(self) -> tuple:
        return (self.iou_thresholds, self.n_thresholds, self.largest_only, self.normalize)

    def _add(self, best_iou: np.ndarray) -> None:
        for d in self.iou_thresholds:
            hits = best_iou >= d / 100
            self.correct[d] += hits.sum(axis=0)
            self._packed[d].append(np.packbits(hits, axis=1))
        self.n_images += len(best_iou)

    def update(self, score_maps: Any, gt_boxes: Sequence[Any]) -> None:
        """Add a batch of score maps with their ground-truth boxes."""
        maps = check_score_maps(score_maps, self.normalize)
        boxes = check_gt_boxes(gt_boxes, len(maps))
        if len(maps) == 0:
            return
        self._add(best_iou_curves(maps, boxes, self.thresholds, self.largest_only, self.n_jobs))

    def update_shared(self, score_map: Any, gt_boxes: Sequence[Any]) -> None:
        """Add one image per ``gt_boxes`` entry, all scored with the same (H, W) map.

        For maps that do not depend on the image, such as the Center baseline: the boxes of
        every binarisation are found once.
        """
        smap = check_score_maps(as_numpy(score_map)[None], self.normalize)
        boxes = check_gt_boxes(gt_boxes, len(gt_boxes))
        if not boxes:
            return
        q = quantize(smap)
        key, sets = binarisation_boxes(q[0], threshold_cutoffs(q, self.thresholds)[0], self.largest_only)
        pred = np.concatenate(sets)
        set_start = np.cumsum([0] + [len(b) for b in sets[:-1]])
        for start in range(0, len(boxes), _SHARED_CHUNK):
            chunk = boxes[start : start + _SHARED_CHUNK]
            gt_start = np.cumsum([0] + [len(g) for g in chunk[:-1]])
            iou = multiple_iou(pred, np.concatenate(chunk))  # (all boxes, all GT boxes)
            per_set = np.maximum.reduceat(iou, set_start, axis=0)
            per_image = np.maximum.reduceat(per_set, gt_start, axis=1)  # (sets, images)
            self._add(per_image[key].T)

    def update_boxes(self, pred_boxes: Sequence[Any], gt_boxes: Sequence[Any]) -> None:
        """Add images scored by boxes predicted directly (one or more per image).

        The best IoU over predicted x ground-truth boxes counts at every threshold; an
        image with no predicted box is scored with the box (0, 0, 0, 0).
        """
        boxes = check_gt_boxes(gt_boxes, len(pred_boxes))
        best = np.empty(len(boxes), dtype=np.float64)
        for i, (pred, gt) in enumerate(zip(pred_boxes, boxes)):
            pred = as_numpy(pred).reshape(-1, 4)
            if len(pred) == 0:
                pred = np.zeros((1, 4), dtype=np.int64)
            best[i] = multiple_iou(pred, gt).max()
        if len(best):
            self._add(np.repeat(best[:, None], self.n_thresholds, axis=1))

    def merge(self, other: BoxAccuracy) -> BoxAccuracy:
        """Add another accumulator's images (after this one's); configurations must match."""
        if self._config() != other._config():
            raise ScoreMapError(f"cannot merge BoxAccuracy {other._config()} into {self._config()}")
        for d in self.iou_thresholds:
            self.correct[d] += other.correct[d]
            self._packed[d].extend(other._packed[d])
        self.n_images += other.n_images
        return self

    def image_curves(self) -> dict[int, np.ndarray]:
        """Per delta, the (N, T) per-image correctness at every CAM threshold (bool, update
        order): its column mean is the accuracy curve; for bootstrap replicates of the metric
        that re-pick the optimal threshold."""
        return {d: np.unpackbits(np.concatenate(self._packed[d]), axis=1, count=self.n_thresholds).astype(bool)
                for d in self.iou_thresholds}

    def compute(self) -> BoxAccuracyResult:
        """MaxBoxAcc per delta, their mean, the optimal thresholds and the accuracy curves."""
        if self.n_images == 0:
            raise ScoreMapError("BoxAccuracy.compute() called before any image was added")
        curves = {d: self.correct[d] * 100.0 / self.n_images for d in self.iou_thresholds}
        best = {d: int(np.argmax(c)) for d, c in curves.items()}
        image_correct = {
            d: np.unpackbits(np.concatenate(self._packed[d]), axis=1, count=self.n_thresholds)[:, best[d]].astype(bool)
            for d in self.iou_thresholds
        }
        per_iou = {d: float(curves[d][best[d]]) for d in self.iou_thresholds}
        return BoxAccuracyResult(
            per_iou=per_iou,
            mean=float(np.mean(list(per_iou.values()))),
            optimal_threshold={d: float(self.thresholds[best[d]]) for d in self.iou_thresholds},
            curves=curves,
            correct={d: c.copy() for d, c in self.correct.items()},
            n_images=self.n_images,
            metric="maxboxacc" if self.largest_only else "maxboxacc_v2",
            image_correct=image_correct,
        )
