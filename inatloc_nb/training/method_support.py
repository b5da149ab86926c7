"""Which WSOL method trains on which backbone: one table for the code, ``--help`` and the docs.

Every method runs on every backbone whose features are an ``nn.Sequential`` of convolutional
stages. The methods that work inside the backbone place their layers and taps by one rule
on the stages (:func:`inatloc_nb.training.surgery.backbone_stages`), the reference's ResNet-50
placement being that rule's instance:

- ADL: a layer after the first block of the second-to-last stage and after the first and
  the last block of the last stage (ResNet-50: ``layer3.0``, ``layer4.0``, ``layer4.2``);
- SPG: B1 reads the second-to-last stage after its first block, B2 its output, C the last
  stage's (ResNet-50: ``layer3`` block 0, ``layer3``, ``layer4``);
- bridgegap: the last stage is split after its first block (ResNet-50: ``layer4.0``).

``deit_small`` is a vision transformer: its blocks pass token sequences, not feature maps in
stages, so these three are refused on it; the others only read its final patch-token maps.
This module imports nothing heavy, so the command line can print the table.
"""
from __future__ import annotations

import textwrap

from inatloc_nb.core.errors import InatlocError

#: Backbone name -> layout of its features: ``"stages"`` (convolutional stages) or ``"tokens"``
#: (a vision transformer's blocks over patch tokens). The backbones ``build_backbone`` offers.
BACKBONE_LAYOUTS: dict[str, str] = {
    "resnet50": "stages", "resnet18": "stages", "tinycnn": "stages",
    "convnext_tiny": "stages", "deit_small": "tokens", "timm_resnet50": "stages",
}
#: Every trainable method, in the table's order.
METHOD_NAMES = ("cam", "has", "acol", "spg", "adl", "cutmix", "bridgegap", "multihead")
#: Why a method that works inside the backbone cannot run on a ``"tokens"`` backbone.
TOKENS_REASON = "a vision transformer, whose blocks pass token sequences, not feature maps in stages"
#: Methods that work inside the backbone -> what they do there (why they need stages).
INSIDE_BACKBONE: dict[str, str] = {
    "adl": "inserts dropout layers after blocks of the last two stages",
    "spg": "reads feature maps from inside the second-to-last stage",
    "bridgegap": "splits the last stage after its first block",
}


def refusal(method: str, backbone: str) -> str | None:
    """Why ``method`` cannot train on ``backbone``, or None when it can (unknown names: None,
    they are refused elsewhere with the list of valid ones)."""
    if method in INSIDE_BACKBONE and BACKBONE_LAYOUTS.get(backbone) == "tokens":
        return f"{backbone} is {TOKENS_REASON}, and {method} {INSIDE_BACKBONE[method]}"
    return None


def check_support(method: str, backbone: str, where: str = "") -> None:
    """Raise ``InatlocError`` (prefixed by ``where``) when ``method`` cannot train on ``backbone``."""
    why = refusal(method, backbone)
    if why is not None:
        raise InatlocError(f"{where}{': ' if where else ''}method {method!r} does not run on backbone "
                           f"{backbone!r}: {why}")


def support_table(methods: tuple[str, ...] = METHOD_NAMES, markdown: bool = False) -> str:
    """Method x backbone: ``yes`` or ``no`` (``no (1)`` with the reason below the table in
    markdown). Plain text for ``--help``, a markdown table for the docs."""
    backbones = tuple(BACKBONE_LAYOUTS)
    cells = {m: ["yes" if refusal(m, b) is None else "no" for b in backbones] for m in methods}
    refused = {b: [m for m in methods if refusal(m, b)] for b in backbones}
    notes = [(b, ms) for b, ms in refused.items() if ms]
    if markdown:
        lines = ["| method | " + " | ".join(f"`{b}`" for b in backbones) + " |",
                 "|---|" + "---|" * len(backbones)]
        lines += [f"| {m} | " + " | ".join(cells[m]) + " |" for m in methods]
        lines += ["", *(f"No for {', '.join(ms)} on `{b}`: it is {TOKENS_REASON}." for b, ms in notes)]
        return "\n".join(lines)
    width = max(len(m) for m in methods) + 2
    header = " " * width + " ".join(f"{b:<{max(len(b), 3)}}" for b in backbones)
    rows = [f"{m:<{width}}" + " ".join(f"{c:<{max(len(b), 3)}}" for b, c in zip(backbones, cells[m], strict=True))
            for m in methods]
    return "\n".join([line.rstrip() for line in (header, *rows)]
                     + [textwrap.fill(f"no on {b}: {TOKENS_REASON}", 88) for b, _ in notes])


__all__ = ["BACKBONE_LAYOUTS", "INSIDE_BACKBONE", "METHOD_NAMES", "TOKENS_REASON", "check_support", "refusal",
           "support_table"]
