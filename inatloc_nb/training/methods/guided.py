"""Training-time plumbing shared by methods whose models need the labels (ACoL, SPG).

A *guided* model reads the ground-truth labels of the batch from ``model.target`` during
training (to pick the class whose map is erased or thresholded) and exposes the extra
loss terms of its last forward pass through ``model.auxiliary_loss(target)``.
:class:`GuidedTraining` sets the labels before each training batch and adds the auxiliary
loss to fastai's loss before the backward pass. Outside training ``model.target`` is None
and the models fall back to the predicted class.
"""
from __future__ import annotations

from fastai.callback.core import Callback
from torch import Tensor


def min_max_normalize(maps: Tensor) -> Tensor:
    """Scale each (h, w) map of ``maps`` (B, h, w) to [0, 1]; constant maps become 0."""
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    span = (flat.max(1, keepdim=True).values - low).clamp_min(1e-12)
    return ((flat - low) / span).view_as(maps)


class GuidedTraining(Callback):
    """Passes the labels to a guided model and adds its auxiliary loss (training only)."""

    run_valid = False

    def before_batch(self) -> None:
        self.learn.model.target = self.y

    def after_loss(self) -> None:
        extra = self.learn.model.auxiliary_loss(self.y)
        self.learn.loss_grad = self.learn.loss_grad + extra
        self.learn.loss = self.learn.loss_grad.detach().clone()

    def after_batch(self) -> None:
        self.learn.model.target = None

    def after_cancel_batch(self) -> None:
        self.after_batch()
