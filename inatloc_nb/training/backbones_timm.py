"""Backbones from ``timm``: ConvNeXt-Tiny, DeiT-Small and timm's ResNet-50.

Each is cut before its pooling and classification head and returned as ``(features,
n_channels)`` for :class:`inatloc_nb.training.models.CAMNet`, which adds global average pooling and
the linear classifier whose weights make the CAM. How each reaches its CAM resolution:

- ``convnext_tiny``: built with ``output_stride=8``: the stride-2 downsampling convolutions
  of the last two stages become stride 1 and the stages' depth-wise convolutions are
  dilated (2 and 4) to keep their receptive field, so a 224-pixel input gives 28 x 28 maps
  with 768 channels, like the protocol's ResNet-50. The head's LayerNorm (applied after
  pooling in ConvNeXt) is dropped with the head. Weights load unchanged.
- ``deit_small``: ``deit_small_patch16_224`` with ``dynamic_img_size`` (position embeddings
  are interpolated for other input sizes). The final (normed) patch tokens are reshaped to
  their grid and the CLS token is dropped: a 224-pixel input gives 14 x 14 maps with 384
  channels (one cell per 16 x 16 patch; there is no stride to change). The CAM classifier
  pools the patch tokens instead of reading the CLS token. Not an ``nn.Sequential`` of
  convolutional stages, so the methods that insert layers between stages (ADL, SPG,
  bridgegap) refuse it.
- ``timm_resnet50``: timm's ResNet-50 with the same surgery as ``resnet50`` (stride 1 in
  ``layer3`` and ``layer4``, no dilation): 28 x 28 maps with 2048 channels. It checks the
  torchvision-based ``resnet50`` against an independent implementation.

Weights: ImageNet weights cannot be downloaded on every machine. ``pretrained=True`` with
``weights`` loads that local file (``.safetensors`` or ``.pth`` as published by timm);
without ``weights`` the file of timm's default tag is looked up in the Hugging Face hub
cache (``$HF_HOME``) first, then downloaded by timm. When that fails an ``InatlocError``
names the hub model whose ``model.safetensors`` to fetch. ``pretrained=False``
starts from random weights.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.surgery import unit_stride

#: Backbone name -> (timm model name, creation arguments).
TIMM_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "convnext_tiny": ("convnext_tiny", {"output_stride": 8}),
    "deit_small": ("deit_small_patch16_224", {"dynamic_img_size": True}),
    "timm_resnet50": ("resnet50", {}),
}
#: Backbone names served by this module.
TIMM_BACKBONES = tuple(TIMM_MODELS)


class PatchGrid(nn.Module):
    """A timm vision transformer's final patch tokens as (B, C, H / patch, W / patch) maps.

    Children, in order: ``vit`` (patch embedding, CLS token and position embeddings; its
    blocks and final norm are moved out), ``blocks`` (all transformer blocks but the last)
    and ``last`` (the last block and the final norm): ``last`` is the backbone's last stage,
    the counterpart of a ResNet's ``layer4`` for the learner's LR groups.
    """

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        blocks, norm = vit.blocks, vit.norm
        vit.blocks, vit.norm = nn.Identity(), nn.Identity()
        self.vit = vit
        self.blocks = blocks[:-1]
        self.last = nn.Sequential(blocks[-1], norm)
        self.patch = tuple(vit.patch_embed.patch_size)
        self.n_prefix = int(vit.num_prefix_tokens)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.last(self.blocks(self.vit.forward_features(x)))[:, self.n_prefix :]
        h, w = x.shape[-2] // self.patch[0], x.shape[-1] // self.patch[1]
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)


def _cached_weights(model_name: str) -> Path | None:
    """The weights file of timm's default tag of ``model_name`` in the Hugging Face hub
    cache, if there (looked up without network access)."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    hub = getattr(timm.models.get_pretrained_cfg(model_name), "hf_hub_id", None)
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(hub, filename) if hub else None
        if isinstance(found, str):
            return Path(found)
    return None


def _create(name: str, pretrained: bool, weights: str | Path | None) -> nn.Module:
    import timm

    model_name, kwargs = TIMM_MODELS[name]
    kwargs = {**kwargs, "num_classes": 0}
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise InatlocError(f"backbone {name!r}: weights file {path} not found")
        kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    elif pretrained and (cached := _cached_weights(model_name)) is not None:
        kwargs["pretrained_cfg_overlay"] = {"file": str(cached)}
    try:
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    except (OSError, RuntimeError) as exc:  # network/cache errors, mismatching state dicts
        if weights is not None:
            raise InatlocError(f"backbone {name!r}: cannot load weights from {weights}: {exc}") from exc
        cfg = timm.models.get_pretrained_cfg(model_name)
        hub = getattr(cfg, "hf_hub_id", None) or model_name
        raise InatlocError(
            f"backbone {name!r}: no ImageNet weights in the timm cache and none can be downloaded "
            f"({type(exc).__name__}: {exc}). Fetch model.safetensors of the Hugging Face model "
            f"{hub!r} on a machine with network access and pass it as --weights PATH (or fill the "
            "hub cache, $HF_HOME), or train with --no-pretrained"
        ) from exc


def build_timm_backbone(name: str, pretrained: bool = True,
                        weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """The feature extractor ``name`` (see ``TIMM_BACKBONES``) and its number of channels."""
    if name not in TIMM_MODELS:
        raise InatlocError(f"unknown timm backbone {name!r}; choose one of {', '.join(TIMM_BACKBONES)}")
    model = _create(name, pretrained, weights)
    if name == "deit_small":
        return PatchGrid(model), int(model.num_features)
    if name == "convnext_tiny":
        stages = [("stem", model.stem), *((f"stage{i}", s) for i, s in enumerate(model.stages))]
        return nn.Sequential(OrderedDict(stages)), int(model.num_features)
    unit_stride(model.layer3)
    unit_stride(model.layer4)
    names = ("conv1", "bn1", "act1", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names)), int(model.num_features)

