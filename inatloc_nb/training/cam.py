"""Class activation maps of a trained model: extraction, the native-resolution store, scoring.

``extract_cams`` runs the evaluation split through the model once (batched, no gradients,
autocast off, float32) with a fastai hook on ``model.features``: the logits give the top-1
prediction and the hooked feature maps give the CAM of each image's ground-truth class at the
training level (or of any other class on request). The raw CAMs are kept at the network's own
resolution (e.g. 28 x 28 for the paper's ResNet-50) in float32, in a ``CamSet``.

Every consumer (scoring, baselines, analysis measures, explorers, plots, ``inatloc-nb
evaluate``) turns raw maps into evaluation maps with one function,
:func:`inatloc_nb.metrics.scoremaps.evaluation_maps`:
the raw float32 map widened to float64 (the reference's ``t2n``: ``.astype(np.float)``), then
``cv2.resize(raw, (224, 224), interpolation=cv2.INTER_CUBIC)`` and ``normalize_scoremap`` in
float64, as the reference protocol does. Since the stored maps are the raw float32 values,
scores are identical, bit for bit, whether maps are scored straight after extraction or read
back from disk.

On disk (``CamSet.save``) a CamSet is one uncompressed ``.npz`` (format version
:data:`CAM_FORMAT_VERSION`): the per-image metadata plus the raw maps in members of
:data:`STORE_CHUNK` images, so that scoring, analysis and the explorers read a split chunk by
chunk with memory that does not grow with the number of images.
"""
from __future__ import annotations

import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np

from inatloc_nb.core.atomic import atomic_path
from inatloc_nb.core.errors import InatlocError, ScoreMapError
from inatloc_nb.metrics.scoremaps import EVAL_SIZE, evaluation_maps

if TYPE_CHECKING:  # torch is imported where models run, so reading and scoring CAMs stays light
    import torch
    from fastai.learner import Learner
    from torch import Tensor, nn

    from inatloc_nb.core.progress import Show
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.metrics import BoxAccuracy, BoxAccuracyResult
    from inatloc_nb.training.methods import WSOLMethod

#: Version of the ``cams/<split>.npz`` layout written by ``CamSet.save``. Version 1 (no
#: ``format_version`` field) held 224 x 224 float16 normalised maps under ``maps``.
CAM_FORMAT_VERSION = 2
#: Raw maps per ``.npz`` member: the unit a reader loads at once.
STORE_CHUNK = 1024
#: Evaluation maps (224 x 224 float64, ~400 KB each) built and scored at a time.
SCORE_CHUNK = 256
_META = ("split", "level", "image_ids", "labels", "cam_classes", "predictions", "top1_logits")


