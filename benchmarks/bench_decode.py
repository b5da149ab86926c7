"""Per-core speed of the data pipeline's CPU work: JPEG decode + resize + augment.

Generates JPEG files with iNaturalist-like sizes (``bench_training.write_jpeg_dataset``) and
times, in one process on one thread, every way of turning a file into a 224 x 224 training
crop (or a 224 x 224 evaluation image):

- ``fastai train item`` / ``fastai eval item``: the project's real loader path
  (``inatloc_nb.training.pipeline``: ``open_image``, squish-resize, random crop, flip, to tensor);
- ``PIL``: the same steps written directly on PIL (decode, bilinear resize to 256, crop, flip);
- ``PIL draft``: ``Image.draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT
  domain, but only when the reduced image stays at least as large as the target;
- ``OpenCV``: ``cv2.imdecode`` + ``cv2.resize`` (bilinear, no antialiasing: other pixels);
  ``cv2 IMREAD_REDUCED_COLOR_2`` decodes at half size (below 256 px here: it would upsample);
- ``torchvision decode_jpeg``: ``torchvision.io.decode_jpeg`` on the CPU + antialiased resize;
- ``prepared copy``: the real loader path reading the uint8 arrays of ``prepare_dataset``.

Each line says whether its pixels equal the protocol's (the reference code's PIL bilinear
resize). Rates are images per second of this process's CPU time (one thread), so they hold
on a machine busy with other work; ``--json`` prints one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_training import write_jpeg_dataset  # noqa: E402

TRAIN, CROP = 256, 224


def _crop_flip(array: np.ndarray) -> np.ndarray:
    top, left = random.randint(0, TRAIN - CROP), random.randint(0, TRAIN - CROP)
    out = array[top:top + CROP, left:left + CROP]
    return out[:, ::-1] if random.random() < 0.5 else out


def pil_train(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.ascontiguousarray(_crop_flip(np.asarray(im.convert("RGB").resize((TRAIN, TRAIN), Image.BILINEAR))))


def pil_draft_train(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.draft("RGB", (TRAIN, TRAIN))
        return np.ascontiguousarray(_crop_flip(np.asarray(im.convert("RGB").resize((TRAIN, TRAIN), Image.BILINEAR))))


def cv2_train(path: Path) -> np.ndarray:
    import cv2

    image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR_RGB)
    return np.ascontiguousarray(_crop_flip(cv2.resize(image, (TRAIN, TRAIN), interpolation=cv2.INTER_LINEAR)))


def cv2_reduced_decode(path: Path) -> np.ndarray:
    import cv2

    return cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)


def pil_decode(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def tv_train(path: Path) -> np.ndarray:
    import torch
    from torchvision.io import decode_jpeg, read_file
    from torchvision.transforms.v2 import functional as F

    image = F.resize(decode_jpeg(read_file(str(path))), [TRAIN, TRAIN], antialias=True)
    top, left = random.randint(0, TRAIN - CROP), random.randint(0, TRAIN - CROP)
    crop = image[:, top:top + CROP, left:left + CROP]
    return (torch.flip(crop, [-1]) if random.random() < 0.5 else crop).contiguous().numpy()


def _rate(fn, items, repeat: int) -> float:
    for item in items[:4]:
        fn(item)
    start = time.process_time()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return repeat * len(items) / (time.process_time() - start)


def _fastai_items(dataset, level: str, prepared: Path | None):
    from inatloc_nb.training.learner import build_dataloaders

    dls = build_dataloaders(dataset, level, CROP, 32, device="cpu", num_workers=0, prepared=prepared)
    out = {}
    for name, dl in (("train", dls.train), ("eval", dls.valid)):
        dl.before_iter()
        out[name] = (lambda i, dl=dl: dl.after_item(dl.create_item(i)), list(range(len(dl.dataset))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=60, help="JPEG files to generate")
    p.add_argument("--repeat", type=int, default=2, help="passes over the files per method")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import cv2
    import torch

    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.prepared import prepare_dataset

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    rates: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        data = write_jpeg_dataset(Path(tmp) / "jpegs", args.images, args.images)
        dataset = WSOLDataset.from_folder(data, image_root=data / "images")
        level = dataset.levels[0]
        files = [path for path, _ in dataset.items("train", level)]
        for name, fn, exact in (
            ("PIL decode only", pil_decode, None),
            ("PIL decode + resize 256 + crop + flip", pil_train, True),
            ("PIL draft + resize 256 + crop + flip", pil_draft_train, "only when draft cannot reduce"),
            ("OpenCV decode + resize 256 + crop + flip", cv2_train, False),
            ("OpenCV IMREAD_REDUCED_COLOR_2 decode only", cv2_reduced_decode, False),
            ("torchvision decode_jpeg (CPU) + resize 256 + crop + flip", tv_train, False),
        ):
            rates[name] = {"images_per_s": _rate(fn, files, args.repeat), "protocol_pixels": exact}
        for label, prepared in (("fastai", None), ("prepared copy, fastai", Path(tmp) / "prepared")):
            if prepared is not None:
                prepare_dataset(dataset, prepared, CROP, workers=1, progress=False)
            for split, (fn, items) in _fastai_items(dataset, level, prepared).items():
                rates[f"{label} {split} item"] = {"images_per_s": _rate(fn, items, args.repeat),
                                                  "protocol_pixels": True}
    sizes = sorted({(w, h) for w, h in dataset.images("train").select("width", "height").rows()})
    result = {"images": args.images, "image_sizes": sizes, "threads": 1, "clock": "process CPU time",
              "load_average": os.getloadavg(), "per_core": rates}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{args.images} JPEG files, sizes {sizes}; one thread, images per CPU-second "
          f"(load average {os.getloadavg()[0]:.1f})")
    for name, row in rates.items():
        print(f"{row['images_per_s']:8.1f} images/s  {name}  (protocol pixels: {row['protocol_pixels']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
