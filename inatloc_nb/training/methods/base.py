"""The WSOL method contract: how a method builds its model, trains and produces CAMs.

A method is a small subclass of :class:`WSOLMethod` that overrides only what differs
from plain CAM (Zhou et al. 2016): a model wrapper (ACoL, SPG, ADL), fastai callbacks
(HaS, CutMix) or a loss (SPG's auxiliary terms, CutMix's mixed targets).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from inatloc_nb.core.errors import InatlocError

if TYPE_CHECKING:
    from inatloc_nb.hierarchies.taxonomy import Hierarchy


class WSOLMethod:
    """Plain CAM: a backbone, global average pooling and a linear classifier.

    ``defaults`` holds the method's hyperparameters (Table A4); ``__init__`` accepts only
    those keys and stores the merged values in ``self.hparams``.
    """

    name: ClassVar[str] = "cam"
    defaults: ClassVar[dict[str, Any]] = {}
    #: Whether ``bind`` needs the dataset's hierarchy (methods with one head per level).
    needs_hierarchy: ClassVar[bool] = False
    #: Whether a training step may be recorded once and replayed as a CUDA graph
    #: (``inatloc_nb.training.cuda_graphs``): the forward pass and loss draw no random numbers, never
    #: wait for the host and act through no step callbacks. Declared by each method that is.
    cuda_graph_safe: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            valid = ", ".join(sorted(self.defaults)) or "none"
            raise InatlocError(
                f"method {self.name!r}: unknown hyperparameter(s) {', '.join(unknown)}; "
                f"valid: {valid}"
            )
        self.hparams: dict[str, Any] = {**self.defaults, **hparams}

    def bind(self, hierarchy: Hierarchy, level: str) -> None:
        """Called with the dataset's hierarchy and the training level before ``build_model``
        (by ``build_learner`` and ``load_run_model``); nothing to do for single-level methods."""

    def build_model(self, features: nn.Module, n_channels: int, n_classes: int) -> nn.Module:
        """The trainable model around a backbone ``features`` producing ``n_channels`` maps."""
        from inatloc_nb.training.models import CAMNet

        return CAMNet(features, n_channels, n_classes)

    def callbacks(self) -> list:
        """fastai callbacks that implement the method during training (none for CAM)."""
        return []

    def loss_func(self) -> Callable | None:
        """The training loss, or None for fastai's ``CrossEntropyLossFlat``."""
        return None

    @torch.no_grad()
    def cams(self, model: nn.Module, images: Tensor, class_idx: Tensor) -> Tensor:
        """Raw class activation maps (B, h, w) for ``class_idx`` (B,), without gradients."""
        return model.class_activation_maps(model.feature_maps(images), class_idx)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(self.hparams.items()))
        return f"{type(self).__name__}({args})"
