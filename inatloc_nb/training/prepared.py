"""A prepared copy of a dataset at training resolution, read by the loaders instead of the images.

``prepare_dataset`` (``inatloc-nb prepare``): the squish-resize is deterministic, so it is done once per image and stored as uint8 arrays, the training split at
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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from fastai.callback.core import Callback

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.pipeline import available_cores, train_side

if TYPE_CHECKING:
    from torch import Tensor

    from inatloc_nb.datasets.dataset import WSOLDataset

#: Version of the prepared-copy layout (``prepared.json``).
PREPARED_VERSION = 1
_PREPARED_INDEX = "prepared.json"


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

    from inatloc_nb.datasets.images import open_image

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

    from inatloc_nb.core.progress import track

    from inatloc_nb.core.atomic import atomic_write_json

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


#: Images per batch of evaluation passes (CAMs, validation) read from a prepared copy on a GPU
#: (BatchNorm is in eval mode, so the batch size changes no map; on a CPU the run's own
#: batch size is kept).
CUDA_EVAL_BATCH = 256


def prepared_batches(dl: Any, copy: PreparedImages, split: str, items: Sequence[Sequence],
                     vocab: Sequence[str]) -> Iterator[tuple[Tensor, Tensor]]:
    """The batches of the evaluation loader ``dl`` over ``items`` (the images of ``split`` in
    order), read straight from the prepared copy's array instead of through the loader's
    per-image transforms: the same uint8 pixels (the evaluation resize of a stored image is
    the identity), the loader's own ``after_batch`` (to float, ImageNet normalisation) on its
    device. No worker processes are started, the next batch is read (and pinned) while the
    model runs on this one, and on a GPU batches are ``CUDA_EVAL_BATCH`` images. The random
    draw that starting ``dl`` would make is made, so a run's later random numbers do not depend
    on which way its evaluation batches were read."""
    import torch
    from concurrent.futures import ThreadPoolExecutor
    from fastai.torch_core import TensorCategory, TensorImage

    torch.empty((), dtype=torch.int64).random_()  # torch's DataLoader iterator draws its base seed
    device = torch.device(dl.device) if dl.device is not None else torch.device("cpu")
    pin = device.type == "cuda"
    size = _batch_size(dl)
    array = copy.array(split)
    o2i = {name: i for i, name in enumerate(vocab)}
    targets = torch.tensor([o2i[item[1]] for item in items], dtype=torch.int64)

    def read(start: int) -> tuple[Tensor, Tensor]:
        x = torch.from_numpy(np.array(array[start : start + size]))  # (B, H, W, C) as stored
        y = targets[start : start + size]
        # to (B, C, H, W): on the GPU after the copy (a strided copy costs the reading thread
        # 5x the read itself), on the CPU here; the same tensor either way
        return (x.pin_memory(), y.pin_memory()) if pin else (x.permute(0, 3, 1, 2).contiguous(), y)

    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(read, 0) if len(items) else None
        for start in range(0, len(items), size):
            x, y = ahead.result()
            ahead = reader.submit(read, start + size) if start + size < len(items) else None
            if pin:
                x = x.to(device, non_blocking=True).permute(0, 3, 1, 2).contiguous()
                y = y.to(device, non_blocking=True)
            yield dl.after_batch((TensorImage(x), TensorCategory(y)))


class PreparedValidation(Callback):
    """Makes fastai's validation pass over D_f (``dls.valid``) read :func:`prepared_batches`
    from the run's prepared copy instead of its loader: the same pixels, labels and
    ``after_batch`` in the same order, without per-image transforms or worker processes (on a
    GPU in batches of ``CUDA_EVAL_BATCH``). Used when the copy holds the split and its rows are
    the loader's items in order, and when the loader has worker processes: without them its
    item transforms draw from this process's random generators (fastai's ``RandTransform``
    draws even where it does not apply), which a pass over the copy would not, and the
    training that follows would change. Inside a fused group the shared loader is kept (one
    decode serves every run there)."""

    order = -5  # before any callback that reads ``learn.dl`` (progress bars)

    def __init__(self, split: str):
        self.split = split
        self._checked: tuple[Any, bool] | None = None  # (loader, whether the copy's rows are its items)

    def before_validate(self) -> None:
        from inatloc_nb.training.lockstep import active

        dl, copy = self.learn.dl, getattr(self.dls, "prepared", None)
        if (dl is not self.dls.valid or copy is None or active() is not None or dl.fake_l.num_workers == 0
                or not self._in_order(dl, copy)):
            return
        dl.randomize()  # what fastai's start of a pass does: the loader's own later passes stay the same
        dl.before_iter()
        self.learn.dl = _Pass(prepared_batches(dl, copy, self.split, dl.items, self.dls.vocab),
                              -(-len(dl.items) // _batch_size(dl)))

    def _in_order(self, dl: Any, copy: PreparedImages) -> bool:
        """Whether ``copy`` holds the split and its rows are ``dl``'s items in order (checked
        once per loader: every epoch validates on the same one)."""
        if self._checked is None or self._checked[0] is not dl:
            rows = [copy.rows.get(str(item[0])) for item in dl.items]
            self._checked = dl, copy.holds(self.split) and rows == [(self.split, i) for i in range(len(rows))]
        return self._checked[1]


class _Pass:
    """One validation pass as fastai iterates it: a length and the batches."""

    def __init__(self, batches: Iterator, n: int):
        self.batches, self.n = batches, n

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator:
        return self.batches


def _batch_size(dl: Any) -> int:
    import torch

    on_gpu = dl.device is not None and torch.device(dl.device).type == "cuda"
    return max(dl.bs, CUDA_EVAL_BATCH) if on_gpu else dl.bs


__all__ = [
    "CUDA_EVAL_BATCH",
    "PREPARED_VERSION",
    "PreparedValidation",
    "PreparedImages",
    "dataset_key",
    "load_resized",
    "open_prepared",
    "prepare_dataset",
    "prepared_batches",
    "prepared_folder",
    "split_side",
]
