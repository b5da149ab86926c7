"""CutMix (Yun et al., ICCV 2019): paste a box of another training image, mix labels by area.

With probability ``mix_rate`` a batch is mixed: lambda ~ Beta(size_prior, size_prior),
a box covering about ``1 - lambda`` of the image (uniform centre, clipped at the border) is
copied from a shuffled copy of the batch, lambda is recomputed as the exact unmixed area
fraction, and the loss is ``lambda * loss(y) + (1 - lambda) * loss(y_shuffled)``.
Unmixed batches train normally. Evaluation is unchanged.

Builds on fastai's :class:`~fastai.callback.mixup.CutMix`, which implements the box and the
loss mixing; this adds the per-batch mix probability of the original recipe and sizes the box
as the reference code does: side ``int(W * sqrt(1 - lambda))``, truncated (fastai rounds).
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.callback.mixup import CutMix as FastaiCutMix

from inatloc_nb.training.methods.base import WSOLMethod


class CutMixCallback(FastaiCutMix):
    """fastai's CutMix applied to a batch with probability ``mix_rate``."""

    def __init__(self, size_prior: float, mix_rate: float) -> None:
        super().__init__(alpha=size_prior)
        self.mix_rate = mix_rate
        self.mixed = False

    def rand_bbox(self, W: int, H: int, lam: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A box of side ``int(side * sqrt(1 - lam))`` (truncated, as the reference's
        ``rand_bbox``) around a uniform centre, clipped to the image."""
        cut_rat = torch.sqrt(1.0 - lam).to(self.x.device)
        half_w = torch.div((W * cut_rat).long(), 2, rounding_mode="floor")
        half_h = torch.div((H * cut_rat).long(), 2, rounding_mode="floor")
        cx = torch.randint(0, W, (1,)).to(self.x.device)
        cy = torch.randint(0, H, (1,)).to(self.x.device)
        return (torch.clamp(cx - half_w, 0, W), torch.clamp(cy - half_h, 0, H),
                torch.clamp(cx + half_w, 0, W), torch.clamp(cy + half_h, 0, H))

    def before_batch(self) -> None:
        self.mixed = bool(torch.rand(()) < self.mix_rate)
        if self.mixed:
            super().before_batch()
        else:  # lambda = 1: the mixed loss reduces to the plain loss
            self.lam, self.yb1 = torch.ones((), device=self.x.device), self.yb


class CutMix(WSOLMethod):
    """CAM trained on CutMix-augmented batches."""

    name = "cutmix"
    defaults = {"size_prior": 0.10, "mix_rate": 0.93}

    def callbacks(self) -> list[Callback]:
        return [CutMixCallback(self.hparams["size_prior"], self.hparams["mix_rate"])]
