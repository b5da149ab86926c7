"""What defines a run: :class:`RunConfig`, the dataset a ``data`` value names
(:func:`load_dataset`, generating ``synth:PRESET[:SEED]`` data once into the cache folder) and
the names shared by training runs and baselines (``BASELINES``, ``ANALYSIS_IOU``).
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb import validate
from inatloc_nb.env import CACHE_ENV
from inatloc_nb.errors import InatlocError
from inatloc_nb.io import make_temp_dir
from inatloc_nb.method_support import check_support
from inatloc_nb.protocol import check_reading

if TYPE_CHECKING:
    from inatloc_nb.data import WSOLDataset

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
    ``"2epoch"``, ``"10epoch"`` or a number of epochs. ``lr_groups`` / ``lr_decay``: which
    parameters get 10x the LR and when the step schedule decays; ``"reference"`` (the
    reference code's, default) or the paper text's reading, ``"classifier"`` / ``"text"``
    (docs/protocol.md). ``select_epoch``: ``"last"`` (the reference's default, its
    ``--eval_checkpoint_type last``) scores the model after the last epoch, ``"best"`` the model
    of the epoch (0 = before training) with the best D_f MaxBoxAccV2 (``inatloc_nb.epoch_select``). ``model_run``: a finished species-level
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
    select_epoch: str = "last"
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
        check_support(self.method, self.backbone, "RunConfig")
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
        if self.weights is not None and (not isinstance(self.weights, str) or not self.weights):
            raise InatlocError(f"RunConfig.weights: expected a weights file path, got {self.weights!r}")
        for name in ("amp", "channels_last", "compile"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), bool):
                raise InatlocError(f"RunConfig.{name}: expected true, false or null (device default), "
                                   f"got {getattr(self, name)!r}")
        if self.prepared is not None and (not isinstance(self.prepared, str) or not self.prepared):
            raise InatlocError(f"RunConfig.prepared: expected a cache folder path, got {self.prepared!r}")
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
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "inatloc-nb")


def parse_synth_spec(spec: str) -> tuple[str, int]:
    """``(preset, seed)`` of ``"synth:PRESET[:SEED]"`` (seed 0 when omitted); ``InatlocError``
    for an unknown preset or a seed that is not a non-negative integer."""
    from inatloc_nb.synth import PRESETS

    preset, _, seed_text = spec[len(SYNTH_PREFIX):].partition(":") if spec.startswith(SYNTH_PREFIX) else ("", "", "")
    if preset not in PRESETS or not (seed_text or "0").isdigit():
        raise InatlocError(f"unknown synthetic preset or bad spec {spec!r}: use synth:PRESET[:SEED] with PRESET one of "
                           f"{', '.join(PRESETS)} and SEED a non-negative integer")
    return preset, int(seed_text or 0)


def synth_folder(spec: str) -> Path:
    """The folder of ``"synth:PRESET[:SEED]"``, generated on first use.

    Generation happens in a temporary sibling folder that is renamed into place, so
    concurrent runs never see a half-written dataset.
    """
    from inatloc_nb.synth import generate

    preset, seed = parse_synth_spec(spec)
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


def package_versions() -> dict[str, str]:
    """The Python, torch, torchvision and fastai versions a run records in ``params.json``."""
    import fastai
    import torch
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "fastai": fastai.__version__}
