"""SPG (Zhang et al., ECCV 2018): self-produced guidance from the network's own maps.

Besides the CAM classifier, three auxiliary heads predict a one-channel foreground map, laid
out as in the reference code's ResNet-50 SPG (wsolevaluation):

- ``head_b1`` reads the output of ``layer3`` block 0 (1024 channels), ``head_b2`` the
  output of ``layer3`` (1024 channels); both end in the shared ``head_b_shared``
  (conv3x3 - ReLU - conv1x1 to one channel);
- ``head_c`` reads the final feature maps (2048 -> 512 -> 1).

The taps follow one rule on every backbone (``spg_cuts``; stages as
:func:`inatloc_nb.training.surgery.backbone_stages` sees them): B1 reads the second-to-last stage
after its first block (the stage's input when it is a single block, so that B1 and B2
always read different depths), B2 that stage's output, C the last stage's. On ResNets that
is the reference's ``layer3`` block 0 / ``layer3`` / ``layer4``; ConvNeXt-T: ``stage2``
block 0 / ``stage2`` / ``stage3``; ``tinycnn``: the input and output of its second-to-last
conv block and its output. During training each head is supervised, by per-pixel
BCE, with a pixel mask made by thresholding another map with a (low, high) pair: pixels
above ``high`` are foreground, below ``low`` background, in between ignored:

- thresholds B1 (``delta_l_b1``, ``delta_h_b1``) cut the classifier's min-max normalised
  map for the target class (the seed) and supervise ``head_b2``;
- thresholds B2 (``delta_l_b2``, ``delta_h_b2``) cut sigmoid(``head_b2``) and supervise
  ``head_b1``;
- thresholds C (``delta_l_c``, ``delta_h_c``) cut the fused map
  (sigmoid(``head_b1``) + sigmoid(``head_b2``)) / 2 and supervise ``head_c``.

As in the reference, every map (the class map and the heads' logits) is first upsampled
bilinearly to the input resolution (224 x 224 in the protocol), and masks and losses are
computed there. When fewer than ``MIN_FOREGROUND`` pixels of an image exceed ``high``,
0.7 x its maximum is the foreground threshold instead. The classifier (the reference's
1 x 1 ``SPG_A4`` convolution, here the equivalent linear layer on pooled features) and the
heads start Xavier-uniform with zero biases. The CAM is the classifier's, as for plain CAM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from torch import Tensor, nn

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.methods.base import WSOLMethod
from inatloc_nb.training.methods.guided import GuidedTraining, min_max_normalize
from inatloc_nb.training.models import CAMNet, init_convs
from inatloc_nb.training.surgery import Stage, backbone_stages, cut_backbone

#: Mask value of ignored pixels.
IGNORE = -1.0
#: Fallback foreground threshold, relative to the map's maximum.
FALLBACK_RATIO = 0.7
#: Fewest pixels above ``high`` for ``high`` to be the foreground threshold (the reference's 30).
MIN_FOREGROUND = 30


def spg_cuts(features: nn.Module) -> list[tuple[Stage, int]]:
    """The cuts of ``features`` (``surgery.cut_backbone``) after which B1 and B2 read: the
    second-to-last stage after its first block (before it, for a one-block stage) and after
    its last block. Refuses a backbone with nothing before B1's tap."""
    stages = backbone_stages(features, "spg")
    tapped = stages[-2]
    first = 1 if len(tapped) > 1 else 0
    if first == 0 and tapped.index == 0:
        raise InatlocError("method 'spg' needs a backbone of at least 3 stages when its second-to-last "
                           f"stage is a single block, got {len(stages)}")
    return [(tapped, first), (tapped, len(tapped))]


def guidance_mask(scores: Tensor, low: float, high: float, min_foreground: int = MIN_FOREGROUND) -> Tensor:
    """Pixel targets from ``scores`` (B, h, w): 1 above ``high`` (above ``FALLBACK_RATIO`` x
    the image's maximum when fewer than ``min_foreground`` pixels exceed ``high``), 0 below
    ``low`` (which wins over foreground), else ``IGNORE``."""
    peak = scores.flatten(1).max(1).values.view(-1, 1, 1)
    enough = ((scores > high).flatten(1).sum(1) >= min_foreground).view(-1, 1, 1)
    foreground = scores > torch.where(enough, torch.full_like(peak, high), peak * FALLBACK_RATIO)
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

    reference_fc = None  # the reference's SPG classifier (SPG_A4) trains at 1x

    def __init__(self, features: nn.Module, n_channels: int, n_classes: int,
                 thresholds: dict[str, float]) -> None:
        cuts = spg_cuts(features)
        super().__init__(features, n_channels, n_classes)
        # kept outside the module tree: they only re-group ``features``' own modules
        self._parts = tuple(cut_backbone(features, cuts))
        c1, c2 = _tap_channels(self)
        self.head_b1 = nn.Sequential(*_conv_relu(c1, c2))
        self.head_b2 = nn.Sequential(*_conv_relu(c2, c2))
        self.head_b_shared = nn.Sequential(*_conv_relu(c2, c2), nn.Conv2d(c2, 1, 1))
        self.head_c = nn.Sequential(*_conv_relu(n_channels, max(1, n_channels // 4)),
                                    nn.Conv2d(max(1, n_channels // 4), 1, 1))
        for head in (self.head_b1, self.head_b2, self.head_b_shared, self.head_c):
            init_convs(head, "xavier")
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        self.thresholds = dict(thresholds)
        self.target: Tensor | None = None
        self._outputs: dict[str, Tensor] = {}

    def taps(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The maps branches B1 and B2 read and the final feature maps."""
        to_b1, to_b2, to_c = self._parts
        f1 = to_b1(x)
        f2 = to_b2(f1)
        return f1, f2, to_c(f2)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        f1, f2, feats = self.taps(x)
        logits = self.classifier(torch.flatten(self.pool(feats), 1))
        size = x.shape[-2:]

        def upsample(maps: Tensor) -> Tensor:
            return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)[:, 0]

        labels = self.target if self.target is not None else logits.argmax(1)
        cams = self.class_activation_maps(feats.detach(), labels)[:, None]
        self._outputs = {
            "attention": min_max_normalize(upsample(cams)),
            "b1": upsample(self.head_b_shared(self.head_b1(f1))),
            "b2": upsample(self.head_b_shared(self.head_b2(f2))),
            "c": upsample(self.head_c(feats)),
        }
        return logits

    def guidance_masks(self) -> dict[str, Tensor]:
        """The pixel masks supervising heads b2, b1 and c for the last training forward pass,
        at the input resolution."""
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
def _tap_channels(net: SPGNet) -> tuple[int, int]:
    """Channels of the maps branches B1 and B2 read, from a small dry run."""
    was_training = net.features.training
    net.features.eval()
    param = next(net.features.parameters(), None)
    probe = torch.zeros(1, 3, 64, 64, device=None if param is None else param.device)
    f1, f2, _ = net.taps(probe)
    net.features.train(was_training)
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
