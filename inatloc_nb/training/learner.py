"""The fastai ``Learner`` of one WSOL training run (docs/protocol.md).

``build_learner`` assembles data, model, optimiser and schedule the same way for synthetic
and real datasets; ``train`` runs the schedule. The protocol (that of the reference WSOL
code, wsolevaluation, unless an option names the other reading):

- train: squish-resize to ``256 / 224 * image_size``, random crop ``image_size``, horizontal
  flip p = 0.5; the last, incomplete training batch is kept; evaluation: squish-resize to
  ``image_size``; ImageNet mean/std;
- SGD, Nesterov momentum 0.9, weight decay 1e-5 on every parameter, batch 32;
- two parameter groups, at ``lr`` and ``10 * lr`` (``param_groups``). ``lr_groups=
  "reference"`` (default): the backbone's last stage (ResNet ``layer4``) and the model's
  linear classifier (the reference's ``fc``; ACoL's branches and SPG's heads and classifier
  stay at ``lr``); ``lr_groups="classifier"`` (the paper's text): every parameter under a
  module whose name starts with ``classifier``;
- step schedules (``Schedule``): ``"2epoch"`` or ``"paper"`` (LR / 10 after epoch 1),
  ``"10epoch"`` or an int N (LR / 10 every 3 epochs). ``lr_decay="reference"`` (default)
  decays after 2, 5, 8, ... completed epochs, as the reference's
  ``adjust_learning_rate(epoch + 1)`` does; ``lr_decay="text"`` after 3, 6, 9, ...;
- ``seed`` seeds python, numpy and torch when the learner is built and again when training
  starts, so a CPU run is repeatable (for a given ``num_workers``);
- device switches (``inatloc_nb.training.device``): on CUDA by default mixed precision (bfloat16
  autocast where supported, else float16 with loss scaling) and channels-last model and
  inputs; on CPU float32 and contiguous; ``torch.compile`` of the backbone stages on request;
- progress: fastprogress bars in terminals and notebooks, one line per epoch otherwise
  (``inatloc_nb.core.progress``).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.optimizer import OptimWrapper
from fastai.torch_core import find_bs, set_seed

from inatloc_nb.core import progress
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.datasets.images import clear_worker_errors
from inatloc_nb.training.device import apply_settings, default_device, prepare_model, resolve_settings
from inatloc_nb.training.method_support import check_support
from inatloc_nb.training.models import build_backbone
from inatloc_nb.training.pipeline import protocol_dataloaders
from inatloc_nb.training.prepared import PreparedValidation, open_prepared
from inatloc_nb.training.protocol import DECAY_EVERY, check_reading

if TYPE_CHECKING:
    from pathlib import Path

    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.run_config import RunConfig



@dataclass(frozen=True)
class Schedule:
    """A step learning-rate schedule: ``epochs`` epochs, LR x ``gamma`` at each milestone epoch."""

    epochs: int
    milestones: tuple[int, ...]
    gamma: float = 0.1

    @classmethod
    def parse(cls, spec: str | int, lr_decay: str = "reference") -> Schedule:
        """``"2epoch"`` (alias ``"paper"``: LR / 10 after the first epoch), ``"10epoch"``, an
        int number of epochs (LR / 10 every 3 epochs) or ``"E/D"`` (E epochs, LR / 10 every D
        epochs, e.g. ``"50/15"`` for CUB); the decays are timed by ``lr_decay`` (see
        ``inatloc_nb.training.protocol.LR_DECAYS``)."""
        check_reading("lr_decay", lr_decay)
        if spec in ("2epoch", "paper"):
            return cls(2, (1,))
        if spec == "10epoch":
            spec = 10
        epochs_text, _, every_text = str(spec).partition("/")
        try:
            epochs, every = int(epochs_text), int(every_text or DECAY_EVERY)
        except ValueError:
            raise InatlocError(
                f"unknown schedule {spec!r}; use '2epoch', '10epoch', a number of epochs or 'E/D'"
            ) from None
        if epochs < 1 or every < 1:
            raise InatlocError(f"schedule {spec!r}: epochs and the decay interval must be at least 1")
        first = every - 1 if lr_decay == "reference" else every
        return cls(epochs, tuple(range(first, epochs, every)))

    def factor(self, epoch: int) -> float:
        """The LR multiplier during (0-based) ``epoch``."""
        return self.gamma ** sum(epoch >= m for m in self.milestones)


class StepLR(Callback):
    """Sets each parameter group's LR to ``base_lrs[g] * schedule.factor(epoch)`` every epoch."""

    order = 1  # before the Recorder logs the first batch's LR

    def __init__(self, base_lrs: Sequence[float], schedule: Schedule):
        self.base_lrs = list(base_lrs)
        self.schedule = schedule

    def before_epoch(self) -> None:
        factor = self.schedule.factor(self.epoch)
        self.opt.set_hyper("lr", [lr * factor for lr in self.base_lrs])


