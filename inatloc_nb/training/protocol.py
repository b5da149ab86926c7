"""Named readings of the training protocol where the paper's text and the reference code
(wsolevaluation, which produced the paper's numbers) differ; docs/protocol.md has the
point-by-point comparison. The reference code's reading is always the first and the default.

Kept free of heavy imports so the command line can offer the choices cheaply.
"""
from __future__ import annotations

from inatloc_nb.core.errors import InatlocError

#: Which parameters train at 10x the LR: ``"reference"`` (the backbone's last stage, ResNet
#: ``layer4``, and the linear classifier ``fc``) or ``"classifier"`` (the paper's text: the
#: final classifier only, i.e. every module named ``classifier*``).
LR_GROUPS = ("reference", "classifier")
#: When the multi-epoch step schedules divide the LR by 10: ``"reference"`` (after 2, 5,
#: 8, ... completed epochs, as ``adjust_learning_rate(epoch + 1)`` does) or ``"text"``
#: (the paper's "every 3 epochs": after 3, 6, 9, ...).
LR_DECAYS = ("reference", "text")
#: Which epoch's model a run scores: ``"best"`` (the reference: D_f MaxBoxAccV2 is measured
#: before training and after every epoch, the earliest best epoch is restored) or ``"last"``
#: (the model after the last epoch).
SELECT_EPOCHS = ("best", "last")
#: Epochs between two LR decays of the multi-epoch schedules.
DECAY_EVERY = 3


def check_reading(option: str, value: str) -> str:
    """``value`` when it is a valid choice of ``option`` (``"lr_groups"``, ``"lr_decay"`` or
    ``"select_epoch"``), else ``InatlocError`` listing the choices."""
    choices = {"lr_groups": LR_GROUPS, "lr_decay": LR_DECAYS, "select_epoch": SELECT_EPOCHS}[option]
    if value not in choices:
        raise InatlocError(f"unknown {option} {value!r}; use one of {', '.join(choices)}")
    return value
