"""WSOL methods: CAM and the variants the paper compares (Table A4 defaults).

``get_method("has", drop_rate=0.1)`` returns a configured :class:`WSOLMethod`;
``METHODS`` maps each name to its class.
"""
from __future__ import annotations

from typing import Any

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.methods.acol import ACoL
from inatloc_nb.training.methods.adl import ADL
from inatloc_nb.training.methods.base import WSOLMethod
from inatloc_nb.training.methods.bridgegap import BridgeGap
from inatloc_nb.training.methods.cam import CAM
from inatloc_nb.training.methods.cutmix import CutMix
from inatloc_nb.training.methods.has import HaS
from inatloc_nb.training.methods.multihead import MultiHead
from inatloc_nb.training.methods.spg import SPG

#: Every available method, by the name used in configs and on the command line.
METHODS: dict[str, type[WSOLMethod]] = {cls.name: cls for cls in (CAM, HaS, ACoL, SPG, ADL, CutMix, BridgeGap, MultiHead)}


def get_method(name: str, **hparams: Any) -> WSOLMethod:
    """The method called ``name`` configured with ``hparams`` over its defaults."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise InatlocError(
            f"unknown WSOL method {name!r}; valid: {', '.join(sorted(METHODS))}"
        ) from None
    return cls(**hparams)


__all__ = ["METHODS", "WSOLMethod", "get_method"]
