"""ADL (Choe & Shim, CVPR 2019): attention-based dropout layers inside the backbone.

An ADL layer is parameter-free and active only in training. From feature maps F it takes
the self-attention map A = mean over channels of F and, once per forward pass, multiplies F
either by the *drop mask* (1 where A < ``erase_threshold`` * max A, per image: the most
discriminative region is hidden), with probability ``drop_rate``, or by the *importance
map* sigmoid(A) otherwise. At evaluation it is the identity.

Placement (``ADL_POSITIONS``), as the reference code's ResNet-50 (``_ADL_POSITION``): three
ADL layers, after block 0 of ``layer3`` and after blocks 0 and 2 of ``layer4`` (the last one
acts on the final feature maps). A backbone without ResNet stages (``tinycnn``) gets one ADL
layer after each of its last two top-level stages instead.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from inatloc_nb.errors import InatlocError
from inatloc_nb.methods.base import WSOLMethod

#: ResNet stage -> indices of the blocks followed by an ADL layer (the reference's placement).
ADL_POSITIONS: dict[str, tuple[int, ...]] = {"layer3": (0,), "layer4": (0, 2)}
#: Backbones without those stages: how many last top-level stages get an ADL layer after them.
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
    """Insert ADL layers into ``features`` (an ``nn.Sequential``) and return them, in order.

    When ``features`` has every stage of ``ADL_POSITIONS`` (a ResNet), each such stage is
    rebuilt as ``nn.Sequential`` of its blocks with an ADL layer after each listed block;
    otherwise each of the last ``N_ADL_STAGES`` children ``s`` becomes ``nn.Sequential(s, ADL)``.
    """
    if not isinstance(features, nn.Sequential) or len(features) < N_ADL_STAGES:
        raise InatlocError(
            f"method 'adl' needs a backbone that is an nn.Sequential of at least {N_ADL_STAGES} "
            f"stages, got {type(features).__name__}"
        )
    stages = dict(features.named_children())
    layers: list[AttentionDropout] = []
    if all(name in stages for name in ADL_POSITIONS):
        for name, positions in ADL_POSITIONS.items():
            blocks = list(stages[name].children())
            if max(positions) >= len(blocks):
                raise InatlocError(f"method 'adl': stage {name} has {len(blocks)} blocks, "
                                   f"an ADL layer goes after block {max(positions)}")
            rebuilt: list[nn.Module] = []
            for index, block in enumerate(blocks):
                rebuilt.append(block)
                if index in positions:
                    layers.append(AttentionDropout(drop_rate, erase_threshold))
                    rebuilt.append(layers[-1])
            setattr(features, name, nn.Sequential(*rebuilt))
        return layers
    for index in range(len(features) - N_ADL_STAGES, len(features)):
        layers.append(AttentionDropout(drop_rate, erase_threshold))
        features[index] = nn.Sequential(features[index], layers[-1])
    return layers


class ADL(WSOLMethod):
    """CAM with attention-based dropout layers in the backbone."""

    name = "adl"
    defaults = {"drop_rate": 0.68, "erase_threshold": 0.93}

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        insert_adl(features, self.hparams["drop_rate"], self.hparams["erase_threshold"])
        return super().build_model(features, n_channels, n_classes)