class Reseed(Callback):
    """Seeds python, numpy and torch when a fit starts (data order, augmentation, methods)."""

    order = -10

    def __init__(self, seed: int):
        self.seed = seed

    def before_fit(self) -> None:
        set_seed(self.seed, reproducible=True)


class ValidationTimer(Callback):
    """Wall seconds (``seconds``) and images (``images``) of fastai's validation passes in a
    fit (D_f at the training level, after every epoch)."""

    order = -20  # its before_validate first, its after_validate first

    def before_fit(self) -> None:
        self.seconds, self.images = 0.0, 0

    def before_validate(self) -> None:
        self._start = time.perf_counter()

    def after_batch(self) -> None:
        if not self.training:
            self.images += find_bs(self.yb)

    def after_validate(self) -> None:
        self.seconds += time.perf_counter() - self._start


def is_classifier_param(name: str) -> bool:
    """Whether parameter ``name`` is in the 10x group of the ``"classifier"`` reading: a
    module-path component starts with ``classifier``."""
    return any(part.startswith("classifier") for part in name.split("."))


def reference_fast_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """Parameter-name prefixes of the 10x group of the ``"reference"`` reading.

    The reference code gives 10x to names containing ``layer4.`` or ``fc.``: the backbone's
    last stage (the last child of ``model.features``) and the module that plays the
    reference's ``fc``, named by the model's ``reference_fc`` attribute (``"classifier"``
    for a CAMNet; None for ACoL and SPG, whose classifiers the reference calls
    ``classifier_A/B`` and ``SPG_A4``, so they stay at 1x).
    """
    features = getattr(model, "features", None)
    if not isinstance(features, torch.nn.Module) or not list(features.children()):
        raise InatlocError(f"{type(model).__name__} has no 'features' backbone with stages; "
                           "use lr_groups='classifier'")
    last_stage = list(features.named_children())[-1][0]
    fc = getattr(model, "reference_fc", "classifier")
    return (f"features.{last_stage}.", *(() if fc is None else (f"{fc}.",)))


def param_groups(model: torch.nn.Module, lr_groups: str = "reference") -> list[list[torch.nn.Parameter]]:
    """fastai splitter: ``[parameters at lr, parameters at 10 lr]`` for the ``lr_groups``
    reading (``inatloc_nb.training.protocol.LR_GROUPS``; see the module docstring)."""
    if check_reading("lr_groups", lr_groups) == "reference":
        prefixes = reference_fast_prefixes(model)

        def fast(name: str) -> bool:
            return name.startswith(prefixes)
    else:
        fast = is_classifier_param
    groups: list[list[torch.nn.Parameter]] = [[], []]
    for name, param in model.named_parameters():
        groups[fast(name)].append(param)
    if not groups[1]:
        raise InatlocError(f"{type(model).__name__} has no parameter in the 10x group of "
                           f"lr_groups={lr_groups!r}")
    return groups


def sgd_nesterov(params: Any, lr: float) -> OptimWrapper:
    """SGD with Nesterov momentum 0.9 and weight decay 1e-5, wrapped for fastai."""
    return OptimWrapper(
        params, torch.optim.SGD, lr=lr, momentum=0.9, nesterov=True, weight_decay=1e-5
    )


def labelled_items(
    dataset: WSOLDataset, split: str, level: str, image_ids: Sequence[str] | None = None
) -> list[list]:
    """``dataset.items`` as ``[path, class name at level]`` lists (fastai maps transforms over
    tuples element-wise, so items are lists)."""
    names = dataset.hierarchy.resolve(level).names
    return [[path, names[y]] for path, y in dataset.items(split, level, image_ids)]


def build_dataloaders(
    dataset: WSOLDataset,
    level: str,
    image_size: int = 224,
    batch_size: int = 32,
    train_ids: Sequence[str] | None = None,
    device: torch.device | str | None = None,
    num_workers: int | None = None,
    prepared: str | Path | None = None,
) -> DataLoaders:
    """Train (``train`` split, or ``train_ids`` of it) and valid (``val``) loaders at ``level``
    (``inatloc_nb.training.pipeline.protocol_dataloaders``).

    Labels are the class names of ``dataset.hierarchy.level_names(level)`` in class-index
    order, so the loaders' vocab index equals the dataset's integer label. ``prepared``: the
    cache root of a prepared copy (``inatloc_nb.training.prepared.prepare_dataset``) holding every
    split of the dataset, read instead of decoding the original images.
    """
    missing = [s for s in ("train", "val") if s not in dataset.splits]
    if missing:
        raise InatlocError(f"dataset {dataset.name!r} has no {' or '.join(missing)} split")
    names = dataset.hierarchy.resolve(level).names
    train = labelled_items(dataset, "train", level, train_ids)
    valid = labelled_items(dataset, "val", level)
    if len(train) < 2:
        raise InatlocError(f"dataset {dataset.name!r}: {len(train)} training image(s) at level {level!r}; "
                           "batch normalisation needs at least 2")
    from inatloc_nb.training.lockstep import shared_dataloaders

    copy = None if prepared is None else open_prepared(prepared, dataset, image_size)
    # The last, incomplete training batch is kept, as the reference code's loader does.
    # Runs of a fused group (inatloc_nb.runs.fused) share one set of loaders.
    return shared_dataloaders(lambda: protocol_dataloaders(
        train, valid, names, image_size, batch_size,
        default_device() if device is None else device, num_workers, dataset.image_root, copy,
    ))


