"""CAM networks: a convolutional backbone, global average pooling and a linear classifier.

Backbones (``build_backbone``):

- ``resnet50`` / ``resnet18``: torchvision ResNets cut before their pooling layer, with the
  strides of ``layer3`` and ``layer4`` (and of their downsample branches) set to 1, so a
  224 x 224 input gives 28 x 28 feature maps (the "large feature map" ResNet of the WSOL
  evaluation protocol). Stride changes do not change the weights, so ImageNet weights load
  unchanged. The stages keep torchvision's names (``features.layer4`` ...), which the
  reference code's LR groups and ADL/SPG placements refer to.
- ``tinycnn``: three small conv blocks, final map = input / 4; fast on CPU at 32-64 px.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.backbones_timm import TIMM_BACKBONES, build_timm_backbone
from inatloc_nb.training.device import prepare_model, resolve_settings
from inatloc_nb.training.method_support import BACKBONE_LAYOUTS
from inatloc_nb.training.surgery import unit_stride

#: Backbone names accepted by ``build_backbone`` (which methods run on each: ``inatloc_nb.training.method_support``).
BACKBONES = tuple(BACKBONE_LAYOUTS)
#: Backbones without pretrained weights (``pretrained=True`` is refused).
UNPRETRAINED = ("tinycnn",)


class CAMNet(nn.Module):
    """``features`` -> global average pooling -> ``classifier`` (``nn.Linear(C, n_classes)``).

    The classifier starts as the reference code's re-initialised ``fc``: weights drawn from
    N(0, 0.01^2), bias 0 (``init_linear``). ``reference_fc`` names the module that plays the
    reference's ``fc`` for the 10x-LR group (``learner.param_groups``).
    """

    reference_fc: str | None = "classifier"

    def __init__(self, features: nn.Module, n_channels: int, n_classes: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = init_linear(nn.Linear(n_channels, n_classes))
        self.n_channels = n_channels
        self.n_classes = n_classes

    def feature_maps(self, x: Tensor) -> Tensor:
        """The last feature maps, (B, C, h, w)."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, (B, n_classes)."""
        return self.classifier(torch.flatten(self.pool(self.feature_maps(x)), 1))

    def class_activation_maps(self, feats: Tensor, class_idx: Tensor) -> Tensor:
        """CAMs (B, h, w), float32: ``feats[b]`` weighted by the classifier weights of
        ``class_idx[b]``, averaged over channels (the reference protocol's formula; the
        class bias, a per-image constant that normalisation removes, is left out)."""
        weights = self.classifier.weight[class_idx].float()  # (B, C)
        return (weights[:, :, None, None] * feats.float()).mean(1)


#: Standard deviation of the reference code's linear-layer initialisation.
LINEAR_INIT_STD = 0.01


def init_linear(layer: nn.Linear) -> nn.Linear:
    """Weights ~ N(0, ``LINEAR_INIT_STD``^2), bias 0 (the reference's ``initialize_weights``)."""
    nn.init.normal_(layer.weight, 0.0, LINEAR_INIT_STD)
    nn.init.zeros_(layer.bias)
    return layer


def init_convs(module: nn.Module, mode: str) -> nn.Module:
    """Initialise every ``Conv2d`` of ``module`` as the reference's ``initialize_weights``:
    ``mode="he"`` Kaiming normal (fan out, ReLU gain), ``"xavier"`` Xavier uniform; biases 0."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            if mode == "he":
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            elif mode == "xavier":
                nn.init.xavier_uniform_(conv.weight)
            else:
                raise InatlocError(f"unknown init mode {mode!r}; use 'he' or 'xavier'")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
    return module


def weights_path(weights) -> Path:
    """Where torch looks for a torchvision weights file: ``$TORCH_HOME/hub/checkpoints/<file>``."""
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def load_pretrained(weights) -> dict[str, Tensor]:
    """The state dict of torchvision ``weights``, from the torch cache or downloaded.

    Raises ``InatlocError`` naming the expected file when it is neither cached nor downloadable.
    """
    path = weights_path(weights)
    try:
        return weights.get_state_dict(progress=True)
    except OSError as exc:  # URLError, connection and DNS errors are OSErrors
        raise InatlocError(
            f"cannot load the ImageNet weights {weights}: {exc}. Download {weights.url} on a "
            f"machine with network access and place it at {path} (or set TORCH_HOME), "
            "or train with pretrained=False"
        ) from exc


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict saved with ``torch.save`` (e.g. torchvision's ``resnet50-0676ba61.pth``).

    Raises ``InatlocError`` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise InatlocError(f"weights file {path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and format errors of a damaged or foreign file
        raise InatlocError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc


def _resnet(name: str, pretrained: bool, weights_file: str | Path | None = None) -> tuple[nn.Module, int]:
    from torchvision import models

    ctor, weights = {
        "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
        "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    }[name]
    net = ctor(weights=None)
    if pretrained:
        net.load_state_dict(load_pretrained(weights) if weights_file is None else load_weights_file(weights_file))
    unit_stride(net.layer3)
    unit_stride(net.layer4)
    stages = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    features = nn.Sequential(OrderedDict((name, getattr(net, name)) for name in stages))
    return features, net.fc.in_features


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)
    )


def _tinycnn() -> tuple[nn.Module, int]:
    features = nn.Sequential(
        _conv_block(3, 16), nn.MaxPool2d(2),
        _conv_block(16, 32), nn.MaxPool2d(2),
        _conv_block(32, 64), _conv_block(64, 64),
    )
    return features, 64


def build_backbone(name: str, pretrained: bool = True,
                   weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """The feature extractor ``name`` (see ``BACKBONES``) and its number of output channels.

    ``pretrained`` loads ImageNet weights: torchvision's for the ResNets, timm's for
    ``convnext_tiny``, ``deit_small`` and ``timm_resnet50`` (``inatloc_nb.training.backbones_timm``);
    ``weights`` is a local weights file to load instead of the library's cache. ``tinycnn``
    has none and rejects ``pretrained=True``.
    """
    if weights is not None and not pretrained:
        raise InatlocError(f"backbone {name!r}: a weights file ({weights}) was given with pretrained=False")
    if name in TIMM_BACKBONES:
        return build_timm_backbone(name, pretrained, weights)
    if name in ("resnet50", "resnet18"):
        return _resnet(name, pretrained, weights)
    if name == "tinycnn":
        if pretrained:
            raise InatlocError("backbone 'tinycnn' has no pretrained weights; use pretrained=False")
        return _tinycnn()
    raise InatlocError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")


def prepare_for_device(
    model: nn.Module, device: torch.device | str, channels_last: bool | None = None, compile: bool = False
) -> nn.Module:
    """Move ``model`` to ``device``, in channels-last memory format (default: on CUDA), its
    backbone stages compiled when ``compile`` (``inatloc_nb.training.device.prepare_model``)."""
    return prepare_model(model, resolve_settings(device, amp=False, channels_last=channels_last, compile=compile))
