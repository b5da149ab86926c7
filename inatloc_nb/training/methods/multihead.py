"""Hierarchical multi-head training: one backbone, one linear classifier per label level.

The model is CAM's (backbone, global average pooling) with a head ``classifier.<level>`` for
each level of ``levels`` (default: every named level with at least two classes that is the
training level or coarser). Training targets are the labels at the run's training level (the
finest of the heads, e.g. species); each coarser head's target is the ancestor of that label,
looked up in the hierarchy, so one dataset labelling trains every head. The loss is
``sum_l weights[l] * CE(head_l, target_l)`` (``weights``: one per level; default 1 / (number
of heads) each, which keeps the backbone's gradient scale, and so its learning rate, that of
one head).
Validation loss and accuracy are those of the training level's head.

CAMs (``cam_level``): the head of one level (the CAM of the image's ancestor at that level)
or ``"fused"`` (default), the mean over heads of the min-max normalised CAMs of the image's
ancestors at every head's level.

Composes with: ``cam`` (plain) and ``has`` (Hide-and-Seek only changes the input images),
chosen with ``base``. It refuses ``acol``, ``spg`` and ``adl`` (they replace the classifier
or the feature path with their own single-level modules) and ``cutmix`` (its mixed targets
have no single ancestor per head).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from torch import Tensor, nn

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.methods.base import WSOLMethod
from inatloc_nb.training.methods.guided import GuidedTraining, min_max_normalize
from inatloc_nb.training.methods.has import HaS, HideAndSeekCallback

if TYPE_CHECKING:
    from inatloc_nb.hierarchies.taxonomy import Hierarchy

#: ``base`` methods the multi-head model composes with.
COMPOSES_WITH = ("cam", "has")
#: CAM choice that averages the normalised maps of every head.
FUSED = "fused"


class MultiHeadNet(nn.Module):
    """Backbone -> GAP -> one linear head per level; ``forward`` returns the training level's logits.

    ``level_maps[l]`` (n_train_classes,) maps a training-level class to its class at level ``l``.
    """

    def __init__(self, features: nn.Module, n_channels: int, level_maps: dict[str, Tensor],
                 head_sizes: dict[str, int], train_level: str, weights: dict[str, float],
                 cam_level: str = FUSED) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.levels = tuple(level_maps)
        self.classifier = nn.ModuleDict({str(i): nn.Linear(n_channels, head_sizes[lv])
                                         for i, lv in enumerate(self.levels)})
        for i, level in enumerate(self.levels):
            self.register_buffer(f"level_map_{i}", level_maps[level].long())
        self.train_level, self.weights, self.cam_level = train_level, dict(weights), cam_level
        self.target: Tensor | None = None  # set by GuidedTraining; the loss takes the target itself
        self._head_logits: dict[str, Tensor] = {}

    def head(self, level: str) -> nn.Linear:
        """The linear classifier of ``level``."""
        return self.classifier[str(self.levels.index(level))]

    def level_map(self, level: str) -> Tensor:
        """Training-level class -> class index at ``level``."""
        return getattr(self, f"level_map_{self.levels.index(level)}")

    def feature_maps(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.flatten(self.pool(self.feature_maps(x)), 1)
        if not self.training:
            return self.head(self.train_level)(pooled)
        self._head_logits = {level: self.head(level)(pooled) for level in self.levels}
        return self._head_logits[self.train_level]

    def auxiliary_loss(self, target: Tensor) -> Tensor:
        """The weighted cross-entropies of the last training pass, less the training level's
        unit-weight term that fastai's loss already holds."""
        total = (self.weights[self.train_level] - 1.0) * F.cross_entropy(self._head_logits[self.train_level], target)
        for level in self.levels:
            if level != self.train_level:
                total = total + self.weights[level] * F.cross_entropy(
                    self._head_logits[level], self.level_map(level)[target])
        return total

    def head_cams(self, feats: Tensor, class_idx: Tensor, level: str) -> Tensor:
        """Raw CAMs (B, h, w) of ``level``'s head for the ancestors of ``class_idx`` (training level)."""
        weights = self.head(level).weight[self.level_map(level)[class_idx]]
        return torch.einsum("bc,bchw->bhw", weights.to(feats.dtype), feats)

    def class_activation_maps(self, feats: Tensor, class_idx: Tensor) -> Tensor:
        """CAMs of ``cam_level``'s head, or the mean of every head's normalised CAM (``fused``)."""
        if self.cam_level != FUSED:
            return self.head_cams(feats, class_idx, self.cam_level)
        return torch.stack([min_max_normalize(self.head_cams(feats, class_idx, level))
                            for level in self.levels]).mean(0)


