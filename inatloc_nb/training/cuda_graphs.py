"""Training steps replayed as CUDA graphs: the same kernels on the same inputs, launched at once.

At the paper's batch of 32 a ResNet-50 training step on a large GPU is bound by the host
launching its kernels one by one, not by the GPU running them. :class:`CudaGraphStep`
records the whole step of a full training batch once — forward (under the run's autocast),
loss, backward, optimizer step, zeroing the gradients — as a CUDA graph, and from then on
copies each batch into the graph's input tensors and replays it. The kernels, their order
and their inputs are those of the eager step, so the weights are the same.

A graph holds what it recorded: the learning rates and every other optimizer
hyper-parameter, the batch shape and the memory of the tensors it read. So a step runs
eagerly (fastai's own loop) when:

- the batch is not a full one (the last batch of an epoch), or
- it is one of the first ``warmup`` batches after the hyper-parameters or the batch shape
  changed (the optimizer makes its momentum buffers on its first step; cuDNN and cuBLAS set
  up their workspaces). The graph is recorded again after such a change.

Graphs are used only where replaying cannot differ from the eager step:

- on CUDA;
- for methods that declare ``cuda_graph_safe`` (their forward and loss draw no random
  numbers and never wait for the host);
- when no callback acts inside the step besides bfloat16 mixed precision (no loss scaling);
- without ``torch.compile``.

Otherwise the callback says why once (``reason``) and every step runs eagerly.

The switch is ``DeviceSettings.cuda_graphs`` (off by default). On an H200 the bare
ResNet-50 step at batch 32 ran 1,424 img/s eagerly and 1,721 img/s replayed as a graph
(``benchmarks/gpu_check.py``, section ``training_levers``); the Learner with this callback
has not yet been measured there (section ``cuda_graphs`` compares its weights and rate with
the eager loop), so it stays opt-in.
"""
from __future__ import annotations

from typing import Any

import torch
from fastai.callback.core import Callback, CancelBatchException
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.torch_core import to_float

#: fastai events between the forward pass and the end of the optimizer step: a callback
#: defining one of them acts inside the step, which a replay would skip.
STEP_EVENTS = ("after_pred", "after_loss", "before_backward", "after_backward", "before_step", "after_step",
               "after_cancel_backward", "after_cancel_step")
#: Eager full batches before a step is recorded (after a change of shape or hyper-parameters).
WARMUP_BATCHES = 2


