"""The data pipeline of training and CAM extraction: protocol transforms and loader sizing.

Transforms (docs/protocol.md, as the reference code's ``transforms.Resize`` on PIL images):
training squish-resizes to ``256 / 224 * image_size``, crops ``image_size`` at random and
flips with p = 0.5; evaluation squish-resizes to ``image_size``. Resizing is PIL's bilinear filter
(which antialiases when shrinking), in fastai's ``Resize`` exactly as in torchvision's
``Resize`` on a PIL image. ImageNet mean/std normalisation runs on the batch, on the device.

Loaders: with a GPU, ``default_num_workers`` decoding processes (the cores this process may
use, ``os.sched_getaffinity``, shared between the runs packed on the machine, at most
``MAX_WORKERS``), pinned memory and ``PREFETCH_FACTOR`` batches prefetched per worker; the
uint8 batches are converted and normalised on the device. fastai starts its workers anew
for each pass over the data (so there are no persistent workers). On CPU-only machines
decoding stays in the main process.

The prepared copy of a dataset that loaders may read instead of the images is in
:mod:`inatloc_nb.training.prepared`.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastai.vision.augment import FlipItem, RandomCrop, Resize, ResizeMethod

from inatloc_nb.core.env import LOADER_WORKERS_ENV
from inatloc_nb.core.errors import InatlocError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from fastai.data.core import DataLoaders

#: Ratio of the training resize to the crop size (256 / 224 at the paper's resolution).
TRAIN_RESIZE_RATIO = 256 / 224
#: Most data-loading worker processes one run starts.
MAX_WORKERS = 16
#: Batches each worker prepares ahead.
PREFETCH_FACTOR = 4


def train_side(image_size: int) -> int:
    """Side of the training squish-resize: ``round(256 / 224 * image_size)``."""
    return round(TRAIN_RESIZE_RATIO * image_size)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the CPU count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def workers_per_run(cores: int, runs: int, cap: int = MAX_WORKERS) -> int:
    """Loader workers for each of ``runs`` runs sharing ``cores`` cores: an equal share, at
    least 1, at most ``cap``."""
    if runs < 1:
        raise InatlocError(f"the number of runs sharing the cores must be at least 1, got {runs}")
    return max(1, min(cap, cores // runs))


def default_num_workers(device: torch.device | str | None = None) -> int:
    """Data-loading worker processes for one run on ``device`` (default: CUDA when available).

    ``$INATLOC_NB_LOADER_WORKERS`` when set; otherwise on CUDA ``workers_per_run`` of the
    available cores for one run, and on CPU none: decoding in the main process leaves every
    core to the model.
    """
    import torch

    from inatloc_nb.training.device import default_device

    fixed = os.environ.get(LOADER_WORKERS_ENV)
    if fixed:
        try:
            value = int(fixed)
        except ValueError:
            value = -1
        if value < 0:
            raise InatlocError(f"${LOADER_WORKERS_ENV} must be a non-negative integer, got {fixed!r}")
        return value
    device = default_device() if device is None else torch.device(device)
    return workers_per_run(available_cores(), 1) if device.type == "cuda" else 0


def loader_options(num_workers: int, device: torch.device | str) -> dict[str, Any]:
    """Keyword arguments of fastai's ``DataLoader``: ``num_workers``, and pinned memory when
    batches go to a GPU. (fastai builds a new worker iterator every pass, so torch's
    ``persistent_workers`` would have no effect; ``set_prefetch`` sets the prefetch depth.)"""
    import torch

    if num_workers < 0:
        raise InatlocError(f"num_workers must be >= 0, got {num_workers}")
    return {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}


def set_prefetch(dl: Any, batches_per_worker: int = PREFETCH_FACTOR) -> None:
    """Let each worker of fastai loader ``dl`` prepare ``batches_per_worker`` batches ahead
    (fastai fixes torch's default of 2 on its internal loader)."""
    if batches_per_worker < 1:
        raise InatlocError(f"the prefetch depth must be at least 1, got {batches_per_worker}")
    dl.fake_l.prefetch_factor = batches_per_worker


class TrainResize(Resize):
    """fastai's ``Resize`` applied to the training split only. (A class of its own: fastai's
    ``DataBlock`` keeps one transform per class, so two plain ``Resize`` would merge.)"""

    split_idx = 0


class EvalResize(Resize):
    """fastai's ``Resize`` applied to the evaluation split only."""

    split_idx = 1


def protocol_item_tfms(image_size: int) -> list:
    """The protocol's item transforms, in the reference code's order: training squish-resizes
    to ``train_side(image_size)``, crops ``image_size`` at random, then flips with p = 0.5;
    evaluation squish-resizes to ``image_size``. Bilinear (PIL) resizing, as the reference code."""
    train_resize = TrainResize(train_side(image_size), method=ResizeMethod.Squish)
    eval_resize = EvalResize(image_size, method=ResizeMethod.Squish)
    flip = FlipItem(0.5)
    flip.order = RandomCrop.order + 1  # after the crop (fastai's default runs it first)
    # The resizes and RandomCrop share order 1; the (stable) sort keeps the resizes first.
    return [train_resize, eval_resize, RandomCrop(image_size), flip]


def protocol_dataloaders(
    train: Sequence[Sequence],
    valid: Sequence[Sequence],
    vocab: Sequence[str],
    image_size: int,
    batch_size: int,
    device: torch.device | str,
    num_workers: int | None = None,
    image_root: str | Path | None = None,
    prepared: Callable[[Sequence], np.ndarray] | None = None,
) -> DataLoaders:
    """fastai ``DataLoaders`` of ``[path, class name]`` items with the protocol's transforms.

    ``vocab`` fixes the class order (vocab index = integer label). Images are decoded with
    ``inatloc_nb.datasets.images.open_image`` (errors name the image id relative to ``image_root``),
    or read from a ``prepared`` copy (``inatloc_nb.training.prepared.PreparedImages``). Every training image is used each
    epoch (the last, incomplete batch is kept, as in the reference code's loader). Loader
    settings: ``loader_options`` with ``num_workers`` (default ``default_num_workers``).
    """
    import torch
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import IndexSplitter, Normalize
    from fastai.vision.core import imagenet_stats
    from fastai.vision.data import ImageBlock

    from inatloc_nb.datasets.images import fastai_image_block

    device = torch.device(device)
    block = DataBlock(
        blocks=(ImageBlock if prepared is not None else fastai_image_block(image_root),
                CategoryBlock(vocab=list(vocab), sort=False)),
        get_x=itemgetter(0) if prepared is None else prepared,
        get_y=itemgetter(1),
        splitter=IndexSplitter(range(len(train), len(train) + len(valid))),
        item_tfms=protocol_item_tfms(image_size),
        batch_tfms=[Normalize.from_stats(*imagenet_stats)],
    )
    workers = default_num_workers(device) if num_workers is None else num_workers
    dls = block.dataloaders(
        [*train, *valid], bs=batch_size, drop_last=False, device=device,
        **loader_options(workers, device),
    )
    for dl in dls.loaders:
        set_prefetch(dl)
    dls.prepared = prepared  # CAM extraction reads evaluation splits from it in whole batches
    return dls


__all__ = [
    "MAX_WORKERS",
    "PREFETCH_FACTOR",
    "EvalResize",
    "TRAIN_RESIZE_RATIO",
    "TrainResize",
    "available_cores",
    "default_num_workers",
    "loader_options",
    "protocol_dataloaders",
    "protocol_item_tfms",
    "set_prefetch",
    "train_side",
    "workers_per_run",
]
