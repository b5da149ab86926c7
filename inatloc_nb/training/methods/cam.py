"""CAM (Zhou et al. 2016): the plain classifier; every other method derives from it."""
from __future__ import annotations

from inatloc_nb.training.methods.base import WSOLMethod


class CAM(WSOLMethod):
    """Class activation mapping with no training-time change."""

    name = "cam"
    cuda_graph_safe = True
    defaults = {}