class StoredMaps:
    """The raw maps of a ``.npz`` CamSet file, read lazily one stored chunk at a time.

    Indexing with an int or a step-1 slice reads only the chunks covering the rows (the last
    chunk read is kept); ``np.asarray(stored)`` reads everything.
    """

    def __init__(self, path: Path, n_images: int, map_shape: tuple[int, int], chunk: int):
        self.path, self.chunk = Path(path), int(chunk)
        self.shape = (int(n_images), *map_shape)
        self.dtype = np.dtype(np.float32)
        self._cached: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def _chunk(self, index: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != index:
            try:
                with np.load(self.path, allow_pickle=False) as z:
                    data = z[f"raw_{index:05d}"]
            except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise ScoreMapError(f"{self.path}: cannot read CAM chunk {index} ({exc}); "
                                    "the file is damaged, regenerate it by re-running the run") from exc
            self._cached = (index, data)
        return self._cached[1]

    def __getitem__(self, key: int | slice) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} maps")
            return self._chunk(row // self.chunk)[row % self.chunk]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("stored maps are read by row or by a step-1 slice")
        start, stop, _ = key.indices(len(self))
        parts = [self._chunk(c)[max(start - c * self.chunk, 0) : stop - c * self.chunk]
                 for c in range(start // self.chunk, -(-stop // self.chunk))] if stop > start else []
        return np.concatenate(parts) if parts else np.empty((0, *self.shape[1:]), np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self[:]
        return data if dtype is None else data.astype(dtype)


RawMaps = Union[np.ndarray, StoredMaps]


@dataclass
class CamSet:
    """CAMs of one split, in the row order of ``dataset.images(split)``.

    ``raw`` (N, h, w) float32 maps at the network's resolution (an array, or
    :class:`StoredMaps` read lazily from a file); ``labels`` the ground-truth class at
    ``level``; ``cam_classes`` the class each map was taken for (-1: not a class map);
    ``predictions`` / ``top1_logits`` the top-1 class and its logit (-1 / NaN for models
    that do not classify). Evaluation maps come from :meth:`maps`, :meth:`map` and
    :meth:`iter_maps`, all through :func:`evaluation_maps`.
    """

    split: str
    level: str
    image_ids: list[str]
    raw: RawMaps
    labels: np.ndarray
    cam_classes: np.ndarray
    predictions: np.ndarray
    top1_logits: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def top1(self) -> float:
        """Top-1 classification accuracy at ``level``, in percent."""
        return float(100 * np.mean(self.predictions == self.labels)) if len(self) else float("nan")

    def maps(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Evaluation maps (224 x 224 float64 in [0, 1]) of rows ``start:stop``."""
        return evaluation_maps(self.raw[start : len(self) if stop is None else stop])

    def map(self, row: int) -> np.ndarray:
        """The evaluation map (224, 224) of one row."""
        return self.maps(row, row + 1)[0]

    def iter_maps(self, chunk: int = SCORE_CHUNK) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, maps)`` over consecutive chunks of evaluation maps.

        The next chunk is read and upsampled on a background thread while the caller works
        on the current one, into two buffers used in turn: a chunk's array is overwritten
        once the caller asks for the next one (copy what you keep). Fresh arrays of this
        size would cost more in page faults than the upsampling itself."""
        from concurrent.futures import ThreadPoolExecutor

        side = (min(chunk, len(self)), EVAL_SIZE, EVAL_SIZE)
        buffers = [np.empty(side) for _ in range(min(2, -(-len(self) // chunk)))]  # one when one chunk does

        def fill(start: int, buffer: np.ndarray) -> np.ndarray:
            stop = min(start + chunk, len(self))
            return evaluation_maps(self.raw[start:stop], out=buffer[: stop - start])

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(fill, 0, buffers[0]) if len(self) else None
            for n, start in enumerate(range(0, len(self), chunk)):
                maps = pending.result()
                if start + chunk < len(self):
                    pending = pool.submit(fill, start + chunk, buffers[(n + 1) % 2])
                yield start, maps

    def save(self, path: str | Path, chunk: int = STORE_CHUNK) -> Path:
        """Write an ``.npz`` atomically (raw maps in members of ``chunk`` images), uncompressed:
        float32 CAMs deflate by ~7 % only, for 20x the writing time."""
        n, shape = len(self), tuple(self.raw.shape[1:])
        if len(self.raw) != n:
            raise InatlocError(f"CamSet of {self.split!r}: {len(self.raw)} maps for {n} image ids")
        arrays = {f"raw_{i // chunk:05d}": np.asarray(self.raw[i : i + chunk], dtype=np.float32)
                  for i in range(0, n, chunk)}
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                format_version=np.array(CAM_FORMAT_VERSION),
                n_images=np.array(n),
                map_shape=np.array(shape, dtype=np.int64),
                chunk=np.array(chunk),
                split=np.array(self.split),
                level=np.array(self.level),
                image_ids=np.array(self.image_ids, dtype=str),
                labels=np.asarray(self.labels, dtype=np.int64),
                cam_classes=np.asarray(self.cam_classes, dtype=np.int64),
                predictions=np.asarray(self.predictions, dtype=np.int64),
                top1_logits=np.asarray(self.top1_logits, dtype=np.float32),
                **arrays,
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CamSet:
        """Open a file written by ``save``: metadata now, raw maps lazily (:class:`StoredMaps`)."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if "format_version" not in z.files:
                    if "maps" in z.files:
                        raise ScoreMapError(
                            f"{path}: CAM file in the old format (224 x 224 float16 maps, before format "
                            f"version {CAM_FORMAT_VERSION}), which this version no longer reads. Regenerate "
                            "it: re-run the run into a new folder (`inatloc-nb train ...`, `inatloc-nb "
                            "baseline ...`, or the notebook that produced it)"
                        )
                    raise KeyError("format_version")
                version = int(z["format_version"])
                if version != CAM_FORMAT_VERSION:
                    raise ScoreMapError(f"{path}: CAM format version {version}; this inatloc-nb reads "
                                        f"version {CAM_FORMAT_VERSION}; regenerate the file or upgrade inatloc-nb")
                meta = {name: z[name] for name in _META}
                n, shape, chunk = int(z["n_images"]), tuple(int(s) for s in z["map_shape"]), int(z["chunk"])
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise ScoreMapError(f"{path}: not a CAM file written by CamSet.save ({exc}); delete the run "
                                "folder and run it again (a sweep reruns missing runs)") from exc
        if len(meta["image_ids"]) != n or len(shape) != 2:
            raise ScoreMapError(f"{path}: inconsistent CAM file ({len(meta['image_ids'])} ids, {n} maps)")
        return cls(
            split=str(meta["split"]),
            level=str(meta["level"]),
            image_ids=meta["image_ids"].tolist(),
            raw=StoredMaps(path, n, shape, chunk),
            labels=meta["labels"],
            cam_classes=meta["cam_classes"],
            predictions=meta["predictions"],
            top1_logits=meta["top1_logits"],
        )


def _uses_default_cams(method: WSOLMethod | None) -> bool:
    from inatloc_nb.training.methods import WSOLMethod

    return method is None or type(method).cams is WSOLMethod.cams


def _select_classes(
    target: str | np.ndarray, labels: Tensor, logits: Tensor, start: int
) -> Tensor:
    import torch

    if isinstance(target, str):
        return labels if target == "gt" else logits.argmax(1)
    return torch.as_tensor(target[start : start + len(labels)], device=labels.device)


def extract_cams(
    learner_or_model: Learner | nn.Module,
    dataset: WSOLDataset,
    split: str,
    level: str,
    target: Literal["gt", "top1"] | Sequence[int] | np.ndarray = "gt",
    method: WSOLMethod | None = None,
    image_size: int = 224,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    num_workers: int | None = None,
    progress: Show = True,
) -> CamSet:
    """Raw float32 CAMs of every image of ``split`` for its class at ``level``.

    ``target``: ``"gt"`` (the ground-truth class at ``level``), ``"top1"`` (the predicted
    class) or one class index per image. Given a fastai Learner, its loaders' evaluation
    transforms, device and ``learn.method`` are used; given a bare model, evaluation loaders
    are built with ``image_size``/``batch_size`` on ``device`` (default: the model's) and
    ``method`` (default: the model's own ``class_activation_maps``) supplies the maps.
    Autocast is disabled throughout, so features, logits and maps are float32. ``progress``:
    a bar in terminals and notebooks, one line for the pass in logs (``True``), nothing
    (``False``) or the bar only (``"bars"``; ``inatloc_nb.core.progress.track``).
    """
    import torch
    from fastai.callback.hook import hook_output
    from torch import Tensor

    from inatloc_nb.core.progress import track
    from inatloc_nb.training import prepared
    from inatloc_nb.training.learner import build_dataloaders, labelled_items
    from inatloc_nb.training.models import prepare_for_device

    if split not in dataset.splits:
        raise InatlocError(f"dataset {dataset.name!r} has no split {split!r}")
    if isinstance(target, str) and target not in ("gt", "top1"):
        raise InatlocError(f"CAM target must be 'gt', 'top1' or class indices, got {target!r}")
    if hasattr(learner_or_model, "dls"):
        model, dls = learner_or_model.model, learner_or_model.dls
        method = getattr(learner_or_model, "method", method)
    else:
        model = learner_or_model
        if device is None:
            device = next(model.parameters()).device
        model = prepare_for_device(model, device)
        dls = build_dataloaders(
            dataset, level, image_size, batch_size, device=device, num_workers=num_workers
        )
    items = labelled_items(dataset, split, level)
    n = len(items)
    if not isinstance(target, str):
        target = np.asarray(target, dtype=np.int64)
        if target.shape != (n,):
            raise InatlocError(f"CAM target has shape {target.shape}; split {split!r} has {n} images")
    dl = dls.test_dl(items, with_labels=True, shuffle=False, drop_last=False)
    device_type = torch.device(dl.device).type if dl.device is not None else "cpu"
    copy = getattr(dls, "prepared", None)
    batches = (prepared.prepared_batches(dl, copy, split, items, dls.vocab) if copy is not None and copy.holds(split)
               else iter(dl))
    raws: list[np.ndarray] = []
    labels = np.empty(n, np.int64)
    cam_classes, predictions = np.empty_like(labels), np.empty_like(labels)
    top1_logits = np.empty(n, np.float32)
    default_cams = _uses_default_cams(method)
    was_training = model.training
    model.eval()
    start = 0

    def keep(done: tuple[tuple[Tensor, Tensor, Tensor], Any, int, int]) -> None:
        """Store a batch's results once they are on the host."""
        (raw, ids, top_values), copied, first, last = done
        if copied is not None:
            copied.synchronize()
        raws.append(raw.numpy())
        labels[first:last], cam_classes[first:last], predictions[first:last] = ids.numpy()
        top1_logits[first:last] = top_values.numpy()
        bar.update(last - first)

    try:
        with torch.no_grad(), torch.autocast(device_type, enabled=False), hook_output(
            model.features, detach=True
        ) as hook, track(desc=f"CAMs of {split}", total=n, unit="img", show=progress) as bar:
            pending = None
            for xb, yb in batches:
                xb, yb = xb.as_subclass(Tensor).float(), yb.as_subclass(Tensor)  # drop fastai tensor types
                if device_type == "cuda":
                    xb = xb.contiguous(memory_format=torch.channels_last)
                logits = model(xb).float()
                classes = _select_classes(target, yb, logits, start)
                if default_cams:
                    if hook.stored is None:
                        raise InatlocError(
                            f"{type(model).__name__}.forward does not call model.features; "
                            "its method must override WSOLMethod.cams"
                        )
                    raw = model.class_activation_maps(hook.stored.as_subclass(Tensor).float(), classes)
                else:
                    raw = method.cams(model, xb, classes)
                top = logits.max(1)
                results = (raw.float(), torch.stack([yb.to(classes.device), classes, top.indices]), top.values)
                copied = None
                if device_type == "cuda":  # to pinned host memory without waiting: the GPU goes on
                    results = tuple(t.to("cpu", non_blocking=True) for t in results)  # with the next batch
                    copied = torch.cuda.Event()
                    copied.record()
                else:
                    results = tuple(t.cpu() for t in results)
                if pending is not None:
                    keep(pending)
                pending = results, copied, start, start + len(xb)
                start += len(xb)
            if pending is not None:
                keep(pending)
    finally:
        model.train(was_training)
    return CamSet(
        split=split,
        level=level,
        image_ids=dataset.images(split)["image_id"].to_list(),
        raw=np.concatenate(raws) if raws else np.empty((0, 1, 1), np.float32),
        labels=labels,
        cam_classes=cam_classes,
        predictions=predictions,
        top1_logits=top1_logits,
    )


def check_split_ids(cams: CamSet, dataset: WSOLDataset) -> None:
    """Raise ScoreMapError unless ``cams`` holds exactly the images of its split, in order."""
    expected = dataset.images(cams.split)["image_id"].to_list()
    if cams.image_ids != expected:
        extra = sorted(set(cams.image_ids) ^ set(expected))
        raise ScoreMapError(
            f"CAMs of split {cams.split!r} do not match the dataset's images "
            f"(differing ids: {extra[:5] or 'none; the order differs'})"
        )


def accumulate(cams: CamSet, gt_boxes: Sequence[np.ndarray], accuracy: BoxAccuracy | None = None,
               chunk: int = SCORE_CHUNK) -> BoxAccuracy:
    """Add the evaluation maps of ``cams`` (one (n_i, 4) box array per row on the 224 grid) to a
    MaxBoxAccV2 accumulator (new by default), ``chunk`` maps at a time: memory does not grow
    with the number of images beyond the accumulator's per-image bits."""
    from inatloc_nb.metrics import BoxAccuracy

    if len(gt_boxes) != len(cams):
        raise ScoreMapError(f"got {len(gt_boxes)} ground-truth box arrays for {len(cams)} CAMs of {cams.split!r}")
    accuracy = BoxAccuracy() if accuracy is None else accuracy
    for start, maps in cams.iter_maps(chunk):
        accuracy.update(maps, gt_boxes[start : start + len(maps)])
    return accuracy


def score_cams(
    cams: CamSet,
    dataset: WSOLDataset,
    iou_thresholds: Sequence[int] = (30, 50, 70),
    chunk: int = SCORE_CHUNK,
) -> BoxAccuracyResult:
    """MaxBoxAccV2 (``BoxAccuracy``) of ``cams`` against ``dataset.gt_boxes(cams.split)``,
    streamed ``chunk`` evaluation maps at a time."""
    from inatloc_nb.metrics import BoxAccuracy

    check_split_ids(cams, dataset)
    accuracy = BoxAccuracy(iou_thresholds=tuple(iou_thresholds))
    return accumulate(cams, dataset.gt_boxes(cams.split), accuracy, chunk).compute()
