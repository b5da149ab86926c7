"""In-place changes to pretrained networks that keep their weights loadable, and the stage
view of a backbone (:func:`backbone_stages`) by which methods place layers inside it."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from inatloc_nb.core.errors import InatlocError


def unit_stride(layer: nn.Module) -> None:
    """Set every strided convolution of ``layer`` (main path and downsample) to stride 1.

    Applied to ``layer3``/``layer4`` of a ResNet it gives the "large feature map" (input / 8)
    of the WSOL evaluation protocol; strides hold no weights, so checkpoints load unchanged.
    """
    for module in layer.modules():
        if isinstance(module, nn.Conv2d) and module.stride != (1, 1):
            module.stride = (1, 1)


# --- stages: one description of every convolutional backbone, for methods that work inside it


@dataclass(frozen=True)
class Stage:
    """Child ``index`` (named ``name``) of a backbone ``features`` (an ``nn.Sequential``) seen as
    a stage of blocks.

    ``blocks`` is the ``nn.Sequential`` holding its blocks: the child itself for a ResNet
    ``layerN`` (a sequence of residual blocks), the child's ``blocks`` for a timm stage
    (ConvNeXt: ``downsample`` then ``blocks``, ``entry`` names the former); None when the
    child is one block (``tinycnn``'s conv blocks and pools, a ResNet's stem layers).
    """

    index: int
    name: str
    module: nn.Module
    blocks: nn.Sequential | None
    entry: nn.Module | None = None

    def __len__(self) -> int:
        return 1 if self.blocks is None else len(self.blocks)

    def block_name(self, block: int) -> str:
        """The module path of block ``block`` under ``features``."""
        if self.blocks is None:
            return self.name
        return f"{self.name}.{block}" if self.blocks is self.module else f"{self.name}.blocks.{block}"


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _stage(index: int, name: str, child: nn.Module) -> Stage:
    blocks = getattr(child, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) and {n for n, _ in child.named_children()} <= {"downsample", "blocks"}:
        return Stage(index, name, child, blocks, getattr(child, "downsample", None))
    if isinstance(child, nn.Sequential) and len(child) and all(_has_conv(b) for b in child):
        return Stage(index, name, child, child)
    return Stage(index, name, child, None)


def backbone_stages(features: nn.Module, method: str, minimum: int = 2) -> list[Stage]:
    """Every top-level child of ``features`` as a :class:`Stage`, in order.

    Methods that work inside the backbone (ADL, SPG, bridgegap) place their layers and taps
    relative to the last two stages. ``InatlocError`` (naming ``method``) when ``features``
    is not an ``nn.Sequential`` of at least ``minimum`` children producing feature maps (a
    vision transformer's ``PatchGrid`` passes tokens between its blocks).
    """
    if not isinstance(features, nn.Sequential):
        raise InatlocError(
            f"method {method!r} works inside the backbone and needs its features as an nn.Sequential "
            f"of convolutional stages, got {type(features).__name__} (a vision transformer passes token "
            "sequences, not feature maps, between its blocks)")
    if len(features) < minimum:
        raise InatlocError(f"method {method!r} needs a backbone of at least {minimum} stages, got {len(features)}")
    return [_stage(index, name, child) for index, (name, child) in enumerate(features.named_children())]


def cut_backbone(features: nn.Sequential, cuts: Sequence[tuple[Stage, int]]) -> list[nn.Sequential]:
    """``features`` as consecutive pieces whose composition is ``features``: one cut after the
    first ``k`` blocks of ``stage`` for each ``(stage, k)`` of ``cuts`` (in forward order;
    ``k = 0`` cuts before the stage, ``k = len(stage)`` after it). The pieces share
    ``features``' modules; a stage cut between its blocks runs as its entry and blocks, the
    others as themselves (their hooks fire)."""
    split = {stage.index for stage, k in cuts if 0 < k < len(stage)}
    units: list[nn.Module] = []
    starts: dict[int, int] = {}
    for stage in (_stage(i, n, c) for i, (n, c) in enumerate(features.named_children())):
        starts[stage.index] = len(units)
        if stage.index in split:
            units += [*([stage.entry] if stage.entry is not None else []), *stage.blocks]
        else:
            units.append(stage.module)
    starts[len(features)] = len(units)
    positions = []
    for stage, k in cuts:
        if not 0 <= k <= len(stage):
            raise InatlocError(f"stage {stage.name} has {len(stage)} blocks; cannot cut after {k}")
        if k == 0:
            positions.append(starts[stage.index])
        elif k == len(stage):
            positions.append(starts[stage.index + 1])
        else:
            positions.append(starts[stage.index] + (stage.entry is not None) + k)
    if positions != sorted(positions):
        raise InatlocError(f"cuts {[(s.name, k) for s, k in cuts]} are not in forward order")
    bounds = [0, *positions, len(units)]
    return [nn.Sequential(*units[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]


def insert_after_blocks(features: nn.Sequential, places: Sequence[tuple[Stage, int]],
                        make: Callable[[], nn.Module]) -> list[nn.Module]:
    """Insert a module made by ``make()`` after block ``b`` of ``stage`` for each ``(stage, b)`` of
    ``places`` (duplicates once); return them in forward order. A stage of blocks is rebuilt
    as an ``nn.Sequential`` with the new modules between its blocks (a ResNet's ``layer3``
    becomes ``block 0, new, block 1, ...``); a one-block stage ``s`` becomes
    ``nn.Sequential(s, new)``."""
    wanted: dict[int, set[int]] = {}
    stages: dict[int, Stage] = {}
    for stage, block in places:
        if not 0 <= block < len(stage):
            raise InatlocError(f"stage {stage.name} has {len(stage)} blocks; nothing to insert after block {block}")
        wanted.setdefault(stage.index, set()).add(block)
        stages[stage.index] = stage
    inserted: list[nn.Module] = []
    for index in sorted(wanted):
        stage = stages[index]
        if stage.blocks is None:
            inserted.append(make())
            setattr(features, stage.name, nn.Sequential(stage.module, inserted[-1]))
            continue
        rebuilt: list[nn.Module] = []
        for position, block in enumerate(stage.blocks):
            rebuilt.append(block)
            if position in wanted[index]:
                inserted.append(make())
                rebuilt.append(inserted[-1])
        if stage.blocks is stage.module:
            setattr(features, stage.name, nn.Sequential(*rebuilt))
        else:
            stage.module.blocks = nn.Sequential(*rebuilt)
    return inserted
