"""MaxBoxAccV2 throughput: the literal per-threshold OpenCV path against the component-tree path.

Prints maps/s on one core for both paths on CAM-like maps (28 x 28 random upsampled
bilinearly to 224 x 224), their ratio, and the multi-core batch throughput of
``BoxAccuracy.update``. Usage: ``python benchmarks/bench_maxboxacc.py [--maps N] [--literal-maps N]``.
"""
from __future__ import annotations

import argparse
import os
import time

import cv2
import numpy as np

from inatloc_nb.metrics import BoxAccuracy, best_iou_curves, cam_thresholds, contour_boxes, multiple_iou


def cam_like_maps(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = np.stack([cv2.resize(s, (224, 224)) for s in rng.random((n, 28, 28)).astype(np.float32)])
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def literal_best_iou(scoremap: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """One cv2.findContours per threshold, then one IoU call over all boxes, as the reference evaluation."""
    q = (scoremap * 255).astype(np.uint8)
    boxes = [contour_boxes(q > int(t * np.max(q))) for t in thresholds]
    starts = np.cumsum([0] + [len(b) for b in boxes[:-1]])
    return np.maximum.reduceat(multiple_iou(np.concatenate(boxes), gt).max(axis=1), starts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=512, help="maps for the fast paths")
    parser.add_argument("--literal-maps", type=int, default=20, help="maps for the literal path")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    thresholds = cam_thresholds()
    maps = cam_like_maps(args.maps)
    rng = np.random.default_rng(1)
    gts = [np.array([[x, y, x + w, y + h]]) for x, y, w, h in rng.integers(20, 100, (args.maps, 4))]
    best_iou_curves(maps[:2], gts[:2], thresholds, n_jobs=1)  # compile / load the kernels

    start = time.perf_counter()
    literal = np.stack([literal_best_iou(m, g, thresholds) for m, g in zip(maps[: args.literal_maps], gts)])
    literal_rate = args.literal_maps / (time.perf_counter() - start)

    start = time.perf_counter()
    fast = best_iou_curves(maps, gts, thresholds, n_jobs=1)
    fast_rate = args.maps / (time.perf_counter() - start)
    assert np.array_equal(fast[: args.literal_maps], literal), "fast and literal paths disagree"

    cores = os.cpu_count() or 1
    start = time.perf_counter()
    BoxAccuracy(n_jobs=cores).update(maps, gts)
    batch_rate = args.maps / (time.perf_counter() - start)

    print(f"literal (cv2.findContours x 1000, 1 core): {literal_rate:8.1f} maps/s")
    print(f"component tree (1 core):                  {fast_rate:8.1f} maps/s")
    print(f"speed-up per map:                         {fast_rate / literal_rate:8.1f}x")
    print(f"BoxAccuracy.update ({cores} threads):          {batch_rate:8.1f} maps/s")


if __name__ == "__main__":
    main()
