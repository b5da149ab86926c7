"""Per-image analysis of score maps at one threshold (App. F.1, Fig. 5 of the paper).

- ``box_area_ratio``: area of the predicted box / area of the ground-truth box, where the
  pair is the (contour box, GT box) of highest IoU at the threshold, i.e. the box that
  decides correctness under MaxBoxAccV2 (first pair on ties);
- ``gt_activation``: sum of the map inside the ground-truth boxes (their union) / sum
  outside them (``inf`` when nothing lies outside);
- ``n_components``: 8-connected components of the binarised map.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import polars as pl

from inatloc_nb.core.errors import ScoreMapError
from inatloc_nb.metrics.boxacc import contour_boxes, multiple_iou
from inatloc_nb.metrics.scoremaps import as_numpy, check_gt_boxes, check_score_maps, quantize


def _box_areas(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)


def image_analysis(score_map: Any, gt_boxes: Any, threshold: float) -> dict[str, float]:
    """Box-area ratio, GT-box activation and component count of one map in [0, 1] at ``threshold``."""
    _check_threshold(threshold)
    return _analysis(check_score_maps(as_numpy(score_map)[None])[0], check_gt_boxes([gt_boxes], 1)[0], threshold)


def _check_threshold(threshold: float) -> None:
    if not 0 <= threshold < 1:
        raise ScoreMapError(f"threshold must lie in [0, 1), got {threshold}")


def _analysis(smap: np.ndarray, gt: np.ndarray, threshold: float) -> dict[str, float]:
    """:func:`image_analysis` of a checked map and checked boxes."""
    q = quantize(smap)
    binary = (q > int(threshold * np.max(q))).astype(np.uint8)
    boxes = contour_boxes(binary)
    ious = multiple_iou(boxes, gt)
    i, j = np.unravel_index(int(np.argmax(ious)), ious.shape)
    ratio = _box_areas(boxes[i : i + 1])[0] / _box_areas(gt[j : j + 1])[0]
    inside = np.zeros(smap.shape, dtype=bool)
    height, width = smap.shape
    for x0, y0, x1, y1 in gt:
        inside[max(y0, 0) : min(y1, height - 1) + 1, max(x0, 0) : min(x1, width - 1) + 1] = True
    total_in = float(smap[inside].sum(dtype=np.float64))
    total_out = float(smap[~inside].sum(dtype=np.float64))
    n_labels = cv2.connectedComponents(binary, connectivity=8)[0]
    return {
        "box_area_ratio": float(ratio),
        "gt_activation": total_in / total_out if total_out > 0 else float("inf"),
        "n_components": int(n_labels - 1),
    }


def analysis_table(
    score_maps: Any, gt_boxes: Sequence[Any], image_ids: Sequence[str], threshold: float
) -> pl.DataFrame:
    """One :func:`image_analysis` row per image: ``image_id, box_area_ratio, gt_activation, n_components``."""
    maps = check_score_maps(score_maps)
    if not len(maps) == len(gt_boxes) == len(image_ids):
        raise ScoreMapError(f"got {len(maps)} maps, {len(gt_boxes)} box arrays and {len(image_ids)} image ids")
    _check_threshold(threshold)
    rows = [_analysis(m, b, threshold) for m, b in zip(maps, check_gt_boxes(gt_boxes, len(maps)))]
    return pl.DataFrame(
        {
            "image_id": list(image_ids),
            "box_area_ratio": [r["box_area_ratio"] for r in rows],
            "gt_activation": [r["gt_activation"] for r in rows],
            "n_components": [r["n_components"] for r in rows],
        },
        schema={"image_id": pl.String, "box_area_ratio": pl.Float64, "gt_activation": pl.Float64, "n_components": pl.Int64},
    )
