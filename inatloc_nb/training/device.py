"""Device settings of a training run: mixed precision, channels-last and ``torch.compile``.

Each is a switch (``RunConfig.amp``, ``channels_last``, ``compile``; ``--amp/--no-amp``,
``--channels-last/--no-channels-last``, ``--compile/--no-compile``) whose default (None)
resolves per device:

- ``amp``: on for CUDA, off for CPU. Training runs under ``torch.autocast`` in bfloat16 where
  the GPU supports it (no loss scaling needed), else float16 with a gradient scaler (fastai's
  ``MixedPrecision``). fastai's mixed precision is CUDA-only, so ``amp=True`` on CPU is refused.
  This is a deviation from the reference code, which trains in float32; ``amp=False``
  (``--no-amp``) on CUDA is the reference's float32: TF32 is switched off for matrix
  multiplications and cuDNN convolutions (``tf32`` below), for training and CAM extraction.
- ``tf32`` (not a switch of its own): with amp on CUDA, PyTorch's defaults stay (TF32 for
  cuDNN convolutions, not for matmuls); without amp, TF32 is off everywhere. These are process-wide
  PyTorch flags, set by :func:`prepare_model` (one run per process, or runs of one setting).
- ``channels_last``: on for CUDA, off for CPU. The model's weights and every input batch are
  in channels-last memory format (what tensor cores prefer for convolutions).
- ``compile``: off by default everywhere until it is measured to pay for its compilation
  time in a two-epoch run (see ``docs/cost_model.md``). When on, each stage of the backbone
  (the children of ``model.features``) is compiled in place with ``nn.Module.compile``:
  parameter names and saved weights are unchanged, and ``model.features`` itself stays eager
  so the CAM hook on it sees every forward pass.
- ``cuda_graphs``: off by default (not yet measured end to end on a GPU; ``benchmarks/gpu_check.py``
  compares its weights and rate with the eager loop). Each full training batch's step is
  recorded once as a CUDA graph and replayed (``inatloc_nb.training.cuda_graphs``): the eager step's
  kernels on the same inputs, launched without the host's per-kernel cost. Methods that draw
  random numbers inside the step, float16 loss scaling and callbacks acting inside the step
  keep the eager step (the callback records why).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import AMPMode, MixedPrecision

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.cuda_graphs import CudaGraphStep

if TYPE_CHECKING:
    from fastai.learner import Learner
    from torch import nn


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class DeviceSettings:
    """The resolved switches of a run on ``device`` (``resolve_settings``)."""

    device: str
    amp: bool
    channels_last: bool
    compile: bool
    cuda_graphs: bool = False

    @property
    def tf32(self) -> bool | None:
        """Whether CUDA may use TF32: False for float32 (no amp) on CUDA, None (PyTorch's
        defaults) otherwise."""
        return False if self.device.startswith("cuda") and not self.amp else None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype: bfloat16 when the GPU supports it, else float16; None without amp."""
        if not self.amp:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values, with the autocast dtype's name (``params.json``)."""
        dtype = self.amp_dtype
        return {**asdict(self), "amp_dtype": None if dtype is None else str(dtype).removeprefix("torch."),
                "tf32": self.tf32}


def resolve_settings(
    device: torch.device | str | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    compile: bool | None = None,
    cuda_graphs: bool | None = None,
) -> DeviceSettings:
    """The settings for ``device`` (default: ``default_device()``); a None switch takes its
    device default (amp and channels-last on for CUDA; compile and CUDA graphs off)."""
    device = default_device() if device is None else torch.device(device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise InatlocError(f"device {device} requested but torch sees no CUDA GPU; use --device cpu")
    amp = cuda if amp is None else amp
    if amp and not cuda:
        raise InatlocError(f"mixed precision (amp) needs a CUDA device, the run is on {device}; "
                           "use --no-amp (training on CPU stays float32)")
    if cuda_graphs and not cuda:
        raise InatlocError(f"CUDA graphs need a CUDA device, the run is on {device}; use --no-cuda-graphs")
    if cuda_graphs and compile:
        raise InatlocError("cuda_graphs and compile do not combine; choose one")
    return DeviceSettings(
        device=str(device),
        amp=bool(amp),
        channels_last=cuda if channels_last is None else bool(channels_last),
        compile=False if compile is None else bool(compile),
        cuda_graphs=False if cuda_graphs is None else bool(cuda_graphs),
    )


def apply_precision(settings: DeviceSettings) -> None:
    """Set PyTorch's process-wide TF32 flags for ``settings`` (off for float32 on CUDA; left
    as they are otherwise)."""
    if settings.tf32 is None:
        return
    if hasattr(torch.backends.cudnn, "conv"):  # torch >= 2.9: per-backend fp32 precision
        precision = "tf32" if settings.tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = settings.tf32
        torch.backends.cudnn.allow_tf32 = settings.tf32


def tf32_enabled() -> tuple[bool, bool]:
    """Whether CUDA matmuls and cuDNN convolutions may use TF32 now."""
    if hasattr(torch.backends.cudnn, "conv"):
        return (torch.backends.cuda.matmul.fp32_precision == "tf32",
                torch.backends.cudnn.conv.fp32_precision == "tf32")
    return bool(torch.backends.cuda.matmul.allow_tf32), bool(torch.backends.cudnn.allow_tf32)


def prepare_model(model: nn.Module, settings: DeviceSettings) -> nn.Module:
    """Move ``model`` to the settings' device, in channels-last format when asked, and
    compile the backbone's stages in place when asked (see the module docstring); set the
    TF32 flags (:func:`apply_precision`)."""
    apply_precision(settings)
    model = model.to(settings.device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if settings.compile:
        features = getattr(model, "features", None)
        if features is None or not list(features.children()):
            raise InatlocError(f"{type(model).__name__} has no 'features' stages to compile; use --no-compile")
        for stage in features.children():
            stage.compile()
    return model


class ChannelsLastInputs(Callback):
    """Hands every training and validation batch to the model in channels-last format."""

    order = 5  # after the batch is on the device, before the model runs

    def before_batch(self) -> None:
        self.learn.xb = tuple(
            x.contiguous(memory_format=torch.channels_last) if isinstance(x, torch.Tensor) and x.ndim == 4 else x
            for x in self.xb
        )


def apply_settings(learn: Learner, settings: DeviceSettings) -> Learner:
    """Add the callbacks of ``settings`` to ``learn`` (mixed precision, channels-last
    inputs; the model is prepared by ``prepare_model``) and store them as
    ``learn.device_settings``."""
    if settings.amp:
        bf16 = settings.amp_dtype == torch.bfloat16
        learn.add_cb(MixedPrecision(amp_mode=AMPMode.BF16 if bf16 else AMPMode.FP16))
    if settings.channels_last:
        learn.add_cb(ChannelsLastInputs())
    if settings.cuda_graphs:
        learn.add_cb(CudaGraphStep())
    learn.device_settings = settings
    return learn


__all__ = [
    "ChannelsLastInputs",
    "DeviceSettings",
    "apply_precision",
    "apply_settings",
    "tf32_enabled",
    "prepare_model",
    "resolve_settings",
]
