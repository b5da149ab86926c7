"""Training and CAM-extraction throughput of the paper's model through the real pipeline.

Generates a Choe-format folder of JPEG files with iNaturalist-like sizes (500 px on the long
side, several aspect ratios), builds the real fastai Learner (``build_learner``: 28 x 28
ResNet-50 from random weights, batch 32, 224 px, the protocol's transforms and loaders),
times ``--steps`` training batches after ``--warmup`` batches, then ``extract_cams`` on the
evaluation images. Prints images/s, the device, library versions and every setting.

On a GPU the defaults are full size; without one a few steps run on the CPU (a smoke
measurement, minutes on 2 cores). ``--runs N`` starts N copies at once on the same device
(packing, as ``inatloc-nb sweep --runs-per-gpu N``), each with its share of the cores for
data loading, and adds an ``aggregate`` block. ``--prepared`` reads a prepared copy
(``inatloc-nb prepare``) instead of decoding the JPEGs.

    python benchmarks/bench_training.py                  # defaults for this machine
    python benchmarks/bench_training.py --runs 3 --json  # three packed runs
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from fastai.callback.core import Callback, CancelFitException

#: (width, height) of the generated images: iNaturalist's resized photos are 500 px on the long side.
SIZES = ((500, 375), (375, 500), (500, 333), (500, 500), (333, 500), (500, 281))
N_CLASSES = 10


def write_jpeg_dataset(out: Path, n_train: int, n_eval: int, seed: int = 0,
                       eval_splits: tuple[str, ...] = ("val",), unique: int | None = None) -> Path:
    """A Choe-format folder (``train/``, one folder per split of ``eval_splits``, ``images/``)
    of textured JPEG photos with one object each, written with the project's metadata writer;
    returns ``out``. ``unique``: draw only that many distinct photos and write their bytes
    again under the other ids (decoding costs the same; generating is faster)."""
    import cv2
    import polars as pl

    from inatloc_nb.core.atomic import atomic_write_bytes
    from inatloc_nb.datasets.metadata import SplitMetadata, write_class_names, write_split

    rng = np.random.default_rng(seed)
    drawn: dict[int, tuple[bytes, tuple[int, ...]]] = {}
    for split, n in (("train", n_train), *((name, n_eval) for name in eval_splits)):
        rows, boxes = [], []
        for i in range(n):
            w, h = SIZES[i % len(SIZES)]
            label = i % N_CLASSES
            image_id = f"{split}/{label}/{i:06d}.jpg"
            slot = None if unique is None else i % unique
            if slot in drawn:
                jpeg_bytes, (w, h, x0, y0, x1, y1) = drawn[slot]
                atomic_write_bytes(out / "images" / image_id, jpeg_bytes)
                rows.append({"image_id": image_id, "width": w, "height": h, "label": label})
                boxes.append({"image_id": image_id, "x0": x0, "y0": y0, "x1": min(x1, w - 1), "y1": min(y1, h - 1)})
                continue
            coarse = cv2.resize(rng.integers(0, 256, (h // 25 + 2, w // 25 + 2, 3), dtype=np.uint8), (w, h),
                                interpolation=cv2.INTER_CUBIC)
            image = np.clip(coarse.astype(np.int16) + rng.integers(-25, 26, (h, w, 3)), 0, 255).astype(np.uint8)
            x0, y0 = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
            x1, y1 = x0 + int(rng.integers(w // 4, w // 2)), y0 + int(rng.integers(h // 4, h // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            cv2.ellipse(image, (((x0 + x1) / 2, (y0 + y1) / 2), (x1 - x0, y1 - y0), label * 18.0), colour, -1)
            ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            atomic_write_bytes(out / "images" / image_id, jpeg.tobytes())
            if slot is not None and split == "train":
                drawn[slot] = jpeg.tobytes(), (w, h, x0, y0, x1, y1)
            rows.append({"image_id": image_id, "width": w, "height": h, "label": label})
            boxes.append({"image_id": image_id, "x0": x0, "y0": y0, "x1": min(x1, w - 1), "y1": min(y1, h - 1)})
        write_split(out / split, SplitMetadata(split, pl.DataFrame(rows), pl.DataFrame(boxes)))
    write_class_names(out / "class_names.txt", [f"class{c}" for c in range(N_CLASSES)])
    return out


class Timer(Callback):
    """Stops the fit after ``warmup + steps`` training batches and times the last ``steps``
    (synchronising the GPU at both ends)."""

    order = 100

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.seen, self.images = warmup, steps, 0, 0
        self.start = self.stop = None

    def after_batch(self) -> None:
        if not self.training:
            return
        self.seen += 1
        if self.seen > self.warmup:
            self.images += len(self.yb[0])
        if self.seen in (self.warmup, self.warmup + self.steps):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            if self.seen == self.warmup:
                self.start = time.perf_counter()
            else:
                self.stop = time.perf_counter()
                raise CancelFitException()


def run_once(args: argparse.Namespace, data: Path) -> dict:
    """One training + extraction measurement in this process."""
    import torchvision

    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.cam import extract_cams
    from inatloc_nb.training.learner import build_learner
    from inatloc_nb.training.prepared import prepare_dataset
    from inatloc_nb.training.run_config import RunConfig

    dataset = WSOLDataset.from_folder(data, image_root=data / "images")
    level = dataset.levels[0]
    prepared = None
    if args.prepared:
        prepared = data / "prepared"
        prepare_dataset(dataset, prepared, args.image_size, progress=False)
    learn = build_learner(dataset, RunConfig(
        data=str(data), level=level, lr=1e-3, backbone=args.backbone, pretrained=False, image_size=args.image_size,
        batch_size=args.batch_size, device=args.device, num_workers=args.workers, amp=args.amp,
        channels_last=args.channels_last, compile=args.compile, prepared=prepared and str(prepared), schedule=1,
    ))
    timer = Timer(args.warmup, args.steps)
    with learn.added_cbs(timer), learn.no_bar(), learn.no_logging():
        learn.fit(1)
    if timer.stop is None:
        raise SystemExit(f"the training set ended before {args.warmup + args.steps} batches; raise --images")
    train_s = timer.stop - timer.start
    start = time.perf_counter()
    cams = extract_cams(learn, dataset, "val", level)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    cam_s = time.perf_counter() - start
    device = torch.device(learn.device_settings.device)
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "cuda": torch.version.cuda},
        "settings": {
            "backbone": args.backbone, "batch_size": args.batch_size, "image_size": args.image_size,
            "workers": learn.dls.train.fake_l.num_workers, **{k: v for k, v in learn.device_settings.to_dict().items()
                                                      if k != "device"},
            "decode": "prepared copy (uint8 arrays)" if prepared else "PIL (JPEG files)",
            "runs_packed": args.runs,
        },
        "train": {"images": timer.images, "seconds": train_s, "images_per_s": timer.images / train_s,
                  "window": [timer.start, timer.stop]},
        "cam_extraction": {"images": len(cams), "seconds": cam_s, "images_per_s": len(cams) / cam_s},
        "peak_gpu_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }


def run_packed(args: argparse.Namespace, data: Path) -> dict:
    """``args.runs`` copies of this script at once, each with its share of the cores."""
    from inatloc_nb.core.env import LOADER_WORKERS_ENV
    from inatloc_nb.training.pipeline import available_cores, workers_per_run

    env = dict(os.environ)
    if args.workers is None and args.device != "cpu":
        env[LOADER_WORKERS_ENV] = str(workers_per_run(available_cores(), args.runs))
    command = [sys.executable, __file__, "--single", "--data", str(data), *_forward(args)]
    children = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(args.runs)]
    results = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode:
            raise SystemExit(f"a packed run failed (exit {child.returncode})")
        results.append(json.loads(out))
    windows = [r["train"]["window"] for r in results]
    overlap = min(w[1] for w in windows) - max(w[0] for w in windows)
    first = results[0]
    first["settings"]["runs_packed"] = args.runs
    return {**first, "runs": results, "aggregate": {
        "train_images_per_s_sum": sum(r["train"]["images_per_s"] for r in results),
        "cam_images_per_s_sum": sum(r["cam_extraction"]["images_per_s"] for r in results),
        "train_windows_overlap_s": overlap,
        "note": "sums of per-run rates; they measure packed throughput when the timed windows overlap",
    }}


def _forward(args: argparse.Namespace) -> list[str]:
    out = ["--backbone", args.backbone, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--runs", str(args.runs)]
    for name in ("device", "workers"):
        if getattr(args, name) is not None:
            out += [f"--{name}", str(getattr(args, name))]
    for name in ("amp", "channels_last", "compile"):
        value = getattr(args, name)
        if value is not None:
            out.append(f"--{'' if value else 'no-'}{name.replace('_', '-')}")
    if args.prepared:
        out.append("--prepared")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=200 if gpu else 1, help="timed training batches")
    p.add_argument("--warmup", type=int, default=20 if gpu else 1, help="untimed first batches")
    p.add_argument("--images", type=int, help="training images to generate (default: enough for the batches)")
    p.add_argument("--eval-images", type=int, default=5000 if gpu else 32, help="images whose CAMs are extracted")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--workers", type=int, help="data-loading workers (default: the pipeline's sizing)")
    for flag in ("amp", "channels-last", "compile"):
        p.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=None,
                       help="default: the device's (inatloc_nb.training.device)")
    p.add_argument("--prepared", action="store_true", help="read a prepared copy instead of the JPEG files")
    p.add_argument("--runs", type=int, default=1, help="packed runs at once on the device")
    p.add_argument("--workdir", type=Path, help="where to generate the images (default: a temporary folder)")
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--single", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.images is None:
        args.images = (args.warmup + args.steps) * args.batch_size
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.single:
        with contextlib.redirect_stdout(sys.stderr):  # progress bars; stdout carries the JSON
            result = run_once(args, args.data)
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp, contextlib.redirect_stdout(sys.stderr):
        data = write_jpeg_dataset(Path(tmp) / "jpegs", args.images, args.eval_images)
        result = run_packed(args, data) if args.runs > 1 else run_once(args, data)
    for block in (result, *result.get("runs", [])):
        block["train"].pop("window", None)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    s = result["settings"]
    print(f"{result['device']} {result['gpu'] or ''} torch {result['versions']['torch']} cuda {result['versions']['cuda']}")
    print(f"{s['backbone']} batch {s['batch_size']} at {s['image_size']} px; workers {s['workers']}, amp {s['amp']} "
          f"({s['amp_dtype']}), channels-last {s['channels_last']}, compile {s['compile']}, decode {s['decode']}, "
          f"runs packed {s['runs_packed']}")
    print(f"training:       {result['train']['images_per_s']:8.1f} images/s ({result['train']['images']} images)")
    print(f"CAM extraction: {result['cam_extraction']['images_per_s']:8.1f} images/s "
          f"({result['cam_extraction']['images']} images)")
    if "aggregate" in result:
        print(f"aggregate of {s['runs_packed']} runs: training {result['aggregate']['train_images_per_s_sum']:.1f} "
              f"images/s, CAMs {result['aggregate']['cam_images_per_s_sum']:.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
