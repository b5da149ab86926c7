"""One experiment run: train at a label granularity, extract CAMs, score them, write a folder.

``run_experiment(config, out_dir)`` writes (each file atomically, ``metrics.json`` last so
that its presence means the run finished)::

    params.json        the RunConfig, the number of classes, the training image ids when
                       subsampled, library versions and the device
    model.pth          the trained model's state dict (``load_run_model`` rebuilds it)
    history.csv        per-epoch train/valid loss and accuracy (valid = D_f at the
                       training level): the learning curve
    cams/<split>.npz   ``CamSet`` of every evaluated split
    analysis.parquet   per image: ``image_id, split, box_area_ratio, gt_activation_ratio,
                       n_components`` at the split's optimal threshold for IoU 0.5
    timings.json       training and CAM-extraction images/s and seconds
    metrics.json       D_test: ``maxboxacc_v2``, ``per_iou``, ``optimal_threshold``, ``top1``,
                       ``n_images``; run identity: ``level``, ``method``, ``lr``, ``seed``,
                       ``per_class``, ``n_train_images``; the same metric keys for every
                       other evaluated split under its name (``"val"`` = D_f)

Baseline methods (``BASELINES``) are delegated to ``inatloc_nb.baselines.run_baseline``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb.errors import InatlocError
from inatloc_nb.io import atomic_path, atomic_write_json, atomic_write_parquet, atomic_write_text

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


@dataclass
class RunConfig:
    """Everything that defines a run.

    ``data``: a Choe-format metadata folder, a shipped dataset name (``cub``, ``ilsvrc``,
    ``inatloc500``; give ``image_root``), or ``"synth:PRESET[:SEED]"`` (``synth:tiny``,
    ``synth:demo``), generated once into the cache folder (``$INATLOC_NB_CACHE`` or
    ``~/.cache/inatloc-nb``). ``image_root`` defaults to the folder's ``images/``.
    ``method_params`` override the method's Table A4 hyperparameters. ``schedule``:
    ``"2epoch"``, ``"10epoch"`` or a number of epochs. ``model_run``: a finished species-level
    run folder a baseline may reuse (CAM-Agg). ``device=None`` picks CUDA when available.
    """

    data: str
    level: str = "species"
    method: str = "cam"
    method_params: dict[str, Any] = field(default_factory=dict)
    lr: float | None = 1e-3
    schedule: str | int = "2epoch"
    backbone: str = "resnet50"
    pretrained: bool = True
    image_size: int = 224
    batch_size: int = 32
    per_class: int | None = None
    seed: int = 0
    image_root: str | None = None
    eval_splits: tuple[str, ...] = ("val", "test")
    model_run: str | None = None
    num_workers: int | None = None
    device: str | None = None

    def __post_init__(self) -> None:
        self.eval_splits = tuple(self.eval_splits)
        if self.method not in BASELINES and self.lr is None:
            raise InatlocError(f"method {self.method!r} needs a learning rate (lr)")

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
        except (OSError, json.JSONDecodeError) as exc:
            raise InatlocError(f"{path}: cannot read run parameters ({exc})") from exc
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
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


def load_dataset(data: str, image_root: str | Path | None = None) -> WSOLDataset:
    """The dataset named by a ``RunConfig.data`` value (see ``RunConfig``)."""
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
    return WSOLDataset.from_folder(folder, image_root=image_root)


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
    features, n_channels = build_backbone(config.backbone, config.pretrained if pretrained is None else pretrained)
    return method.build_model(features, n_channels, n_classes), method


def load_run_model(run_dir: str | Path, device: str | None = None) -> tuple[nn.Module, RunConfig, WSOLMethod]:
    """The trained model of a finished run folder, in eval mode, with its config and method."""
    import torch

    from inatloc_nb.models import default_device, prepare_for_device

    run_dir = Path(run_dir)
    params_path, weights_path = run_dir / "params.json", run_dir / "model.pth"
    for path in (params_path, weights_path):
        if not path.is_file():
            raise InatlocError(f"{path}: missing; is {run_dir} a finished training run?")
    params = json.loads(params_path.read_text(encoding="utf-8"))
    config = RunConfig.from_dict(params["config"])
    model, method = build_model_for(config, params["n_classes"], pretrained=False)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True))
    model = prepare_for_device(model, default_device() if device is None else device)
    return model.eval(), config, method


def run_experiment(config: RunConfig, out_dir: str | Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, extract and score CAMs per ``config``; write the run folder; return metrics.json."""
    if config.method in BASELINES:
        from inatloc_nb.baselines import run_baseline

        return run_baseline(config, out_dir, say=say)

    say(f"loading data {config.data}")
    dataset = load_dataset(config.data, config.image_root)

    import polars as pl
    import torch

    from inatloc_nb.cam import extract_cams, score_cams
    from inatloc_nb.learner import build_learner, history_rows, train
    from inatloc_nb.metrics import analysis_table

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    learn = build_learner(
        dataset, config.level, method=config.method, lr=config.lr, seed=config.seed,
        per_class=config.per_class, schedule=config.schedule, backbone=config.backbone,
        pretrained=config.pretrained, image_size=config.image_size, batch_size=config.batch_size,
        device=config.device, num_workers=config.num_workers, method_params=config.method_params,
    )
    n_train = len(learn.dls.train_ds)
    n_classes = len(dataset.hierarchy.level_names(config.level))
    atomic_write_json(out / "params.json", {
        "config": config.to_dict(), "dataset": dataset.name, "n_classes": n_classes,
        "n_train_images": n_train, "train_image_ids": learn.train_ids,
        "method_hparams": learn.method.hparams, "device": str(learn.dls.device),
        "versions": package_versions(),
    })

    say(f"training {config.method} at {config.level} ({n_classes} classes, {n_train} images, "
        f"{learn.schedule.epochs} epochs, lr {config.lr:g})")
    start = time.perf_counter()
    train(learn)
    train_s = time.perf_counter() - start
    with atomic_path(out / "model.pth") as tmp:
        torch.save(learn.model.state_dict(), tmp)
    atomic_write_text(out / "history.csv", pl.DataFrame(history_rows(learn)).write_csv())

    metrics: dict[str, Any] = {}
    analyses = []
    timings: dict[str, Any] = {
        "train_seconds": train_s,
        "train_images_per_s": n_train * learn.schedule.epochs / train_s,
    }
    for split in config.eval_splits:
        say(f"extracting CAMs of {split}")
        start = time.perf_counter()
        cams = extract_cams(learn, dataset, split, config.level)
        cam_s = time.perf_counter() - start
        cams.save(out / "cams" / f"{split}.npz")
        say(f"scoring {split}")
        result = score_cams(cams, dataset)
        metrics[split] = _split_metrics(result, cams)
        analyses.append(
            analysis_table(cams.maps, dataset.gt_boxes(split), cams.image_ids,
                           result.optimal_threshold[ANALYSIS_IOU])
            .rename({"gt_activation": "gt_activation_ratio"})
            .with_columns(split=pl.lit(split))
        )
        timings[f"cam_{split}_seconds"] = cam_s
        timings[f"cam_{split}_images_per_s"] = len(cams) / cam_s
    analysis = pl.concat(analyses).select(
        "image_id", "split", "box_area_ratio", "gt_activation_ratio", "n_components"
    )
    atomic_write_parquet(out / "analysis.parquet", analysis)
    atomic_write_json(out / "timings.json", timings)

    summary = metrics.pop("test", {})
    summary.update(metrics)
    summary.update(level=config.level, method=config.method, lr=config.lr, seed=config.seed,
                   per_class=config.per_class, n_train_images=n_train)
    atomic_write_json(out / "metrics.json", summary)
    say(f"done: {out}")
    return summary
