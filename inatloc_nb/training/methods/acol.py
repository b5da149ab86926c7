"""ACoL (Zhang et al., CVPR 2018): adversarial complementary learning with two classifiers.

Two convolutional classifier branches share the backbone. Branch A classifies the feature
maps; its map for the target class (the label during training, the prediction otherwise)
is min-max normalised and every feature position where it reaches
``erase_threshold`` is zeroed; branch B classifies these erased features, so it must find
the object parts that A did not use. The loss is the sum of both cross-entropies. The CAM
is the element-wise maximum of both branches' normalised maps.

Each branch is conv3x3 (C -> C/2) - ReLU - conv3x3 (C/2 -> C/2) - ReLU - conv1x1
(C/2 -> classes), as in the original ResNet-50 ACoL (2048 -> 1024 -> 1024 -> classes);
logits are the spatial means of the class maps. As in the reference code (wsolevaluation),
the branches start He-initialised (Kaiming normal, fan out) with zero biases and train at
the backbone's LR (only the backbone's last stage gets 10x; see ``learner.param_groups``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from torch import Tensor, nn

from inatloc_nb.training.methods.base import WSOLMethod
from inatloc_nb.training.methods.guided import GuidedTraining, min_max_normalize
from inatloc_nb.training.models import init_convs


def _branch(n_channels: int, n_classes: int) -> nn.Sequential:
    hidden = max(1, n_channels // 2)
    return init_convs(nn.Sequential(
        nn.Conv2d(n_channels, hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(hidden, n_classes, 1),
    ), "he")


def erase_features(features: Tensor, attention: Tensor, threshold: float) -> Tensor:
    """Zero ``features`` (B, C, h, w) where min-max normalised ``attention`` (B, h, w) >= threshold."""
    keep = min_max_normalize(attention.detach()) < threshold
    return features * keep.unsqueeze(1).to(features.dtype)


class ACoLNet(nn.Module):
    """Backbone with the two complementary classifier branches of ACoL (a guided model)."""

    reference_fc = None  # the reference's classifier_A/B train at 1x

    def __init__(self, features: nn.Module, n_channels: int, n_classes: int,
                 erase_threshold: float) -> None:
        super().__init__()
        self.features = features
        self.classifier_a = _branch(n_channels, n_classes)
        self.classifier_b = _branch(n_channels, n_classes)
        self.erase_threshold = erase_threshold
        self.target: Tensor | None = None
        self._logits_b: Tensor | None = None

    def feature_maps(self, x: Tensor) -> Tensor:
        return self.features(x)

    def _branch_b(self, feats: Tensor, maps_a: Tensor, class_idx: Tensor) -> Tensor:
        rows = torch.arange(len(class_idx), device=feats.device)
        erased = erase_features(feats, maps_a[rows, class_idx], self.erase_threshold)
        return self.classifier_b(erased)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.features(x)
        maps_a = self.classifier_a(feats)
        logits = maps_a.mean((2, 3))
        if self.training:
            labels = self.target if self.target is not None else logits.argmax(1)
            self._logits_b = self._branch_b(feats, maps_a, labels).mean((2, 3))
        return logits

    def auxiliary_loss(self, target: Tensor) -> Tensor:
        """Branch B's cross-entropy for the last training forward pass."""
        return F.cross_entropy(self._logits_b, target)

    def class_activation_maps(self, feats: Tensor, class_idx: Tensor) -> Tensor:
        """max(normalised branch A map, normalised branch B map) for ``class_idx`` (B, h, w)."""
        rows = torch.arange(len(class_idx), device=feats.device)
        maps_a = self.classifier_a(feats)
        maps_b = self._branch_b(feats, maps_a, class_idx)
        return torch.maximum(min_max_normalize(maps_a[rows, class_idx]),
                             min_max_normalize(maps_b[rows, class_idx]))


class ACoL(WSOLMethod):
    """Adversarial complementary learning."""

    name = "acol"
    defaults = {"erase_threshold": 0.79}

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        return ACoLNet(features, n_channels, n_classes, self.hparams["erase_threshold"])

    def callbacks(self) -> list[Callback]:
        return [GuidedTraining()]
