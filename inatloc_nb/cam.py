"""Class activation maps of a trained model, their storage and their box-accuracy score.

``extract_cams`` runs the evaluation split through the model once (batched, no gradients,
mixed precision on CUDA) with a fastai hook on ``model.features``: the logits give the top-1
prediction and the hooked feature maps give the CAM of each image's ground-truth class at the
training level (or of any other class on request). Maps are upsampled bilinearly to
224 x 224 (on the model's device) and min-max normalised per image with the metric's
``normalize_scoremap`` (a constant map becomes all zeros), then stored as float16 in a
``CamSet``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inatloc_nb.errors import InatlocError, ScoreMapError
from inatloc_nb.io import atomic_path

if TYPE_CHECKING:
    from fastai.learner import Learner

    from inatloc_nb.data import WSOLDataset
    from inatloc_nb.methods import WSOLMethod
    from inatloc_nb.metrics import BoxAccuracyResult

#: Side of the evaluation grid of the WSOL protocol.
EVAL_SIZE = 224


@dataclass
class CamSet:
    """CAMs of one split, in the row order of ``dataset.images(split)``.

    ``maps`` (N, 224, 224) float16 in [0, 1]; ``labels`` the ground-truth class at ``level``;
    ``cam_classes`` the class each map was taken for; ``predictions`` / ``top1_logits`` the
    top-1 class and its logit.
    """

    split: str
    level: str
    image_ids: list[str]
    maps: np.ndarray
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

    def save(self, path: str | Path) -> Path:
        """Write an uncompressed ``.npz`` atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(
                f,
                split=np.array(self.split),
                level=np.array(self.level),
                image_ids=np.array(self.image_ids, dtype=str),
                maps=self.maps,
                labels=self.labels,
                cam_classes=self.cam_classes,
                predictions=self.predictions,
                top1_logits=self.top1_logits,
            )
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> CamSet:
        """Read a ``CamSet`` written by ``save``."""
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(
                    split=str(z["split"]),
                    level=str(z["level"]),
                    image_ids=z["image_ids"].tolist(),
                    maps=z["maps"],
                    labels=z["labels"],
                    cam_classes=z["cam_classes"],
                    predictions=z["predictions"],
                    top1_logits=z["top1_logits"],
                )
        except (OSError, KeyError, ValueError) as exc:
            raise ScoreMapError(f"{path}: not a CAM file written by CamSet.save ({exc})") from exc


def upsample_maps(maps: Tensor, size: int = EVAL_SIZE) -> Tensor:
    """Bilinear upsampling of (B, h, w) maps to (B, size, size)."""
    return F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _uses_default_cams(method: WSOLMethod | None) -> bool:
    from inatloc_nb.methods import WSOLMethod

    return method is None or type(method).cams is WSOLMethod.cams


def _select_classes(
    target: str | np.ndarray, labels: Tensor, logits: Tensor, start: int
) -> Tensor:
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
) -> CamSet:
    """CAMs of every image of ``split`` for its class at ``level``.

    ``target``: ``"gt"`` (the ground-truth class at ``level``), ``"top1"`` (the predicted
    class) or one class index per image. Given a fastai Learner, its loaders' evaluation
    transforms, device and ``learn.method`` are used; given a bare model, evaluation loaders
    are built with ``image_size``/``batch_size`` on ``device`` (default: the model's) and
    ``method`` (default: the model's own ``class_activation_maps``) supplies the maps.
    """
    from fastai.callback.hook import hook_output
    from fastprogress.fastprogress import progress_bar

    from inatloc_nb.learner import build_dataloaders, labelled_items
    from inatloc_nb.metrics.scoremaps import normalize_scoremap
    from inatloc_nb.models import prepare_for_device

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
    on_cuda = dl.device is not None and torch.device(dl.device).type == "cuda"
    maps = np.empty((n, EVAL_SIZE, EVAL_SIZE), dtype=np.float16)
    labels = np.empty(n, np.int64)
    cam_classes, predictions = np.empty_like(labels), np.empty_like(labels)
    top1_logits = np.empty(n, np.float32)
    default_cams = _uses_default_cams(method)
    was_training = model.training
    model.eval()
    start = 0
    try:
        with torch.no_grad(), torch.autocast("cuda", enabled=on_cuda), hook_output(
            model.features, detach=True
        ) as hook:
            for xb, yb in progress_bar(dl, leave=False):
                xb, yb = xb.as_subclass(Tensor), yb.as_subclass(Tensor)  # drop fastai tensor types
                if on_cuda:
                    xb = xb.contiguous(memory_format=torch.channels_last)
                logits = model(xb).float()
                classes = _select_classes(target, yb, logits, start)
                if default_cams:
                    if hook.stored is None:
                        raise InatlocError(
                            f"{type(model).__name__}.forward does not call model.features; "
                            "its method must override WSOLMethod.cams"
                        )
                    raw = model.class_activation_maps(hook.stored.as_subclass(Tensor), classes)
                else:
                    raw = method.cams(model, xb, classes)
                stop = start + len(xb)
                maps[start:stop] = normalize_scoremap(upsample_maps(raw).cpu().numpy())
                top = logits.max(1)
                labels[start:stop] = yb.cpu().numpy()
                cam_classes[start:stop] = classes.cpu().numpy()
                predictions[start:stop] = top.indices.cpu().numpy()
                top1_logits[start:stop] = top.values.cpu().numpy()
                start = stop
    finally:
        model.train(was_training)
    return CamSet(
        split=split,
        level=level,
        image_ids=dataset.images(split)["image_id"].to_list(),
        maps=maps,
        labels=labels,
        cam_classes=cam_classes,
        predictions=predictions,
        top1_logits=top1_logits,
    )


def score_cams(
    cams: CamSet,
    dataset: WSOLDataset,
    iou_thresholds: Sequence[int] = (30, 50, 70),
    chunk: int = 256,
) -> BoxAccuracyResult:
    """MaxBoxAccV2 (``BoxAccuracy``) of ``cams`` against ``dataset.gt_boxes(cams.split)``."""
    from inatloc_nb.metrics import BoxAccuracy

    expected = dataset.images(cams.split)["image_id"].to_list()
    if cams.image_ids != expected:
        extra = sorted(set(cams.image_ids) ^ set(expected))
        raise ScoreMapError(
            f"CAMs of split {cams.split!r} do not match the dataset's images "
            f"(differing ids: {extra[:5] or 'none; the order differs'})"
        )
    boxes = dataset.gt_boxes(cams.split)
    acc = BoxAccuracy(iou_thresholds=tuple(iou_thresholds))
    for start in range(0, len(cams), chunk):
        acc.update(cams.maps[start : start + chunk], boxes[start : start + chunk])
    return acc.compute()
