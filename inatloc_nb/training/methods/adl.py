"""ADL (Choe & Shim, CVPR 2019): attention-based dropout layers inside the backbone.

An ADL layer is parameter-free and active only in training. From feature maps F it takes
the self-attention map A = mean over channels of F and, once per forward pass, multiplies F
either by the *drop mask* (1 where A < ``erase_threshold`` * max A, per image: the most
discriminative region is hidden), with probability ``drop_rate``, or by the *importance
map* sigmoid(A) otherwise. At evaluation it is the identity.

Placement, one rule for every backbone (``ADL_RULE``, stages as
:func:`inatloc_nb.training.surgery.backbone_stages` sees them): after the first block of the
second-to-last stage, and after the first and the last block of the last stage (the last
one acts on the final feature maps). On ResNet-50 that is the reference code's placement
(``_ADL_POSITION``: after ``layer3.0``, ``layer4.0`` and ``layer4.2``); ResNet-18: ``layer3.0``,
``layer4.0``, ``layer4.1``; ConvNeXt-T: ``stage2`` block 0, ``stage3`` blocks 0 and 2;
``tinycnn``, whose stages are single conv blocks: after its last two blocks.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from inatloc_nb.core import validate
from inatloc_nb.training.methods.base import WSOLMethod
from inatloc_nb.training.surgery import Stage, backbone_stages, insert_after_blocks

#: Where ADL layers go, in words (``adl_places`` implements it).
ADL_RULE = ("after the first block of the second-to-last stage and after the first and the last "
            "block of the last stage")


class AttentionDropout(nn.Module):
    """One ADL layer. ``last_choice`` records "drop" or "importance" for the last training pass."""

    def __init__(self, drop_rate: float, erase_threshold: float) -> None:
        super().__init__()
        self.drop_rate = validate.unit_interval(drop_rate, "method 'adl': drop_rate")
        self.erase_threshold = validate.unit_interval(erase_threshold, "method 'adl': erase_threshold")
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


def adl_places(features: nn.Module) -> list[tuple[Stage, int]]:
    """Where ADL layers go (``ADL_RULE``): ``(stage, block)`` pairs, in forward order, without
    repeats (a one-block last stage gets one layer)."""
    stages = backbone_stages(features, "adl")
    third, last = stages[-2], stages[-1]
    places = [(third, 0), (last, 0), (last, len(last) - 1)]
    return [p for n, p in enumerate(places) if p not in places[:n]]


def insert_adl(features: nn.Module, drop_rate: float, erase_threshold: float) -> list[AttentionDropout]:
    """Insert ADL layers into ``features`` after the blocks :func:`adl_places` names; return
    them in forward order."""
    return insert_after_blocks(features, adl_places(features),
                               lambda: AttentionDropout(drop_rate, erase_threshold))


class ADL(WSOLMethod):
    """CAM with attention-based dropout layers in the backbone."""

    name = "adl"
    defaults = {"drop_rate": 0.68, "erase_threshold": 0.93}

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        insert_adl(features, self.hparams["drop_rate"], self.hparams["erase_threshold"])
        return super().build_model(features, n_channels, n_classes)