class CudaGraphStep(Callback):
    """Replays each full training batch's step as a CUDA graph (module docstring).
    ``replays``/``eager_steps`` count the steps of each kind, ``captures`` the recordings."""

    order = 100  # last before the batch: it is on the device, reshaped, masked by the method

    def __init__(self, warmup: int = WARMUP_BATCHES):
        self.warmup = warmup
        self.reason: str | None = None
        self.replays = self.eager_steps = self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    def before_fit(self) -> None:
        self.reason = self.unsupported()
        self._drop()
        self._seen = 0

    def unsupported(self) -> str | None:
        """Why this learner's steps cannot be replayed, or None when they can."""
        if torch.device(self.dls.device if self.dls.device is not None else "cpu").type != "cuda":
            return "training is not on a CUDA device"
        settings = getattr(self.learn, "device_settings", None)
        if settings is not None and settings.compile:
            return "the model is compiled (torch.compile)"
        return step_blocker(self.learn)

    def before_batch(self) -> None:
        if self.reason is not None or not self.training:
            return
        batch = (*self.xb, *self.yb)
        if len(self.yb) == 0 or len(self.yb[0]) != self.dls.train.bs:
            self.eager_steps += 1
            return
        key = (tuple((t.shape, t.dtype, t.stride()) for t in batch),
               tuple(tuple(sorted(h.items())) for h in self.opt.hypers))
        if key != self._key:
            self._drop()
            self._key = key
        if self._graph is None:
            self._seen += 1
            if self._seen <= self.warmup:
                self.eager_steps += 1
                return
            try:
                self._capture(batch)
            except RuntimeError as exc:  # this step and the rest run eagerly; the run goes on
                self.reason = f"recording the step failed: {type(exc).__name__}: {str(exc).splitlines()[0]}"
                self._drop()
                self.eager_steps += 1
                return
        self._autocast_off(self._mixed_precision())
        for static, tensor in zip(self._inputs, batch):
            static.copy_(tensor)
        self._graph.replay()
        self.replays += 1
        pred, loss = self._outputs
        self.learn.pred, self.learn.loss_grad, self.learn.loss = pred, loss, loss.clone()
        raise CancelBatchException  # fastai goes on with after_cancel_batch and after_batch

    def after_fit(self) -> None:
        self._drop()

    # --- internals ------------------------------------------------------------------------

    def _mixed_precision(self) -> MixedPrecision | None:
        return next((cb for cb in self.learn.cbs if isinstance(cb, MixedPrecision)), None)

    def _capture(self, batch: tuple[torch.Tensor, ...]) -> None:
        """Record the step of ``batch`` (not run: the replay that follows runs it), inside the
        mixed-precision autocast of this batch, under an autocast of its own without the cast
        cache (a cached cast would not be recorded)."""
        self._inputs = tuple(t.clone() for t in batch)
        xb, yb = self._inputs[: len(self.xb)], self._inputs[len(self.xb):]
        mixed = self._mixed_precision()
        # The last eager step's outputs keep its autograd graph (and the gradient accumulators
        # made on the default stream) alive, which would break the capture: let them go.
        self.learn.pred = self.learn.loss_grad = self.learn.loss = None
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread-local: the loader's pin-memory thread goes on allocating pinned memory meanwhile
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            with (torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False) if mixed is not None
                  else torch.autocast("cuda", enabled=False)):
                pred = self.model(*xb)
                if mixed is not None:
                    pred = to_float(pred)  # MixedPrecision.after_pred
                loss = self.loss_func(pred, *yb)
            loss.backward()
            self.opt.step()
            self.opt.zero_grad()
        self._graph, self._outputs = graph, (pred, loss)
        self.captures += 1

    def _autocast_off(self, mixed: MixedPrecision | None) -> None:
        """MixedPrecision entered autocast before this batch and leaves it after the loss,
        which a replay skips: leave it here."""
        if mixed is not None and getattr(mixed, "autocast", None) is not None:
            mixed.autocast.__exit__(None, None, None)

    def _drop(self) -> None:
        self._graph, self._inputs, self._outputs, self._key, self._seen = None, (), (), None, 0


def step_blocker(learn: Any) -> str | None:
    """Why ``learn``'s training step (device aside) cannot be replayed as recorded: a method
    not declared ``cuda_graph_safe``, float16 loss scaling, or a callback acting inside the
    step; None when nothing stands in the way."""
    method = getattr(learn, "method", None)
    if not getattr(method, "cuda_graph_safe", False):
        return f"method {getattr(method, 'name', method)!r} is not declared cuda_graph_safe"
    for cb in learn.cbs:
        if isinstance(cb, CudaGraphStep):
            continue
        if isinstance(cb, MixedPrecision):
            if AMPMode(cb.amp_mode) != AMPMode.BF16:
                return "float16 mixed precision scales the loss (the scaler syncs with the host)"
            continue
        acting = [e for e in STEP_EVENTS if hasattr(type(cb), e)]
        if acting:
            return f"callback {type(cb).__name__} acts inside the step ({', '.join(acting)})"
    return None


def graph_summary(learn: Any) -> dict[str, Any] | None:
    """``{"replays", "eager_steps", "captures", "reason"}`` of ``learn``'s CudaGraphStep, or None."""
    cb = next((c for c in learn.cbs if isinstance(c, CudaGraphStep)), None)
    if cb is None:
        return None
    return {"replays": cb.replays, "eager_steps": cb.eager_steps, "captures": cb.captures, "reason": cb.reason}


__all__ = ["CudaGraphStep", "STEP_EVENTS", "WARMUP_BATCHES", "graph_summary", "step_blocker"]
