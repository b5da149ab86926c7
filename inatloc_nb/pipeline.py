"""The data pipeline of training and CAM extraction: protocol transforms, loader sizing and
a prepared copy of a dataset at training resolution.

Transforms (SPEC §5, as the reference code's ``transforms.Resize`` on PIL images): training
squish-resizes to ``256 / 224 * image_size``, crops ``image_size`` at random and flips with
p = 0.5; evaluation squish-resizes to ``image_size``. Resizing is PIL's bilinear filter
(which antialiases when shrinking), in fastai's ``Resize`` exactly as in torchvision's
``Resize`` on a PIL image. ImageNet mean/std normalisation runs on the batch, on the device.

Loaders: with a GPU, ``default_num_workers`` decoding processes (the cores this process may
use, ``os.sched_getaffinity``, shared between the runs packed on the machine, at most
``MAX_WORKERS``), pinned memory and ``PREFETCH_FACTOR`` batches prefetched per worker; the
uint8 batches are converted and normalised on the device. fastai starts its workers anew
for each pass over the data (so there are no persistent workers). On CPU-only machines
decoding stays in the main process.

Prepared copy (``prepare_dataset``, ``inatloc-nb prepare``): the squish-resize is
deterministic, so it is done once per image and stored as uint8 arrays, the training split at
``256 / 224 * image_size`` and the evaluation splits at ``image_size``. Loading from it skips
JPEG decoding and resizing and gives the same pixels (the same-size resize is the identity),
so training and CAMs are unchanged. The copy lives in a folder keyed by the dataset and the
size (``prepared_folder``). The training split is stored at the training side only: CAMs of
*training* images through loaders reading a copy are squished from that copy, not from the
original (not pixel-identical); extract those from loaders on the originals.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastai.vision.augment import FlipItem, RandomCrop, Resize, ResizeMethod

from inatloc_nb.errors import InatlocError

if TYPE_CHECKING:
    import torch
    from fastai.data.core import DataLoaders

    from inatloc_nb.data import WSOLDataset

#: Ratio of the training resize to the crop size (256 / 224 at the paper's resolution).
TRAIN_RESIZE_RATIO = 256 / 224
#: Most data-loading worker processes one run starts.
MAX_WORKERS = 16
#: Batches each worker prepares ahead.
PREFETCH_FACTOR = 4
#: Environment variable fixing the number of loader workers (a sweep packing several runs on
#: a machine sets it in each run's process so the runs share the cores).
WORKERS_ENV = "INATLOC_NB_LOADER_WORKERS"
#: Environment variable naming the prepared-copy cache root of runs whose config gives none
#: (a sweep's ``prepared:`` sets it for its runs).
PREPARED_ENV = "INATLOC_NB_PREPARED"
#: Version of the prepared-copy layout (``prepared.json``).
PREPARED_VERSION = 1
_PREPARED_INDEX = "prepared.json"


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

    from inatloc_nb.device import default_device

    fixed = os.environ.get(WORKERS_ENV)
    if fixed:
        try:
            value = int(fixed)
        except ValueError:
            value = -1
        if value < 0:
            raise InatlocError(f"${WORKERS_ENV} must be a non-negative integer, got {fixed!r}")
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
    prepared: PreparedImages | None = None,
) -> DataLoaders:
    """fastai ``DataLoaders`` of ``[path, class name]`` items with the protocol's transforms.

    ``vocab`` fixes the class order (vocab index = integer label). Images are decoded with
    ``inatloc_nb.images.open_image`` (errors name the image id relative to ``image_root``),
    or read from a ``prepared`` copy. Every training image is used each
    epoch (the last, incomplete batch is kept, as in the reference code's loader). Loader
    settings: ``loader_options`` with ``num_workers`` (default ``default_num_workers``).
    """
    import torch
    from fastai.data.block import CategoryBlock, DataBlock
    from fastai.data.transforms import IndexSplitter, Normalize
    from fastai.vision.core import imagenet_stats
    from fastai.vision.data import ImageBlock

    from inatloc_nb.images import fastai_image_block

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


# --- prepared copy ---------------------------------------------------------------------------


def dataset_key(dataset: WSOLDataset) -> str:
    """``<name>-<hash>``: the hash covers the image root and every split's image ids, so a
    changed dataset never reuses a stale copy."""
    digest = hashlib.sha1(str(dataset.image_root).encode())
    for split in sorted(dataset.splits):
        digest.update(f"\n{split}\n".encode())
        digest.update("\n".join(dataset.images(split)["image_id"].to_list()).encode())
    return f"{dataset.name}-{digest.hexdigest()[:10]}"


def prepared_folder(cache_root: str | Path, dataset: WSOLDataset, image_size: int) -> Path:
    """``cache_root/<dataset_key>-<image_size>px``: where the prepared copy of ``dataset`` lives."""
    return Path(cache_root) / f"{dataset_key(dataset)}-{image_size}px"


def split_side(split: str, image_size: int) -> int:
    """Stored side of ``split`` in a prepared copy: the training resize for ``train``,
    ``image_size`` for evaluation splits."""
    return train_side(image_size) if split == "train" else image_size


def load_resized(path: str | Path, side: int) -> np.ndarray:
    """The image at ``path`` in RGB, squish-resized to ``side`` x ``side`` with PIL's
    bilinear filter (fastai's ``Resize``), as a (side, side, 3) uint8 array."""
    from PIL import Image

    from inatloc_nb.images import open_image

    return np.asarray(open_image(path).resize((side, side), Image.Resampling.BILINEAR))


def _load_task(task: tuple[str, int]) -> np.ndarray:
    return load_resized(*task)


def prepare_dataset(
    dataset: WSOLDataset,
    cache_root: str | Path,
    image_size: int = 224,
    splits: Sequence[str] | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write the prepared copy of ``dataset`` (every split, or ``splits``) under ``cache_root``
    and return its folder (``prepared_folder``); an existing complete copy is reused.

    Each split becomes ``<split>.npy``, (N, side, side, 3) uint8 in ``dataset.images(split)``
    order (side: ``split_side``); ``prepared.json`` lists the sides and image ids. Images are
    decoded by ``workers`` processes (default: the available cores). The copy is written in a
    temporary folder renamed into place, so readers never see a partial copy.
    """
    import multiprocessing

    from inatloc_nb.progress import track

    from inatloc_nb.io import atomic_write_json

    if image_size < 1:
        raise InatlocError(f"image_size must be at least 1, got {image_size}")
    splits = list(dataset.splits) if splits is None else list(splits)
    unknown = [s for s in splits if s not in dataset.splits]
    if unknown:
        raise InatlocError(f"dataset {dataset.name!r} has no split {unknown[0]!r} (splits: {', '.join(dataset.splits)})")
    if dataset.image_root is None:
        raise InatlocError(f"dataset {dataset.name!r} has no image root; give one to prepare a copy")
    target = prepared_folder(cache_root, dataset, image_size)
    existing = _read_index(target) if (target / _PREPARED_INDEX).is_file() else None
    if existing is not None and set(splits) <= set(existing["splits"]):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    index: dict[str, Any] = {"version": PREPARED_VERSION, "dataset": dataset.name,
                             "image_size": image_size, "splits": {}}
    n_workers = available_cores() if workers is None else workers
    if n_workers < 1:
        raise InatlocError(f"prepare_dataset needs at least 1 worker, got {workers}")
    try:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(n_workers) if n_workers > 1 else _InProcess() as pool:
            for split in splits:
                ids = dataset.images(split)["image_id"].to_list()
                side = split_side(split, image_size)
                array = np.lib.format.open_memmap(tmp / f"{split}.npy", mode="w+", dtype=np.uint8,
                                                  shape=(len(ids), side, side, 3))
                tasks = [(str(dataset.image_path(i)), side) for i in ids]
                rows = pool.imap(_load_task, tasks, chunksize=16)
                for row, pixels in enumerate(track(rows, total=len(ids), desc=f"prepare {split}",
                                                   unit="img", show=progress)):
                    array[row] = pixels
                array.flush()
                del array
                index["splits"][split] = {"side": side, "image_ids": ids}
        atomic_write_json(tmp / _PREPARED_INDEX, index)
        if target.exists():  # a copy of fewer splits is replaced
            shutil.rmtree(target)
        os.rename(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


class _InProcess:
    """A ``multiprocessing.Pool`` stand-in that maps in this process (one worker)."""

    def __enter__(self) -> _InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap(fn: Any, tasks: Sequence, chunksize: int = 1) -> Any:
        return map(fn, tasks)


def _read_index(folder: Path) -> dict[str, Any]:
    path = folder / _PREPARED_INDEX
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InatlocError(f"{path}: unreadable prepared-copy index ({exc}); delete {folder} and prepare again") from exc
    if index.get("version") != PREPARED_VERSION:
        raise InatlocError(f"{path}: prepared copy of layout version {index.get('version')}, expected "
                           f"{PREPARED_VERSION}; delete {folder} and prepare again")
    return index


def open_prepared(cache_root: str | Path, dataset: WSOLDataset, image_size: int) -> PreparedImages:
    """The prepared copy of every split of ``dataset`` at ``image_size`` under ``cache_root``;
    ``InatlocError`` saying how to make it when it is missing."""
    folder = prepared_folder(cache_root, dataset, image_size)
    if not (folder / _PREPARED_INDEX).is_file():
        raise InatlocError(f"no prepared copy of dataset {dataset.name!r} at {image_size} px under {cache_root} "
                           f"(expected {folder}); make it with `inatloc-nb prepare`")
    return PreparedImages(folder, dataset, image_size, list(dataset.splits))


class PreparedImages:
    """``get_x`` of the loaders reading a prepared copy: maps an item ``[path, label]`` to the
    stored (side, side, 3) uint8 array of that image. Arrays are memory-mapped lazily in
    each process (the object pickles to loader workers without its maps)."""

    def __init__(self, folder: str | Path, dataset: WSOLDataset, image_size: int, splits: Sequence[str]):
        self.folder, self.image_size, self.splits = Path(folder), image_size, list(splits)
        index = _read_index(self.folder)
        if index["image_size"] != image_size:
            raise InatlocError(f"{self.folder}: prepared at {index['image_size']} px, the run uses {image_size} px")
        self.rows: dict[str, tuple[str, int]] = {}
        for split in splits:
            stored = index["splits"].get(split)
            if stored is None:
                raise InatlocError(f"{self.folder}: split {split!r} is not prepared; run "
                                   f"`inatloc-nb prepare` for it (prepared: {', '.join(index['splits'])})")
            if stored["image_ids"] != dataset.images(split)["image_id"].to_list():
                raise InatlocError(f"{self.folder}: split {split!r} does not hold the dataset's images; prepare again")
            for row, image_id in enumerate(stored["image_ids"]):
                self.rows[str(dataset.image_path(image_id))] = (split, row)
        self._arrays: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": {}}

    def array(self, split: str) -> np.ndarray:
        """The stored (N, side, side, 3) uint8 array of ``split``, memory-mapped."""
        array = self._arrays.get(split)
        if array is None:
            array = self._arrays[split] = np.load(self.folder / f"{split}.npy", mmap_mode="r")
        return array

    def holds(self, split: str) -> bool:
        """Whether ``split`` is stored at the run's image size (evaluation splits are, the
        training split at its larger training side), so its loader's pixels are the stored ones."""
        return split in self.splits and split_side(split, self.image_size) == self.image_size

    def __call__(self, item: Sequence) -> np.ndarray:
        try:
            split, row = self.rows[str(item[0])]
        except KeyError:
            raise InatlocError(f"{item[0]} is not in the prepared copy {self.folder}") from None
        return np.array(self.array(split)[row])


__all__ = [
    "MAX_WORKERS",
    "PREFETCH_FACTOR",
    "PREPARED_ENV",
    "PreparedImages",
    "EvalResize",
    "TRAIN_RESIZE_RATIO",
    "TrainResize",
    "WORKERS_ENV",
    "available_cores",
    "dataset_key",
    "default_num_workers",
    "load_resized",
    "loader_options",
    "open_prepared",
    "prepare_dataset",
    "prepared_folder",
    "protocol_dataloaders",
    "protocol_item_tfms",
    "set_prefetch",
    "split_side",
    "train_side",
    "workers_per_run",
]
