"""MaxBoxAccV2 speed: the component-tree kernels against the literal per-threshold OpenCV path.

Maps are CAM-like: random 28 x 28 maps upsampled to 224 x 224 with ``cv2.INTER_CUBIC`` and
min-max normalised, as CAMs are evaluated. Both paths run on one core in the calling
thread; times are that thread's CPU time (``time.thread_time``), best of ``--repeats``
runs, so other processes on a shared machine inflate them less than wall-clock time would.
The literal path (one ``cv2.findContours`` per threshold, as the reference evaluation) runs
on the first ``--literal-maps`` maps, and its best IoUs must equal the fast path's.

Usage: ``python benchmarks/bench_maxboxacc.py [--maps N] [--literal-maps N] [--repeats N] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable

import cv2
import numpy as np

from inatloc_nb.metrics import BoxAccuracy, best_iou_curves, cam_thresholds, contour_boxes, multiple_iou


def cam_like_maps(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random 28 x 28 maps, bicubic-upsampled to 224 x 224, min-max normalised (float32)."""
    rng = np.random.default_rng(seed)
    small = rng.random((n, 28, 28)).astype(np.float32)
    maps = np.stack([cv2.resize(s, (224, 224), interpolation=cv2.INTER_CUBIC) for s in small])
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def literal_best_iou(scoremap: np.ndarray, gt: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """One cv2.findContours per threshold, then one IoU call over all boxes, as the reference evaluation."""
    q = (scoremap * 255).astype(np.uint8)
    boxes = [contour_boxes(q > int(t * np.max(q))) for t in thresholds]
    starts = np.cumsum([0] + [len(b) for b in boxes[:-1]])
    return np.maximum.reduceat(multiple_iou(np.concatenate(boxes), gt).max(axis=1), starts)


def best_cpu_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Smallest CPU time of the calling thread over ``repeats`` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.thread_time()
        result = fn()
        best = min(best, time.thread_time() - start)
    return best, result


def run(n_maps: int, n_literal: int, repeats: int) -> dict[str, object]:
    """Measure both paths; returns the numbers ``--json`` prints."""
    cv2.setNumThreads(1)
    thresholds = cam_thresholds()
    maps = cam_like_maps(n_maps)
    rng = np.random.default_rng(1)
    gts = [np.array([[x, y, x + w, y + h]]) for x, y, w, h in rng.integers(20, 100, (n_maps, 4))]
    n_literal = min(n_literal, n_maps)
    best_iou_curves(maps[:2], gts[:2], thresholds, n_jobs=1)  # load (or compile) the kernels

    fast_s, fast = best_cpu_seconds(lambda: best_iou_curves(maps, gts, thresholds, n_jobs=1), repeats)
    literal_s, literal = best_cpu_seconds(
        lambda: np.stack([literal_best_iou(m, g, thresholds) for m, g in zip(maps[:n_literal], gts)]), 1
    )
    cores = os.cpu_count() or 1
    start = time.perf_counter()
    BoxAccuracy(n_jobs=cores).update(maps, gts)
    batch_s = time.perf_counter() - start
    ms_fast = fast_s / n_maps * 1e3
    ms_literal = literal_s / n_literal * 1e3
    return {
        "maps": n_maps,
        "reference_maps": n_literal,
        "ms_per_map_fast": round(ms_fast, 3),
        "ms_per_map_reference": round(ms_literal, 1),
        "speedup": round(ms_literal / ms_fast, 1),
        "identical": bool(np.array_equal(fast[:n_literal], literal)),
        "batch_threads": cores,
        "ms_per_map_batch_wall": round(batch_s / n_maps * 1e3, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=512, help="maps for the fast path")
    parser.add_argument("--literal-maps", type=int, default=20, help="maps for the literal path (about 0.16 s each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the fast path; the fastest counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.maps < 2 or args.literal_maps < 1 or args.repeats < 1:
        parser.error("--maps must be at least 2, --literal-maps and --repeats at least 1")
    result = run(args.maps, args.literal_maps, args.repeats)
    if args.json:
        print(json.dumps(result))
        return
    print(f"literal (cv2.findContours x 1000, 1 core): {result['ms_per_map_reference']:9.1f} ms/map")
    print(f"component tree (1 core):                  {result['ms_per_map_fast']:9.3f} ms/map")
    print(f"speed-up per map:                         {result['speedup']:9.1f}x")
    print(f"identical best IoUs:                      {result['identical']!s:>9}")
    print(f"BoxAccuracy.update ({result['batch_threads']} threads, wall):    {result['ms_per_map_batch_wall']:9.3f} ms/map")


if __name__ == "__main__":
    main()
