"""ADL (Choe & Shim, CVPR 2019): attention-based dropout layers inside the backbone.

An ADL layer is parameter-free and active only in training. From feature maps F it takes
the self-attention map A = mean over channels of F and, once per forward pass, multiplies F
either by the *drop mask* (1 where A < ``erase_threshold`` * max A, per image: the most
discriminative region is hidden), with probability ``drop_rate``, or by the *importance
map* sigmoid(A) otherwise. At evaluation it is the identity.

Placement: one ADL layer after each of the last two top-level stages of the backbone
(``layer3`` and ``layer4`` of a ResNet, where the original ResNet-50 recipe also puts them;
the last one acts on the final feature maps).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from inatloc_nb.errors import InatlocError
from inatloc_nb.methods.base import WSOLMethod

#: How many of the backbone's last top-level stages get an ADL layer after them.
N_ADL_STAGES = 2


class AttentionDropout(nn.Module):
    """One ADL layer. ``last_choice`` records "drop" or "importance" for the last training pass."""

    def __init__(self, drop_rate: float, erase_threshold: float) -> None:
        super().__init__()
        for label, value in (("drop_rate", drop_rate), ("erase_threshold", erase_threshold)):
            if not 0.0 <= value <= 1.0:
                raise InatlocError(f"method 'adl': {label} must be in [0, 1], got {value}")
        self.drop_rate, self.erase_threshold = drop_rate, erase_threshold
        self.last_choice: str | None = None

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        attention = x.mean(1, keepdim=True)
        if torch.rand(()) < self.drop_rate:
            self.last_choice = "drop"
            peak = attention.flatten(1).max(1).values.view(-1, 1, 1, 1)
            selected = (attention < peak * self.erase_threshold).to(x.dtype)
        else:
            self.last_choice = "importance"
            selected = torch.sigmoid(attention)
        return x * selected

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, erase_threshold={self.erase_threshold}"


def insert_adl(features: nn.Module, drop_rate: float, erase_threshold: float) -> list[AttentionDropout]:
    """Put an ADL layer after each of the last ``N_ADL_STAGES`` children of ``features``.

    ``features`` must be an ``nn.Sequential``; each chosen stage ``s`` becomes
    ``nn.Sequential(s, ADL)``. Returns the inserted layers.
    """
    if not isinstance(features, nn.Sequential) or len(features) < N_ADL_STAGES:
        raise InatlocError(
            f"method 'adl' needs a backbone that is an nn.Sequential of at least {N_ADL_STAGES} "
            f"stages, got {type(features).__name__}"
        )
    layers = []
    for index in range(len(features) - N_ADL_STAGES, len(features)):
        layer = AttentionDropout(drop_rate, erase_threshold)
        features[index] = nn.Sequential(features[index], layer)
        layers.append(layer)
    return layers


class ADL(WSOLMethod):
    """CAM with attention-based dropout layers in the backbone."""

    name = "adl"
    defaults = {"drop_rate": 0.68, "erase_threshold": 0.93}

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        insert_adl(features, self.hparams["drop_rate"], self.hparams["erase_threshold"])
        return super().build_model(features, n_channels, n_classes)
