"""A finished run folder read back: its ``params.json`` (:func:`read_run_params`) and its trained
model rebuilt in eval mode (:func:`load_run_model`; CAM-Agg, the explainers and level selection
reuse runs this way).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb import validate
from inatloc_nb.errors import InatlocError
from inatloc_nb.labelling import MIXED_PREFIX, is_mixed, run_labelling
from inatloc_nb.run_config import REDO_RUN, RunConfig, load_dataset

if TYPE_CHECKING:
    from torch import nn

    from inatloc_nb.methods import WSOLMethod

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

    from inatloc_nb.device import default_device
    from inatloc_nb.models import prepare_for_device

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
    if is_mixed(config.level):  # the labelling it was trained on, not whatever the file holds now
        config = dataclasses.replace(config, level=f"{MIXED_PREFIX}{run_labelling(run_dir)}")
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
