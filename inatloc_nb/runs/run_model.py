"""A finished run's trained model rebuilt in eval mode (:func:`load_run_model`; CAM-Agg, the
explainers and level selection reuse runs this way). Its files are read by
:class:`inatloc_nb.runs.runfolder.RunFolder`.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from inatloc_nb.core import validate
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.hierarchies.labelling import MIXED_PREFIX, is_mixed, run_labelling
from inatloc_nb.runs.runfolder import RunFolder
from inatloc_nb.training.run_config import RunConfig, load_dataset

if TYPE_CHECKING:
    from torch import nn

    from inatloc_nb.training.methods import WSOLMethod


def build_model_for(config: RunConfig, n_classes: int, pretrained: bool | None = None) -> tuple[nn.Module, WSOLMethod]:
    """The untrained model of ``config`` (its method's ``build_model`` on its backbone)."""
    from inatloc_nb.training.methods import get_method
    from inatloc_nb.training.models import build_backbone

    method = get_method(config.method, **config.method_params)
    if method.needs_hierarchy:
        method.bind(load_dataset(config.data, config.image_root).hierarchy, config.level)
    pretrained = config.pretrained if pretrained is None else pretrained
    features, n_channels = build_backbone(config.backbone, pretrained, config.weights if pretrained else None)
    return method.build_model(features, n_channels, n_classes), method


def load_run_model(run_dir: str | Path, device: str | None = None) -> tuple[nn.Module, RunConfig, WSOLMethod]:
    """The trained model of a finished run folder, in eval mode, with its config and method."""
    from inatloc_nb.training.device import default_device
    from inatloc_nb.training.models import prepare_for_device

    folder = RunFolder(run_dir)
    params = folder.read_params()
    try:
        config = RunConfig.from_dict(params["config"])
        n_classes = validate.integer(params["n_classes"], "n_classes", 1)
    except (KeyError, TypeError, InatlocError) as exc:
        raise InatlocError(f"{folder.params_path}: not the parameters of a training run ({exc}); "
                           f"{folder.redo}") from None
    if is_mixed(config.level):  # the labelling it was trained on, not whatever the file holds now
        config = dataclasses.replace(config, level=f"{MIXED_PREFIX}{run_labelling(folder.path)}")
    model, method = build_model_for(config, n_classes, pretrained=False)
    folder.load_model(model)
    model = prepare_for_device(model, default_device() if device is None else device)
    return model.eval(), config, method