def build_learner(dataset: WSOLDataset, config: RunConfig) -> Learner:
    """A fastai Learner for ``config.method`` trained at ``config.level`` on ``dataset``'s
    train split (``config.data`` names the data; ``dataset`` is it, already loaded).

    ``per_class`` keeps that many training images per class at ``level``
    (``dataset.subsample``, seeded by ``seed``); the ids used are in ``learn.train_ids``.
    ``lr_groups`` and ``lr_decay`` choose the reading of the 10x group and of the decay
    timing (``inatloc_nb.training.protocol``; the reference code's by default).
    ``amp``, ``channels_last``, ``compile``: device switches (``inatloc_nb.training.device``; None =
    the device's default); ``prepared``: cache root of a prepared copy (``build_dataloaders``).
    Extra attributes: ``learn.method``, ``learn.schedule``, ``learn.level``,
    ``learn.label_set`` (the level resolved, ``Hierarchy.resolve``), ``learn.base_lrs``,
    ``learn.device_settings``. Train with ``train(learn)``.
    """
    from inatloc_nb.training.methods import get_method

    c = config
    method = get_method(c.method, **c.method_params)
    check_support(method.name, c.backbone)
    sched = Schedule.parse(c.schedule, c.lr_decay)
    lr, level, seed = c.require_lr(), c.level, c.seed
    labels = dataset.hierarchy.resolve(level)
    settings = resolve_settings(c.device, c.amp, c.channels_last, c.compile, c.cuda_graphs)
    device = torch.device(settings.device)
    set_seed(seed, reproducible=True)
    train_ids = None if c.per_class is None else dataset.subsample("train", level, c.per_class, seed)
    dls = build_dataloaders(dataset, level, c.image_size, c.batch_size, train_ids, device, c.num_workers, c.prepared)
    method.bind(dataset.hierarchy, level)
    features, n_channels = build_backbone(c.backbone, c.pretrained, c.weights)
    model = prepare_model(method.build_model(features, n_channels, len(labels)), settings)
    base_lrs = [lr, 10 * lr]
    learn = Learner(
        dls,
        model,
        loss_func=method.loss_func() or CrossEntropyLossFlat(),
        opt_func=sgd_nesterov,
        lr=lr,
        splitter=partial(param_groups, lr_groups=c.lr_groups),
        metrics=accuracy,
        wd_bn_bias=True,
        cbs=[Reseed(seed), StepLR(base_lrs, sched), PreparedValidation("val"), *method.callbacks()],
    )
    learn.recorder.train_metrics = True
    progress.install(learn)  # bars in terminals and notebooks, one line per epoch in logs
    apply_settings(learn, settings)
    learn.method, learn.schedule, learn.level, learn.base_lrs = method, sched, level, base_lrs
    learn.train_ids, learn.label_set = train_ids, labels
    return learn


def train(learn: Learner) -> Learner:
    """Fit ``learn`` for its schedule's epochs (LRs set per epoch by ``StepLR``); a bad image
    stops training with an ``ImageError`` naming it, also from a worker process."""
    with clear_worker_errors():
        learn.fit(learn.schedule.epochs)
    return learn


def history_rows(learn: Learner) -> list[dict[str, float]]:
    """The learning curve from the fastai Recorder: one dict per epoch with ``epoch``,
    ``train_loss``, ``train_accuracy``, ``valid_loss`` and ``valid_accuracy``."""
    names = list(learn.recorder.metric_names)
    rows = []
    for epoch, values in enumerate(learn.recorder.values):
        row: dict[str, Any] = {"epoch": epoch}
        row.update({n: float(v) for n, v in zip(names[1 : 1 + len(values)], values, strict=True)})
        rows.append(row)
    return rows


__all__ = [
    "Schedule",
    "StepLR",
    "Reseed",
    "ValidationTimer",
    "build_dataloaders",
    "build_learner",
    "history_rows",
    "is_classifier_param",
    "param_groups",
    "reference_fast_prefixes",
    "sgd_nesterov",
    "labelled_items",
    "train",
]
