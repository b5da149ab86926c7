"""Post-hoc explainers: images per second of each pytorch-grad-cam explainer on CPU.

Times :class:`inatloc_nb.runs.explainers.Explainer` ``cams`` (what ``inatloc-nb explain`` runs per
batch: forward, backward where the explainer needs gradients, the explainer's maps at the
feature resolution) on a CAMNet with random weights and random images, after one warm-up
batch. Rates are given per second of wall-clock time and of the process's CPU time (on a
shared machine the wall-clock rate depends on the load; the CPU-time rate much less).

Usage: ``python benchmarks/bench_explainers.py [--backbone resnet18] [--image-size 224]
[--batch 8] [--repeat 2] [--threads 1] [--explainers gradcam scorecam ...] [--json]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from inatloc_nb.runs.explainers import EXPLAINERS, Explainer
from inatloc_nb.training.models import CAMNet, build_backbone


def measure(name: str, model: CAMNet, images: torch.Tensor, classes: torch.Tensor, repeat: int,
            score_batch: int) -> dict:
    """Wall and CPU seconds of ``repeat`` batches of explainer ``name`` (after one warm-up)."""
    with Explainer(name, score_batch=score_batch) as explainer, torch.no_grad():
        maps = explainer.cams(model, images, classes)  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeat):
            maps = explainer.cams(model, images, classes)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = repeat * len(images)
    return {"explainer": name, "images": n, "map_shape": list(maps.shape[1:]),
            "wall_seconds": wall, "cpu_seconds": cpu,
            "images_per_wall_s": n / wall, "images_per_cpu_s": n / cpu, "wall_s_per_image": wall / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18", choices=("tinycnn", "resnet18", "resnet50"))
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--score-batch", type=int, default=64, help="Score-CAM masked images per forward")
    parser.add_argument("--explainers", nargs="+", default=list(EXPLAINERS), choices=list(EXPLAINERS))
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    features, channels = build_backbone(args.backbone, pretrained=False)
    model = CAMNet(features, channels, 10).eval()
    images = torch.randn(args.batch, 3, args.image_size, args.image_size)
    classes = torch.arange(args.batch) % 10
    rows = []
    for name in args.explainers:
        rows.append(measure(name, model, images, classes, args.repeat, args.score_batch))
        if not args.json:
            r = rows[-1]
            print(f"{name:10s} {r['images_per_wall_s']:8.2f} images/s wall  {r['images_per_cpu_s']:8.2f} "
                  f"images/CPU-s  {r['wall_s_per_image']:7.3f} s/image  maps {tuple(r['map_shape'])}")
    setup = {"backbone": args.backbone, "image_size": args.image_size, "batch": args.batch,
             "repeat": args.repeat, "threads": args.threads, "score_batch": args.score_batch,
             "device": "cpu", "torch": torch.__version__, "machine": platform.machine()}
    if args.json:
        print(json.dumps({"setup": setup, "results": rows}, indent=1))


if __name__ == "__main__":
    main()
