"""Model selection within a run, as the reference WSOL code does (docs/protocol.md).

The reference (wsolevaluation ``main.py``) measures D_f (``val``) MaxBoxAccV2 before training
(epoch 0) and after every epoch, keeps the checkpoint of the best epoch and scores the test
split with it. Ties go to the earliest epoch (its meter takes the first index of the maximum),
and the untrained model competes. ``EpochSelect`` is that protocol as a fastai callback: D_f
CAMs come from ``cam.extract_cams`` and are scored by ``cam.score_cams``, the one evaluation
path; the best state dict is kept as a CPU copy and restored when the fit ends.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from fastai.callback.core import Callback
from fastai.torch_core import get_random_states, set_random_states

if TYPE_CHECKING:
    import torch

    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.metrics import BoxAccuracyResult
    from inatloc_nb.training.cam import CamSet

#: The split whose localization selects the epoch (D_f).
SELECT_SPLIT = "val"


class EpochSelect(Callback):
    """Scores ``split`` localization before training and after each epoch; at the end of the
    fit restores the weights of the first epoch with the highest MaxBoxAccV2.

    After the fit: ``scores[e]`` / ``top1[e]`` are D_f MaxBoxAccV2 / top-1 after ``e``
    completed epochs (``e = 0``: before training), ``selected_epoch`` the restored epoch,
    ``best_cams`` / ``best_result`` its D_f CAMs and scores (reusable: the restored model
    gives the same CAMs), ``best_cam_seconds`` the time their extraction took, ``seconds``
    the time spent evaluating in all. Random states are saved and
    restored around each evaluation, so training follows the same path as without the callback.
    """

    order = 55  # after the Recorder has logged the epoch's training and validation values

    def __init__(self, dataset: WSOLDataset, level: str, split: str = SELECT_SPLIT):
        self.dataset, self.level, self.split = dataset, level, split
        self.scores: list[float] = []
        self.top1: list[float | None] = []
        self.selected_epoch: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_cams: CamSet | None = None
        self.best_result: BoxAccuracyResult | None = None
        self.best_cam_seconds = self.seconds = 0.0

    def before_fit(self) -> None:
        self.scores, self.top1, self.selected_epoch, self.best_state = [], [], None, None
        self.best_cams, self.best_result, self.best_cam_seconds, self.seconds = None, None, 0.0, 0.0
        self._evaluate()

    def after_epoch(self) -> None:
        self._evaluate()

    def after_fit(self) -> None:
        if self.best_state is not None:
            self.learn.model.load_state_dict(self.best_state)

    def _evaluate(self) -> None:
        from inatloc_nb.training.cam import extract_cams, score_cams

        start = time.perf_counter()
        states = get_random_states()
        try:
            # a bar where one is watched; in logs the epoch's line reports the score
            cams = extract_cams(self.learn, self.dataset, self.split, self.level, progress="bars")
        finally:
            set_random_states(**states)
        cam_seconds = time.perf_counter() - start
        result = score_cams(cams, self.dataset)
        epoch = len(self.scores)
        self.scores.append(result.mean)
        self.top1.append(cams.top1)
        if self.selected_epoch is None or result.mean > self.scores[self.selected_epoch]:
            self.selected_epoch, self.best_cams, self.best_result = epoch, cams, result
            self.best_cam_seconds = cam_seconds
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.learn.model.state_dict().items()}
        self.seconds += time.perf_counter() - start

    def progress_note(self) -> str | None:
        """The latest evaluation for the epoch's progress line (``inatloc_nb.core.progress``)."""
        if not self.scores:
            return None
        top1 = self.top1[-1]
        return f"D_f MaxBoxAccV2 {self.scores[-1]:.1f}" + ("" if top1 is None else f"  D_f top-1 {top1:.1f}")

    def summary(self) -> dict[str, Any]:
        """The ``metrics.json`` keys of the selection: ``selected_epoch``,
        ``val_maxboxacc_v2_per_epoch`` and ``val_top1_per_epoch`` (index = completed epochs)."""
        return {"selected_epoch": self.selected_epoch,
                f"{self.split}_maxboxacc_v2_per_epoch": list(self.scores),
                f"{self.split}_top1_per_epoch": list(self.top1)}
