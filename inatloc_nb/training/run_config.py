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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb.core import validate
from inatloc_nb.core.atomic import make_temp_dir
from inatloc_nb.core.env import CACHE_ENV
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.method_support import BACKBONE_LAYOUTS, METHOD_NAMES, check_support
from inatloc_nb.training.protocol import LR_DECAYS, LR_GROUPS, SELECT_EPOCHS, check_reading

if TYPE_CHECKING:
    from inatloc_nb.datasets.dataset import WSOLDataset

#: Methods that are not trained WSOL classifiers; ``run_experiment`` hands them to
#: ``inatloc_nb.runs.baselines.run_baseline``.
BASELINES = ("center", "cam-agg", "fsl-seg", "fsl-det")
#: Prefix of ``RunConfig.data`` values naming a generated synthetic dataset.
SYNTH_PREFIX = "synth:"
#: IoU threshold (percent) whose optimal threshold the per-image analysis uses.
ANALYSIS_IOU = 50


def _name(value: Any, name: str, choices: tuple[str, ...] | None = None, kind: str = "value") -> str:
    if not isinstance(value, str) or not value:
        raise InatlocError(f"{name}: expected a non-empty string, got {value!r}")
    if choices is not None and value not in choices:
        raise InatlocError(f"{name}: unknown {kind} {value!r}; expected one of {', '.join(choices)}")
    return value


def _optional_text(what: str) -> Callable[[Any, str], str | None]:
    def check(value: Any, name: str) -> str | None:
        if value is not None and (not isinstance(value, str) or not value):
            raise InatlocError(f"{name}: expected {what}, got {value!r}")
        return value
    return check


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InatlocError(f"{name}: expected true or false, got {value!r}")
    return value


def _switch(value: Any, name: str) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise InatlocError(f"{name}: expected true, false or null (device default), got {value!r}")
    return value


def _reading(option: str) -> Callable[[Any, str], str]:
    def check(value: Any, name: str) -> str:
        try:
            return check_reading(option, value)
        except InatlocError as exc:
            raise InatlocError(f"{name}: {exc}") from None
    return check


