"""Bridging the gap between classification and localization (Kim et al., CVPR 2022).

Source: E. Kim, S. Kim, J. Lee, H. Kim, S. Yoon, "Bridging the Gap between Classification
and Localization for Weakly Supervised Object Localization", CVPR 2022 (reference code:
github.com/ejkim47/bridging-gap-wsol). CAM is a dot product of features with the
classifier weights of a class; the method trains the features so that this product marks
the whole object, with three terms added to the cross-entropy:

- **similarity** (``sim_weight``): let s(p) be the cosine similarity between the feature
  vector at pixel p of the final maps and the classifier weight vector of the target class,
  and n(p) the per-image min-max normalised L2 norm of that feature vector. Pixels with
  n > ``fg_threshold`` are foreground, n < ``bg_threshold`` background; the loss is
  mean_bg(s) - mean_fg(s), pulling object features towards the class weights and pushing
  background features away;
- **norm** (``norm_weight``): with foreground now s > 0 and background s < 0, the loss
  mean_bg(n) - mean_fg(n) makes features of class-like pixels large and of others small
  (the reference uses the target class on ImageNet and the best-matching class on CUB; this
  module uses the target class everywhere);
- **attentive dropout** (``drop_weight``): the final stage is split after its first block;
  the channel-mean attention of that block's output is thresholded at ``drop_threshold`` x
  its per-image maximum, and each pixel above it is zeroed with probability ``drop_prob``.
  The rest of the stage runs on both the intact and the erased maps; the L1 distance
  between the two outputs is the loss, so the features of the less discriminative parts
  must carry the object on their own.

The similarity and norm terms start after ``warm_epochs`` epochs (the reference trains
20 of its 70 CUB epochs without them; the default 0 suits the paper's 2-epoch schedule).
Defaults are the reference's CUB / ResNet-50 configuration. Evaluation is plain CAM on the
intact features (the dropout branch exists only in training).

Backbone requirement: ``features`` must be an ``nn.Sequential`` of convolutional stages
(:func:`inatloc_nb.training.surgery.backbone_stages`). When its last stage has several blocks
(ResNet ``layer4``, ConvNeXt ``stage3``), it is split after its first block, as in the
reference; otherwise (``tinycnn``) the split is between the last two stages.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.callback.core import Callback
from torch import Tensor, nn

from inatloc_nb.core import validate
from inatloc_nb.training.methods.base import WSOLMethod
from inatloc_nb.training.methods.guided import GuidedTraining, min_max_normalize
from inatloc_nb.training.models import CAMNet
from inatloc_nb.training.surgery import backbone_stages, cut_backbone


class AttentiveDropout(nn.Module):
    """Zero, with probability ``drop_prob`` each, the pixels whose channel-mean attention
    exceeds ``drop_threshold`` x its per-image maximum."""

    def __init__(self, drop_threshold: float, drop_prob: float) -> None:
        super().__init__()
        self.drop_threshold = validate.unit_interval(drop_threshold, "method 'bridgegap': drop_threshold")
        self.drop_prob = validate.unit_interval(drop_prob, "method 'bridgegap': drop_prob")

    def forward(self, x: Tensor) -> Tensor:
        attention = x.mean(1, keepdim=True)
        peak = attention.flatten(1).max(1).values.view(-1, 1, 1, 1)
        hit = (attention > peak * self.drop_threshold) & (torch.rand_like(attention) < self.drop_prob)
        return x * (~hit).to(x.dtype)

    def extra_repr(self) -> str:
        return f"drop_threshold={self.drop_threshold}, drop_prob={self.drop_prob}"


def split_last_stage(features: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(head, tail)`` with ``tail(head(x)) == features(x)``: the cut is after the first block
    of the last stage when it has several, else before the last stage (stages as
    :func:`inatloc_nb.training.surgery.backbone_stages` sees them). Both share ``features``' modules."""
    last = backbone_stages(features, "bridgegap")[-1]
    head, tail = cut_backbone(features, [(last, 1 if len(last) > 1 else 0)])
    return head, tail


class BridgeGapNet(CAMNet):
    """CAMNet whose training forward also runs the attentive-dropout branch and keeps the
    final features for the alignment losses (a guided model, see ``methods.guided``)."""

    def __init__(self, features: nn.Module, n_channels: int, n_classes: int, hparams: dict) -> None:
        head, tail = split_last_stage(features)
        super().__init__(features, n_channels, n_classes)
        # kept outside the module tree: they only re-group ``features``' own modules
        self._parts = (head, tail)
        self.drop = AttentiveDropout(hparams["drop_threshold"], hparams["drop_prob"])
        self.hparams = dict(hparams)
        self.target: Tensor | None = None
        self.align = True
        self._outputs: dict[str, Tensor] = {}

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        head, tail = self._parts
        mid = head(x)
        feats = tail(mid)
        erased = tail(self.drop(mid))
        self._outputs = {"features": feats, "erased": erased}
        return self.classifier(torch.flatten(self.pool(feats), 1))

    def auxiliary_loss(self, target: Tensor) -> Tensor:
        """Weighted dropout, similarity and norm terms of the last training forward pass."""
        h = self.hparams
        feats, erased = self._outputs["features"], self._outputs["erased"]
        loss = h["drop_weight"] * F.l1_loss(feats, erased)
        if self.align:
            sim_loss, norm_loss = alignment_losses(feats, self.classifier.weight[target],
                                                   h["fg_threshold"], h["bg_threshold"])
            loss = loss + h["sim_weight"] * sim_loss + h["norm_weight"] * norm_loss
        return loss


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum(1) / (mask.sum(1) + 1e-15)


def alignment_losses(feats: Tensor, weights: Tensor, fg_threshold: float,
                     bg_threshold: float) -> tuple[Tensor, Tensor]:
    """The similarity and norm losses of features ``feats`` (B, C, h, w) against the class
    weight vectors ``weights`` (B, C) (see the module docstring)."""
    sim = torch.einsum("bchw,bc->bhw", F.normalize(feats, dim=1), F.normalize(weights, dim=1)).flatten(1)
    norm = min_max_normalize(feats.norm(dim=1)).flatten(1)
    sim_loss = (_masked_mean(sim, norm < bg_threshold) - _masked_mean(sim, norm > fg_threshold)).mean()
    norm_loss = (_masked_mean(norm, sim < 0) - _masked_mean(norm, sim > 0)).mean()
    return sim_loss, norm_loss


class AlignmentWarmup(Callback):
    """Switches the similarity and norm terms on from epoch ``warm_epochs`` (0-based)."""

    def __init__(self, warm_epochs: int) -> None:
        self.warm_epochs = warm_epochs

    def before_epoch(self) -> None:
        self.learn.model.align = self.epoch >= self.warm_epochs


class BridgeGap(WSOLMethod):
    """CAM trained with feature / classifier-weight alignment and attentive dropout."""

    name = "bridgegap"
    defaults = {"sim_weight": 0.5, "norm_weight": 0.05, "drop_weight": 2.0, "fg_threshold": 0.4,
                "bg_threshold": 0.2, "drop_threshold": 0.8, "drop_prob": 0.25, "warm_epochs": 0}

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        return BridgeGapNet(features, n_channels, n_classes, self.hparams)

    def callbacks(self) -> list[Callback]:
        return [GuidedTraining(), AlignmentWarmup(int(self.hparams["warm_epochs"]))]
