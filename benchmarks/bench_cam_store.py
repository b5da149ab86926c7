"""CAM store: bytes per image on disk, and streamed MaxBoxAccV2 scoring time and peak memory.

Writes ``--images`` synthetic CAM-like 28 x 28 float32 maps (smoothed noise plus a few
Gaussian blobs, one to three random GT boxes each on the 224 grid) as a ``CamSet`` file, then
scores the file in a fresh subprocess (``CamSet.load`` + ``inatloc_nb.training.cam.accumulate`` with
``BoxAccuracy``, chunk by chunk) and reports that subprocess's peak RSS. Finally the same maps
are scored from memory (the in-memory array ``extract_cams`` would return, another chunk size)
and the per-threshold counts are compared, and the per-image analysis of a run
(``analysis.parquet``: ``runfolder.analysis_frame`` at the optimal threshold) is timed.

What a training run does with each evaluated split after extracting its CAMs is the save, the
scoring and the analysis: at the paper's 12,500 images per split, part of a run's fixed cost.

Usage: ``python benchmarks/bench_cam_store.py --images N [--json]``; prints
``bytes_per_image``, ``save_seconds``, ``peak_rss_mb``, ``score_seconds`` (wall clock),
``score_cpu_seconds`` (CPU time of all scoring threads: comparable on a shared machine),
``analysis_seconds`` / ``analysis_cpu_seconds``, ``cpu_cores`` and ``identical``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from inatloc_nb.metrics import BoxAccuracy
from inatloc_nb.runs.runfolder import analysis_frame
from inatloc_nb.training.cam import CamSet, accumulate

SIDE = 28
_GEN_CHUNK = 4096


def synthetic_raw(n: int, seed: int = 0) -> np.ndarray:
    """(n, 28, 28) float32 CAM-like maps: blurred noise plus one to three Gaussian blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE].astype(np.float32)
    out = np.empty((n, SIDE, SIDE), dtype=np.float32)
    for i in range(n):
        cam = cv2.GaussianBlur(rng.normal(0, 1, (SIDE, SIDE)).astype(np.float32), (0, 0), 1.5)
        for _ in range(rng.integers(1, 4)):
            cx, cy, s = rng.uniform(4, 24), rng.uniform(4, 24), rng.uniform(1.5, 6)
            cam += rng.uniform(2, 8) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        out[i] = cam
    return out


def synthetic_boxes(n: int, seed: int = 0) -> list[np.ndarray]:
    """One to three inclusive (x0, y0, x1, y1) boxes per image on the 224 grid."""
    rng = np.random.default_rng(seed + 1)
    boxes = []
    for _ in range(n):
        k = int(rng.integers(1, 4))
        x0, y0 = rng.integers(0, 180, k), rng.integers(0, 180, k)
        w, h = rng.integers(20, 120, k), rng.integers(20, 120, k)
        boxes.append(np.stack([x0, y0, np.minimum(x0 + w, 223), np.minimum(y0 + h, 223)], axis=1))
    return boxes


def score_file(path: Path, n: int, seed: int) -> dict:
    """Stream-score a stored CamSet (run in a subprocess so its peak RSS is its own)."""
    boxes = synthetic_boxes(n, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    accuracy = accumulate(CamSet.load(path), boxes)
    result = accuracy.compute()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "score_seconds": seconds,
        "score_cpu_seconds": cpu_seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "maxboxacc_v2": result.mean,
        "correct": {str(d): c.tolist() for d, c in result.correct.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25000, help="number of synthetic maps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--score-file", type=Path, help=argparse.SUPPRESS)  # internal: the scoring subprocess
    args = parser.parse_args()
    if args.score_file:
        print(json.dumps(score_file(args.score_file, args.images, args.seed)))
        return

    n = args.images
    raw = synthetic_raw(n, args.seed)
    ids = [f"bench/{i // 1000:03d}/image_{i:07d}.jpg" for i in range(n)]
    zeros = np.zeros(n, dtype=np.int64)
    cams = CamSet("test", "species", ids, raw, zeros, zeros, zeros, np.zeros(n, np.float32))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = cams.save(Path(tmp) / "test.npz")
        save_seconds = time.perf_counter() - start
        bytes_per_image = path.stat().st_size / n
        proc = subprocess.run(
            [sys.executable, __file__, "--images", str(n), "--seed", str(args.seed), "--score-file", str(path)],
            check=True, capture_output=True, text=True,
        )
    streamed = json.loads(proc.stdout.strip().splitlines()[-1])
    in_memory = accumulate(cams, synthetic_boxes(n, args.seed), BoxAccuracy(), chunk=1000).compute()
    identical = all(np.array_equal(np.array(streamed["correct"][str(d)]), c) for d, c in in_memory.correct.items())
    start, cpu_start = time.perf_counter(), time.process_time()
    analysis_frame(cams.iter_maps(), synthetic_boxes(n, args.seed), ids, in_memory, "test")
    analysis_seconds, analysis_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    report = {
        "images": n,
        "cpu_cores": os.cpu_count(),
        "bytes_per_image": round(bytes_per_image, 1),
        "save_seconds": round(save_seconds, 2),
        "peak_rss_mb": round(streamed["peak_rss_mb"], 1),
        "score_seconds": round(streamed["score_seconds"], 2),
        "score_cpu_seconds": round(streamed["score_cpu_seconds"], 2),
        "analysis_seconds": round(analysis_seconds, 2),
        "analysis_cpu_seconds": round(analysis_cpu_seconds, 2),
        "maxboxacc_v2": streamed["maxboxacc_v2"],
        "identical": identical,
    }
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