def _per_class(value: Any, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InatlocError(f"{name}: expected an integer >= 1 or null (all images), got {value!r}")
    return value


def _optional_lr(value: Any, name: str) -> float | None:
    return None if value is None else validate.positive_float(value, name)


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InatlocError(f"{name}: expected a mapping, got {value!r}")
    return value


def _splits(value: Any, name: str) -> tuple[str, ...]:
    if isinstance(value, str) or not value or not all(isinstance(s, str) and s for s in value):
        raise InatlocError(f"{name}: expected split names such as val, test, got {value!r}")
    return tuple(value)


def trained_methods() -> tuple[str, ...]:
    """The WSOL training methods of the method registry (``inatloc_nb.training.method_support``)."""
    return METHOD_NAMES


def backbones() -> tuple[str, ...]:
    """The backbones of the backbone registry (``inatloc_nb.training.method_support``)."""
    return tuple(BACKBONE_LAYOUTS)


def methods() -> tuple[str, ...]:
    """Every ``RunConfig.method``: the trained methods and the baselines."""
    return (*trained_methods(), *BASELINES)


#: ``param(..., identity=ALWAYS)``: the parameter is part of every run's identity.
ALWAYS = object()


def param(default: Any = dataclasses.MISSING, *, check: Callable[[Any, str], Any], help: str,
          choices: Callable[[], tuple[str, ...]] | None = None, grid: str | None = None,
          identity: Any = ALWAYS, cli: dict[str, Any] | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A ``RunConfig`` field and what every entry point needs to know of it (its metadata).

    ``check(value, name)`` validates and normalises a value (``InatlocError`` naming ``name``);
    ``help``: the command-line help; ``choices``: the allowed values (from a registry), offered
    by the command line. ``grid``: how a sweep configuration sets it, ``"scalar"`` (one value
    per grid, the key being the field's name) or the key of a list the grid multiplies (e.g.
    ``"lrs"``); None: not set by sweeps. ``identity``: for swept parameters, the value at which
    the parameter is left out of a run's identity (``inatloc_nb.sweep.RunSpec.run_id``), so
    that runs made before it existed keep their ids; ``ALWAYS`` for the original parameters.
    ``cli``: argparse settings replacing the derived ones (``{"flag": ...}`` renames the
    option; None: the command line offers it as ``--field-name``; ``{"skip": True}``: not offered).
    """
    metadata = {"check": check, "help": help, "choices": choices, "grid": grid, "identity": identity,
                "cli": cli or {}}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class RunConfig:
    """Everything that defines a run.

    ``data``: a Choe-format metadata folder, a shipped dataset name (``cub``, ``ilsvrc``,
    ``inatloc500``; give ``image_root``), or ``"synth:PRESET[:SEED]"`` (``synth:tiny``,
    ``synth:demo``), generated once into the cache folder (``$INATLOC_NB_CACHE`` or
    ``~/.cache/inatloc-nb``). ``image_root`` defaults to the folder's ``images/``.
    ``method_params`` override the method's Table A4 hyperparameters. ``lr``: None for the
    training-free baselines, and for a sweep run whose lr is still to be selected (a trained
    run needs one: ``run_experiment`` refuses None). ``schedule``:
    ``"2epoch"``, ``"10epoch"`` or a number of epochs. ``lr_groups`` / ``lr_decay``: which
    parameters get 10x the LR and when the step schedule decays; ``"reference"`` (the
    reference code's, default) or the paper text's reading, ``"classifier"`` / ``"text"``
    (docs/protocol.md). ``select_epoch``: ``"last"`` (the reference's default, its
    ``--eval_checkpoint_type last``) scores the model after the last epoch, ``"best"`` the model
    of the epoch (0 = before training) with the best D_f MaxBoxAccV2 (``inatloc_nb.training.epoch_select``). ``model_run``: a finished species-level
    run folder a baseline may reuse (CAM-Agg). ``device=None`` picks CUDA when available.
    ``amp``, ``channels_last``, ``compile``, ``cuda_graphs``: device switches, None = the device's default
    (``inatloc_nb.training.device``). ``prepared``: cache root of a prepared copy of the data
    (``inatloc-nb prepare``), read instead of the original images; when None,
    ``$INATLOC_NB_PREPARED`` (set by a sweep's ``prepared:``) is used if set.
    ``allow_split_overlap`` accepts image ids shared by D_w and D_f / D_test (refused by default).

    Each field's metadata (:func:`param`) says how it is checked, offered on the command line,
    swept and identified: the command line (``inatloc_nb.cli.run_options``), the sweep
    (``inatloc_nb.sweep``) and the results tables (``inatloc_nb.runs.results.RUN_PARAMS``) read it.
    """

    data: str = param(check=_name, help="metadata folder, shipped dataset (cub, ilsvrc, inatloc500) or "
                      "synth:tiny / synth:demo")
    level: str = param("species", check=_name, grid="levels",
                       help="training label level, e.g. species, genus, order, or mixed:FILE")
    method: str = param("cam", check=lambda v, n: _name(v, n, methods(), "method"), choices=trained_methods,
                        grid="methods", help="WSOL method (which backbones each runs on: the table below)")
    lr: float | None = param(1e-3, check=_optional_lr, grid="lrs", cli={"metavar": "LR"},
                             help="learning rate (the 10x group gets 10 times it, see --lr-groups)")
    seed: int = param(0, check=lambda v, n: validate.integer(v, n, 0, 2**32 - 1), grid="seeds",
                      help="seed of the subset, the initialisation and the data order")
    per_class: int | None = param(None, check=_per_class, grid="per_class", cli={"metavar": "N"},
                                  help="train on N images per class at --level (default: all)")
    schedule: str | int = param("2epoch", check=validate.schedule, grid="scalar",
                                help="2epoch, 10epoch, a number of epochs, or E/D: E epochs with LR / 10 "
                                     "every D (e.g. 50/15)")
    backbone: str = param("resnet50", check=lambda v, n: _name(v, n, backbones(), "backbone"), choices=backbones,
                          grid="scalar", help="feature extractor (which methods run on each: `inatloc-nb train --help`)")
    pretrained: bool = param(True, check=_flag, grid="scalar",
                             help="start from ImageNet weights (--no-pretrained: random weights)")
    image_size: int = param(224, check=lambda v, n: validate.integer(v, n, *validate.IMAGE_SIZE_RANGE),
                            grid="scalar", cli={"metavar": "PX"}, help="side of the training and CAM images")
    batch_size: int = param(32, check=lambda v, n: validate.integer(v, n, *validate.BATCH_SIZE_RANGE),
                            grid="scalar", help="images per training batch")
    lr_groups: str = param("reference", check=_reading("lr_groups"), choices=lambda: LR_GROUPS, grid="scalar",
                           identity="reference",
                           help="parameters at 10x LR: the reference code's (last backbone stage and fc) "
                                "or the paper text's (classifier only)")
    lr_decay: str = param("reference", check=_reading("lr_decay"), choices=lambda: LR_DECAYS, grid="scalar",
                          identity="reference",
                          help="LR / 10 after epochs 2, 5, 8 (reference code) or 3, 6, 9 (paper text)")
    # runs made when "best" was the default keep their ids: "best" stays out of the identity
    select_epoch: str = param("last", check=_reading("select_epoch"), choices=lambda: SELECT_EPOCHS,
                              grid="scalar", identity="best",
                              help="score the model after the last epoch (the reference code's default) or the "
                                   "epoch (0 = before training) with the best D_f MaxBoxAccV2")
    method_params: dict[str, Any] = param(check=_mapping, factory=dict,
                                          cli={"flag": "--param", "metavar": "KEY=VALUE"},
                                          help="override a method hyperparameter (repeatable), e.g. drop_rate=0.1")
    weights: str | None = param(None, check=_optional_text("a weights file path"), cli={"metavar": "PATH"},
                                help="local ImageNet weights file of the backbone "
                                     "(default: the torchvision/timm cache)")
    image_root: str | None = param(None, check=_optional_text("an image folder"),
                                   help="image folder (default: DATA/images when present)")
    eval_splits: tuple[str, ...] = param(("val", "test"), check=_splits, cli={"metavar": "SPLIT"},
                                         help="splits whose CAMs are extracted and scored")
    model_run: str | None = param(None, check=_optional_text("a run folder"),
                                  cli={"flag": "--model", "metavar": "RUN_DIR"},
                                  help="species-level training run (cam-agg)")
    num_workers: int | None = param(None, check=lambda v, n: validate.optional_integer(v, n, 0, 1024),
                                    help="data-loading processes (default: none on CPU; with a GPU the "
                                         "available cores, at most 16, or $INATLOC_NB_LOADER_WORKERS)")
    device: str | None = param(None, check=validate.device,
                               help="cpu, cuda or cuda:N (default: cuda when available)")
    amp: bool | None = param(None, check=_switch,
                             help="mixed precision (bfloat16 where supported, else float16; default: on with "
                                  "CUDA, off on CPU)")
    channels_last: bool | None = param(None, check=_switch,
                                       help="channels-last model and inputs (default: on with CUDA, off on CPU)")
    compile: bool | None = param(None, check=_switch,
                                 help="torch.compile of the backbone stages (default: off; slower: 668 against "
                                      "1,367 training images/s eager on an H200, plus ~45 s of compilation, "
                                      "benchmarks/README.md)")
    cuda_graphs: bool | None = param(None, check=_switch,
                                     help="replay each full training batch's step as a CUDA graph (CAM and HaS; "
                                          "default: off until measured end to end on a GPU; inatloc_nb.training.cuda_graphs)")
    prepared: str | None = param(None, check=_optional_text("a cache folder path"), cli={"metavar": "CACHE"},
                                 help="read images from the prepared copy under CACHE (see `inatloc-nb prepare`)")
    allow_split_overlap: bool = param(False, check=_flag,
                                      help="accept image ids that are in train and in val or test "
                                           "(refused by default)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check (and normalise) every field with its ``check``; ``InatlocError`` names the field
        and the allowed values."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.metadata["check"](getattr(self, f.name), f"RunConfig.{f.name}"))
        check_support(self.method, self.backbone, "RunConfig")

    def require_lr(self) -> float:
        """The learning rate of a trained run; ``InatlocError`` when it has none."""
        if self.lr is None:
            raise InatlocError(f"method {self.method!r} needs a learning rate (lr)")
        return self.lr

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


def swept_fields() -> tuple[dataclasses.Field, ...]:
    """The ``RunConfig`` fields a sweep's grids set (``grid`` metadata), in field order."""
    return tuple(f for f in dataclasses.fields(RunConfig) if f.metadata["grid"] is not None)


def identity_fields() -> tuple[str, ...]:
    """The swept parameters that are part of every run's identity (``identity=ALWAYS``)."""
    return tuple(f.name for f in swept_fields() if f.metadata["identity"] is ALWAYS)


def default(name: str) -> Any:
    """The default value of the ``RunConfig`` field ``name``."""
    f = RunConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def cache_dir() -> Path:
    """Folder for generated data: ``$INATLOC_NB_CACHE`` or ``~/.cache/inatloc-nb``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "inatloc-nb")


def parse_synth_spec(spec: str) -> tuple[str, int]:
    """``(preset, seed)`` of ``"synth:PRESET[:SEED]"`` (seed 0 when omitted); ``InatlocError``
    for an unknown preset or a seed that is not a non-negative integer."""
    from inatloc_nb.datasets.synth import PRESETS

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
    from inatloc_nb.datasets.synth import generate

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
    from inatloc_nb.datasets.dataset import SHIPPED, WSOLDataset, load_shipped

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
