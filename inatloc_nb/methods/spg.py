"""SPG (Zhang et al., ECCV 2018): self-produced guidance from the network's own maps.

Besides the CAM classifier, three auxiliary heads predict a one-channel foreground map:
``head_b1`` on the output of the third-last backbone stage, ``head_b2`` on the second-last
one (they share their last layers, ``head_b_shared``) and ``head_c`` on the final feature
maps. During training each head is supervised, by per-pixel BCE, with a pixel mask made by
thresholding another map with a (low, high) pair: pixels above ``high`` are foreground,
below ``low`` background, in between ignored. As in the reference implementation used by
the paper (wsolevaluation, which supplies the Table A4 values):

- thresholds B1 (``delta_l_b1``, ``delta_h_b1``) cut the classifier's min-max normalised
  CAM for the target class (the seed) and supervise ``head_b2``;
- thresholds B2 (``delta_l_b2``, ``delta_h_b2``) cut sigmoid(``head_b2``) and supervise
  ``head_b1``;
- thresholds C (``delta_l_c``, ``delta_h_c``) cut the fused map
  (sigmoid(``head_b1``) + sigmoid(``head_b2``)) / 2 and supervise ``head_c``.

When no pixel of an image exceeds ``high``, 0.7 x its maximum is used instead (the original
minimum-foreground rule). Masks are made at the final feature-map resolution; the heads'
maps are resized there bilinearly. The CAM is the classifier's, as for plain CAM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from torch import Tensor, nn

from inatloc_nb.errors import InatlocError
from inatloc_nb.methods.base import WSOLMethod
from inatloc_nb.methods.guided import GuidedTraining, min_max_normalize
from inatloc_nb.models import CAMNet

#: Mask value of ignored pixels.
IGNORE = -1.0
#: Fallback foreground threshold, relative to the map's maximum.
FALLBACK_RATIO = 0.7


def guidance_mask(scores: Tensor, low: float, high: float) -> Tensor:
    """Pixel targets from ``scores`` (B, h, w): 1 above ``high``, 0 below ``low``, else ``IGNORE``."""
    peak = scores.flatten(1).max(1).values.view(-1, 1, 1)
    has_fg = (scores > high).flatten(1).any(1).view(-1, 1, 1)
    foreground = scores > torch.where(has_fg, torch.full_like(peak, high), peak * FALLBACK_RATIO)
    mask = torch.full_like(scores, IGNORE)
    mask[foreground] = 1.0
    mask[scores < low] = 0.0
    return mask


def guidance_loss(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean BCE-with-logits of ``logits`` against ``mask`` over its non-ignored pixels."""
    valid = mask != IGNORE
    total = F.binary_cross_entropy_with_logits(logits[valid], mask[valid], reduction="sum")
    return total / valid.sum().clamp_min(1)


def _conv_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU()]


class SPGNet(CAMNet):
    """CAMNet with SPG's auxiliary guidance heads (a guided model)."""

    def __init__(self, features: nn.Module, n_channels: int, n_classes: int,
                 thresholds: dict[str, float]) -> None:
        if not isinstance(features, nn.Sequential) or len(features) < 3:
            raise InatlocError("method 'spg' needs a backbone that is an nn.Sequential of at "
                               f"least 3 stages, got {type(features).__name__}")
        super().__init__(features, n_channels, n_classes)
        c1, c2 = _stage_channels(features)
        self.head_b1 = nn.Sequential(*_conv_relu(c1, c2))
        self.head_b2 = nn.Sequential(*_conv_relu(c2, c2))
        self.head_b_shared = nn.Sequential(*_conv_relu(c2, c2), nn.Conv2d(c2, 1, 1))
        self.head_c = nn.Sequential(*_conv_relu(n_channels, max(1, n_channels // 4)),
                                    nn.Conv2d(max(1, n_channels // 4), 1, 1))
        self.thresholds = dict(thresholds)
        self.target: Tensor | None = None
        self._outputs: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        f1 = self.features[:-2](x)
        f2 = self.features[-2](f1)
        feats = self.features[-1](f2)
        logits = self.classifier(torch.flatten(self.pool(feats), 1))
        size = feats.shape[-2:]

        def head(out: Tensor) -> Tensor:
            return F.interpolate(out, size=size, mode="bilinear", align_corners=False)[:, 0]

        labels = self.target if self.target is not None else logits.argmax(1)
        self._outputs = {
            "attention": min_max_normalize(self.class_activation_maps(feats.detach(), labels)),
            "b1": head(self.head_b_shared(self.head_b1(f1))),
            "b2": head(self.head_b_shared(self.head_b2(f2))),
            "c": head(self.head_c(feats)),
        }
        return logits

    def guidance_masks(self) -> dict[str, Tensor]:
        """The pixel masks supervising heads b2, b1 and c for the last training forward pass."""
        t, out = self.thresholds, self._outputs
        b2 = torch.sigmoid(out["b2"]).detach()
        fused = (torch.sigmoid(out["b1"]).detach() + b2) / 2
        return {
            "b2": guidance_mask(out["attention"], t["delta_l_b1"], t["delta_h_b1"]),
            "b1": guidance_mask(b2, t["delta_l_b2"], t["delta_h_b2"]),
            "c": guidance_mask(fused, t["delta_l_c"], t["delta_h_c"]),
        }

    def auxiliary_loss(self, target: Tensor) -> Tensor:
        """Sum of the three guidance losses for the last training forward pass."""
        masks = self.guidance_masks()
        return sum(guidance_loss(self._outputs[k], masks[k]) for k in ("b1", "b2", "c"))


@torch.no_grad()
def _stage_channels(features: nn.Sequential) -> tuple[int, int]:
    """Channels out of the third-last and second-last stages, from a small dry run."""
    was_training = features.training
    features.eval()
    param = next(features.parameters(), None)
    probe = torch.zeros(1, 3, 64, 64, device=None if param is None else param.device)
    f1 = features[:-2](probe)
    f2 = features[-2](f1)
    features.train(was_training)
    return f1.shape[1], f2.shape[1]


class SPG(WSOLMethod):
    """Self-produced guidance."""

    name = "spg"
    defaults = {"delta_l_b1": 0.02, "delta_h_b1": 0.03, "delta_l_b2": 0.05,
                "delta_h_b2": 0.47, "delta_l_c": 0.29, "delta_h_c": 0.36}

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        return SPGNet(features, n_channels, n_classes, self.hparams)

    def callbacks(self) -> list[Callback]:
        return [GuidedTraining()]
