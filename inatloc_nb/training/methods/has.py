"""Hide-and-Seek (Singh & Lee, ICCV 2017): hide random grid patches of training images.

Each training image is cut into a grid of square patches; every patch is hidden
independently with probability ``drop_rate``. Hidden pixels are set to 0, which on
mean/std-normalised inputs is the dataset mean pixel, as in the original method.
Evaluation images are never touched.

``patch_size`` is Table A4's "drop area": the patch side in pixels at a 224-pixel input.
At another input size the side scales with the image (``round(patch_size * H / 224)``), so
the grid covers the same fraction of the object.
"""
from __future__ import annotations

import torch
from fastai.callback.core import Callback
from torch import Tensor

from inatloc_nb.training.methods.base import WSOLMethod

#: The input side at which Table A4's patch size is given.
REFERENCE_SIZE = 224


def patch_side(patch_size: int, image_side: int) -> int:
    """The patch side in pixels for an ``image_side`` input (at least 1)."""
    return max(1, round(patch_size * image_side / REFERENCE_SIZE))


def hide_patches(images: Tensor, patch: int, drop_rate: float) -> tuple[Tensor, Tensor]:
    """Zero random ``patch`` x ``patch`` grid cells of ``images`` (B, C, H, W).

    Returns the new images and the keep mask over the grid (B, ceil(H/patch), ceil(W/patch)).
    """
    b, _, h, w = images.shape
    grid = (b, -(-h // patch), -(-w // patch))
    keep = torch.rand(grid, device=images.device) >= drop_rate
    pixels = keep.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w]
    return images * pixels.unsqueeze(1).to(images.dtype), keep


class HideAndSeekCallback(Callback):
    """Hides patches of each training batch before the forward pass (not at validation)."""

    run_valid = False

    def __init__(self, drop_rate: float, patch_size: int) -> None:
        self.drop_rate, self.patch_size = drop_rate, patch_size
        self.keep: Tensor | None = None

    def before_batch(self) -> None:
        patch = patch_side(self.patch_size, self.x.shape[-2])
        hidden, self.keep = hide_patches(self.x, patch, self.drop_rate)
        self.learn.xb = (hidden, *self.xb[1:])


class HaS(WSOLMethod):
    """CAM trained on images with randomly hidden patches."""

    name = "has"
    cuda_graph_safe = True  # hiding happens before the step, on the batch
    defaults = {"drop_rate": 0.09, "patch_size": 31}

    def callbacks(self) -> list[Callback]:
        return [HideAndSeekCallback(self.hparams["drop_rate"], self.hparams["patch_size"])]
