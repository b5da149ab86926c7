"""One experiment run: train at a label granularity, extract CAMs, score them, write a folder.

``run_experiment(config, out_dir)`` writes (each file atomically, ``metrics.json`` last so
that its presence means the run finished)::

    params.json        the RunConfig, the number of classes, the training image ids when
                       subsampled, library versions and the device
    model.pth          the scored model's state dict (``load_run_model`` rebuilds it): with
                       ``select_epoch="best"`` that of the epoch with the best D_f MaxBoxAccV2
                       (``inatloc_nb.epoch_select``), else the last epoch's
    history.csv        per-epoch train/valid loss and accuracy (valid = D_f at the
                       training level): the learning curve
    cams/<split>.npz   ``CamSet`` of every evaluated split (raw float32 CAMs at the network's
                       resolution, compressed; ``inatloc_nb.cam``)
    analysis.parquet   per image: ``image_id, split, box_area_ratio, gt_activation_ratio,
                       n_components`` at the split's optimal threshold for IoU 0.5
    timings.json       training and CAM-extraction images/s and seconds, and the seconds
                       spent scoring D_f between epochs (``select_epoch_seconds``)
    metrics.json       D_test: ``maxboxacc_v2``, ``per_iou``, ``optimal_threshold``, ``top1``,
                       ``n_images``; run identity: ``level``, ``method``, ``lr``, ``seed``,
                       ``per_class``, ``n_train_images``; ``select_epoch``, ``selected_epoch``
                       and, with ``"best"``, ``val_maxboxacc_v2_per_epoch`` /
                       ``val_top1_per_epoch``; the same metric keys for every
                       other evaluated split under its name (``"val"`` = D_f)

Baseline methods (``BASELINES``) are delegated to ``inatloc_nb.baselines.run_baseline``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb import validate
from inatloc_nb.errors import InatlocError
from inatloc_nb.io import atomic_path, atomic_write_json, atomic_write_parquet, atomic_write_text, make_temp_dir
from inatloc_nb.protocol import check_reading

if TYPE_CHECKING:
    from torch import nn

    from inatloc_nb.cam import CamSet
    from inatloc_nb.data import WSOLDataset
    from inatloc_nb.methods import WSOLMethod
    from inatloc_nb.metrics import BoxAccuracyResult

#: Methods that are not trained WSOL classifiers; ``run_experiment`` hands them to
#: ``inatloc_nb.baselines.run_baseline``.
BASELINES = ("center", "cam-agg", "fsl-seg", "fsl-det")
#: Prefix of ``RunConfig.data`` values naming a generated synthetic dataset.
SYNTH_PREFIX = "synth:"
#: IoU threshold (percent) whose optimal threshold the per-image analysis uses.
ANALYSIS_IOU = 50
#: How to redo a run whose files are damaged (``{run}``: the run folder).
REDO_RUN = "delete the run folder {run} and run it again (a sweep reruns missing runs)"


@dataclass
class RunConfig:
    """Everything that defines a run.

    ``data``: a Choe-format metadata folder, a shipped dataset name (``cub``, ``ilsvrc``,
    ``inatloc500``; give ``image_root``), or ``"synth:PRESET[:SEED]"`` (``synth:tiny``,
    ``synth:demo``), generated once into the cache folder (``$INATLOC_NB_CACHE`` or
    ``~/.cache/inatloc-nb``). ``image_root`` defaults to the folder's ``images/``.
    ``method_params`` override the method's Table A4 hyperparameters. ``schedule``:
    ``"2epoch"``, ``"10epoch"`` or a number of epochs. ``lr_groups`` / ``lr_decay``: which
    parameters get 10x the LR and when the step schedule decays; ``"reference"`` (the
    reference code's, default) or the paper text's reading, ``"classifier"`` / ``"text"``
    (docs/protocol.md). ``select_epoch``: ``"best"`` (the reference's, default) scores the
    model of the epoch (0 = before training) with the best D_f MaxBoxAccV2, ``"last"`` the
    model after the last epoch (``inatloc_nb.epoch_select``). ``model_run``: a finished species-level
    run folder a baseline may reuse (CAM-Agg). ``device=None`` picks CUDA when available.
    ``amp``, ``channels_last``, ``compile``: device switches, None = the device's default
    (``inatloc_nb.device``). ``prepared``: cache root of a prepared copy of the data
    (``inatloc-nb prepare``), read instead of the original images; when None,
    ``$INATLOC_NB_PREPARED`` (set by a sweep's ``prepared:``) is used if set.
    ``allow_split_overlap`` accepts image ids shared by D_w and D_f / D_test (refused by default).
    """

    data: str
    level: str = "species"
    method: str = "cam"
    method_params: dict[str, Any] = field(default_factory=dict)
    lr: float | None = 1e-3
    schedule: str | int = "2epoch"
    lr_groups: str = "reference"
    lr_decay: str = "reference"
    select_epoch: str = "best"
    backbone: str = "resnet50"
    pretrained: bool = True
    weights: str | None = None
    image_size: int = 224
    batch_size: int = 32
    per_class: int | None = None
    seed: int = 0
    image_root: str | None = None
    eval_splits: tuple[str, ...] = ("val", "test")
    model_run: str | None = None
    num_workers: int | None = None
    device: str | None = None
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    prepared: str | None = None
    allow_split_overlap: bool = False

    def __post_init__(self) -> None:
        self.eval_splits = tuple(self.eval_splits)
        if self.method not in BASELINES and self.lr is None:
            raise InatlocError(f"method {self.method!r} needs a learning rate (lr)")
        self.validate()

    def validate(self) -> None:
        """Check every field's type and range; ``InatlocError`` names the field and the allowed range."""
        for name in ("data", "level", "method", "backbone"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise InatlocError(f"RunConfig.{name}: expected a non-empty string, got {getattr(self, name)!r}")
        if self.lr is not None:
            self.lr = validate.positive_float(self.lr, "RunConfig.lr")
        self.schedule = validate.schedule(self.schedule, "RunConfig.schedule")
        for name in ("lr_groups", "lr_decay", "select_epoch"):
            check_reading(name, getattr(self, name))
        for name in ("pretrained", "allow_split_overlap"):
            if not isinstance(getattr(self, name), bool):
                raise InatlocError(f"RunConfig.{name}: expected true or false, got {getattr(self, name)!r}")
        validate.integer(self.image_size, "RunConfig.image_size", *validate.IMAGE_SIZE_RANGE)
        validate.integer(self.batch_size, "RunConfig.batch_size", *validate.BATCH_SIZE_RANGE)
        validate.optional_integer(self.per_class, "RunConfig.per_class", 1)
        validate.integer(self.seed, "RunConfig.seed", 0, 2**32 - 1)
        validate.optional_integer(self.num_workers, "RunConfig.num_workers", 0, 1024)
        self.device = validate.device(self.device, "RunConfig.device")
        for name in ("amp", "channels_last", "compile"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise InatlocError(f"RunConfig.{name}: expected true, false or null (device default), "
                                   f"got {getattr(self, name)!r}")
        if self.prepared is not None and (not isinstance(self.prepared, str) or not self.prepared):
            raise InatlocError(f"RunConfig.prepared: expected a cache folder path, got {self.prepared!r}")
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise InatlocError(f"RunConfig.weights: expected a weights file path, got {self.weights!r}")
        if not isinstance(self.method_params, dict):
            raise InatlocError(f"RunConfig.method_params: expected a mapping, got {self.method_params!r}")
        if not self.eval_splits or not all(isinstance(s, str) and s for s in self.eval_splits):
            raise InatlocError(f"RunConfig.eval_splits: expected split names such as val, test, got {self.eval_splits!r}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``from_dict`` inverts it)."""
        out = dataclasses.asdict(self)
        out["eval_splits"] = list(self.eval_splits)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from a dict; unknown keys raise ``InatlocError`` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InatlocError(f"unknown run parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        if "data" not in values:
            raise InatlocError("run parameters need 'data'")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> RunConfig:
        """Read a config from a JSON file (e.g. a run folder's ``params.json``)."""
        try:
            values = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InatlocError(f"{path}: cannot read run parameters ({exc})") from None
        if not isinstance(values, dict):
            raise InatlocError(f"{path}: expected a JSON object of run parameters")
        return cls.from_dict(values.get("config", values))


def cache_dir() -> Path:
    """Folder for generated data: ``$INATLOC_NB_CACHE`` or ``~/.cache/inatloc-nb``."""
    return Path(os.environ.get("INATLOC_NB_CACHE") or Path.home() / ".cache" / "inatloc-nb")


def synth_folder(spec: str) -> Path:
    """The folder of ``"synth:PRESET[:SEED]"``, generated on first use.

    Generation happens in a temporary sibling folder that is renamed into place, so
    concurrent runs never see a half-written dataset.
    """
    from inatloc_nb.synth import generate

    preset, _, seed_text = spec[len(SYNTH_PREFIX):].partition(":")
    try:
        seed = int(seed_text or 0)
    except ValueError:
        raise InatlocError(f"bad synthetic data spec {spec!r}: use synth:PRESET[:SEED]") from None
    target = cache_dir() / "synth" / f"{preset}-seed{seed}"
    if (target / "synth_config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(f".{target.name}.", target.parent)
    try:
        generate(preset, seed, out=tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "synth_config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_dataset(data: str, image_root: str | Path | None = None, allow_overlap: bool = False) -> WSOLDataset:
    """The dataset named by a ``RunConfig.data`` value (see ``RunConfig``); ``allow_overlap``
    accepts image ids shared by train and val/test."""
    from inatloc_nb.data import SHIPPED, WSOLDataset, load_shipped

    if data.startswith(SYNTH_PREFIX):
        folder = synth_folder(data)
        return WSOLDataset.from_folder(folder, image_root=image_root or folder / "images")
    if data in SHIPPED:
        return load_shipped(data, image_root=image_root)
    folder = Path(data)
    if not folder.is_dir():
        raise InatlocError(
            f"data {data!r} is neither a metadata folder, a shipped dataset "
            f"({', '.join(SHIPPED)}) nor synth:tiny / synth:demo"
        )
    if image_root is None and (folder / "images").is_dir():
        image_root = folder / "images"
    return WSOLDataset.from_folder(folder, image_root=image_root, allow_overlap=allow_overlap)


def _split_metrics(result: BoxAccuracyResult, cams: CamSet) -> dict[str, Any]:
    return {
        "maxboxacc_v2": result.mean,
        "per_iou": {str(d): v for d, v in result.per_iou.items()},
        "optimal_threshold": {str(d): v for d, v in result.optimal_threshold.items()},
        "top1": cams.top1,
        "n_images": len(cams),
    }


def package_versions() -> dict[str, str]:
    import fastai
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "fastai": fastai.__version__}


def build_model_for(config: RunConfig, n_classes: int, pretrained: bool | None = None) -> tuple[nn.Module, WSOLMethod]:
    """The untrained model of ``config`` (its method's ``build_model`` on its backbone)."""
    from inatloc_nb.methods import get_method
    from inatloc_nb.models import build_backbone

    method = get_method(config.method, **config.method_params)
    if method.needs_hierarchy:
        method.bind(load_dataset(config.data, config.image_root).hierarchy, config.level)
    pretrained = config.pretrained if pretrained is None else pretrained
    features, n_channels = build_backbone(config.backbone, pretrained, config.weights if pretrained else None)
    return method.build_model(features, n_channels, n_classes), method


def load_run_model(run_dir: str | Path, device: str | None = None) -> tuple[nn.Module, RunConfig, WSOLMethod]:
    """The trained model of a finished run folder, in eval mode, with its config and method."""
    import torch

    from inatloc_nb.models import default_device, prepare_for_device

    run_dir = Path(run_dir)
    weights_path = run_dir / "model.pth"
    params = read_run_params(run_dir)
    params_path = run_dir / "params.json"
    try:
        config = RunConfig.from_dict(params["config"])
        n_classes = validate.integer(params["n_classes"], "n_classes", 1)
    except (KeyError, TypeError, InatlocError) as exc:
        raise InatlocError(f"{params_path}: not the parameters of a training run ({exc}); "
                           f"{REDO_RUN.format(run=run_dir)}") from None
    if not weights_path.is_file():
        raise InatlocError(f"{weights_path}: missing; is {run_dir} a finished training run? "
                           f"{REDO_RUN.format(run=run_dir)}")
    model, method = build_model_for(config, n_classes, pretrained=False)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # truncated or foreign file: zip, pickle, EOF or key/shape errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InatlocError(f"{weights_path}: damaged or not the weights of this run ({first}); "
                           f"{REDO_RUN.format(run=run_dir)}") from None
    model = prepare_for_device(model, default_device() if device is None else device)
    return model.eval(), config, method


def read_run_params(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``params.json`` as a dict; ``InatlocError`` naming the file (and how to
    redo the run) when it is missing, truncated or not a JSON object."""
    path = Path(run_dir) / "params.json"
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InatlocError(f"{path}: missing; is {run_dir} a finished run folder?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InatlocError(f"{path}: damaged ({exc}); {REDO_RUN.format(run=run_dir)}") from None
    if not isinstance(params, dict):
        raise InatlocError(f"{path}: expected a JSON object; {REDO_RUN.format(run=run_dir)}")
    return params


def run_experiment(config: RunConfig, out_dir: str | Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, extract and score CAMs per ``config``; write the run folder; return metrics.json.

    A bad image stops the run with an ``ImageError`` naming it, also when it is read by a
    data-loading worker process.
    """
    from inatloc_nb.images import clear_worker_errors

    validate.device_available(config.device, "RunConfig.device")
    with clear_worker_errors():
        return _run_experiment(config, out_dir, say)


def _run_experiment(config: RunConfig, out_dir: str | Path, say: Callable[[str], None]) -> dict[str, Any]:
    if config.method in BASELINES:
        from inatloc_nb.baselines import run_baseline

        return run_baseline(config, out_dir, say=say)

    say(f"loading data {config.data}")
    dataset = load_dataset(config.data, config.image_root, config.allow_split_overlap)

    import polars as pl
    import torch

    from inatloc_nb.baselines.runfolder import analysis_frame
    from inatloc_nb.cam import extract_cams, score_cams
    from inatloc_nb.epoch_select import SELECT_SPLIT, EpochSelect
    from inatloc_nb.learner import build_learner, history_rows, train
    from inatloc_nb.pipeline import PREPARED_ENV

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prepared = config.prepared or os.environ.get(PREPARED_ENV) or None
    learn = build_learner(
        dataset, config.level, method=config.method, lr=config.lr, seed=config.seed,
        per_class=config.per_class, schedule=config.schedule, backbone=config.backbone,
        pretrained=config.pretrained, image_size=config.image_size, batch_size=config.batch_size,
        weights=config.weights,
        device=config.device, num_workers=config.num_workers, method_params=config.method_params,
        lr_groups=config.lr_groups, lr_decay=config.lr_decay, amp=config.amp,
        channels_last=config.channels_last, compile=config.compile, prepared=prepared,
    )
    n_train = len(learn.dls.train_ds)
    n_classes = len(dataset.hierarchy.level_names(config.level))
    atomic_write_json(out / "params.json", {
        "config": config.to_dict(), "dataset": dataset.name, "n_classes": n_classes,
        "n_train_images": n_train, "train_image_ids": learn.train_ids,
        "method_hparams": learn.method.hparams, "device": str(learn.dls.device),
        "device_settings": learn.device_settings.to_dict(), "num_workers": learn.dls.train.fake_l.num_workers,
        "prepared": prepared,
        "versions": package_versions(),
    })

    say(f"training {config.method} at {config.level} ({n_classes} classes, {n_train} images, "
        f"{learn.schedule.epochs} epochs, lr {config.lr:g})")
    selector = EpochSelect(dataset, config.level) if config.select_epoch == "best" else None
    start = time.perf_counter()
    if selector is None:
        train(learn)
    else:
        with learn.added_cbs(selector):
            train(learn)
        say(f"selected epoch {selector.selected_epoch} of {learn.schedule.epochs} "
            f"(D_f MaxBoxAccV2 per epoch: {', '.join(f'{v:.1f}' for v in selector.scores)})")
    select_s = 0.0 if selector is None else selector.seconds
    train_s = time.perf_counter() - start - select_s
    with atomic_path(out / "model.pth") as tmp:
        torch.save(learn.model.state_dict(), tmp)
    atomic_write_text(out / "history.csv", pl.DataFrame(history_rows(learn)).write_csv())

    metrics: dict[str, Any] = {}
    analyses = []
    timings: dict[str, Any] = {
        "train_seconds": train_s,
        "train_images_per_s": n_train * learn.schedule.epochs / train_s,
        "select_epoch_seconds": select_s,
    }
    for split in config.eval_splits:
        if selector is not None and split == SELECT_SPLIT:  # the selected epoch's, already scored
            cams, result, cam_s = selector.best_cams, selector.best_result, selector.best_cam_seconds
        else:
            say(f"extracting CAMs of {split}")
            start = time.perf_counter()
            cams, result = extract_cams(learn, dataset, split, config.level), None
            cam_s = time.perf_counter() - start
        cams.save(out / "cams" / f"{split}.npz")
        if result is None:
            say(f"scoring {split}")
            result = score_cams(cams, dataset)
        metrics[split] = _split_metrics(result, cams)
        analyses.append(analysis_frame(cams.iter_maps(), dataset.gt_boxes(split), cams.image_ids, result, split))
        timings[f"cam_{split}_seconds"] = cam_s
        timings[f"cam_{split}_images_per_s"] = len(cams) / cam_s
    atomic_write_parquet(out / "analysis.parquet", pl.concat(analyses))
    atomic_write_json(out / "timings.json", timings)

    summary = metrics.pop("test", {})
    summary.update(metrics)
    summary.update(level=config.level, method=config.method, lr=config.lr, seed=config.seed,
                   per_class=config.per_class, n_train_images=n_train, select_epoch=config.select_epoch)
    summary.update({"selected_epoch": learn.schedule.epochs} if selector is None else selector.summary())
    atomic_write_json(out / "metrics.json", summary)
    say(f"done: {out}")
    return summary