def level_maps(hierarchy: Hierarchy, train_level: str, levels: Sequence[str]) -> dict[str, np.ndarray]:
    """For each of ``levels``: training-level class -> class at that level. Raises when a
    level is not the training level or coarser (a training class spanning two of its classes)."""
    train_idx = hierarchy.level_index(train_level)
    n_train = len(hierarchy.level_names(train_level))
    out = {}
    for level in levels:
        idx = hierarchy.level_index(level)
        mapping = np.full(n_train, -1, dtype=np.int64)
        mapping[train_idx] = idx
        if not np.array_equal(mapping[train_idx], idx):
            raise InatlocError(f"multihead: level {level!r} is finer than the training level {train_level!r} "
                               f"(a {train_level} class spans several {level} classes); train at the finest level")
        out[level] = mapping
    return out


class MultiHead(WSOLMethod):
    """CAM with one head per level and the sum of the per-level cross-entropies."""

    name = "multihead"
    defaults: dict[str, Any] = {"levels": None, "weights": None, "cam_level": FUSED, "base": "cam"}
    needs_hierarchy = True

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        base = self.hparams["base"]
        if base not in COMPOSES_WITH:
            why = ("its mixed targets have no single ancestor per head" if base == "cutmix" else
                   "it replaces the classifier or feature path with its own single-level modules")
            raise InatlocError(f"multihead composes with {', '.join(COMPOSES_WITH)} only, not {base!r}: {why}")
        self._bound: tuple[dict[str, np.ndarray], dict[str, int], str] | None = None

    def bind(self, hierarchy: Hierarchy, level: str) -> None:
        levels = self.hparams["levels"]
        if levels is None:
            levels = [lv for lv in hierarchy.levels if len(hierarchy.level_names(lv)) > 1]
            finest = hierarchy.level_index(level)
            levels = [lv for lv in levels if lv == level or _is_coarser(hierarchy, finest, lv)]
        levels = list(levels) if level in levels else [level, *levels]
        weights = self.hparams["weights"]
        if weights is None:
            weights = [1.0 / len(levels)] * len(levels)
        if len(weights) != len(levels) or any(float(w) < 0 for w in weights):
            raise InatlocError(f"multihead: weights {weights} must give one non-negative value per level {levels}")
        cam_level = self.hparams["cam_level"]
        if cam_level != FUSED and cam_level not in levels:
            raise InatlocError(f"multihead: cam_level {cam_level!r} is not one of the heads {levels} or 'fused'")
        maps = level_maps(hierarchy, level, levels)
        sizes = {lv: len(hierarchy.level_names(lv)) for lv in levels}
        self.hparams.update(levels=levels, weights=[float(w) for w in weights])
        self._bound = (maps, sizes, level)

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        if self._bound is None:
            raise InatlocError("multihead: call bind(hierarchy, level) before build_model (build_learner does)")
        maps, sizes, level = self._bound
        if sizes[level] != n_classes:
            raise InatlocError(f"multihead: {n_classes} classes given, the hierarchy has {sizes[level]} at {level!r}")
        weights = dict(zip(self.hparams["levels"], self.hparams["weights"], strict=True))
        return MultiHeadNet(features, n_channels, {lv: torch.as_tensor(m) for lv, m in maps.items()},
                            sizes, level, weights, self.hparams["cam_level"])

    def callbacks(self) -> list[Callback]:
        extra: list[Callback] = []
        if self.hparams["base"] == "has":
            extra.append(HideAndSeekCallback(**HaS.defaults))
        return [GuidedTraining(), *extra]


def _is_coarser(hierarchy: Hierarchy, finest: np.ndarray, level: str) -> bool:
    """Whether every class of the training labelling ``finest`` lies inside one ``level`` class."""
    idx = hierarchy.level_index(level)
    pairs = np.unique(np.stack([finest, idx]), axis=1)
    return len(np.unique(pairs[0])) == pairs.shape[1]
