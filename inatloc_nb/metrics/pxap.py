"""PxAP: area under the pixel precision-recall curve of score maps against masks.

Follows the Choe et al. (CVPR 2020) mask evaluator: per-pixel score histograms of
foreground and background pixels (ignore regions excluded) over the bins
``[t_0, t_1), ..., [t_last, 1), [1, 2), [2, 3)``, cumulated from the top; the area is
``sum(precision[1:] * diff(recall))`` over points with at least one positive prediction.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inatloc_nb.core.errors import ScoreMapError
from inatloc_nb.metrics.scoremaps import as_numpy, cam_thresholds, check_score_maps


@dataclass
class PxAPResult:
    """What :meth:`PxAP.compute` returns; ``pxap`` is a percentage."""

    pxap: float
    precision: np.ndarray
    recall: np.ndarray
    n_images: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"pxap": self.pxap, "n_images": self.n_images}


class PxAP:
    """Accumulator for PxAP; ``update(score_maps, masks, ignore=None)``.

    ``masks`` are (B, H, W) foreground masks (bool or 0/1); ``ignore`` optional (B, H, W)
    bool regions left out of the count wherever they are not foreground.
    """

    def __init__(self, n_thresholds: int = 1000, normalize: bool = False):
        self.n_thresholds = int(n_thresholds)
        self.thresholds = cam_thresholds(self.n_thresholds)
        self.edges = np.append(self.thresholds, [1.0, 2.0, 3.0])
        self.normalize = bool(normalize)
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        self.positive_hist = np.zeros(len(self.edges) - 1, dtype=np.float64)
        self.negative_hist = np.zeros(len(self.edges) - 1, dtype=np.float64)
        self.n_images = 0

    def update(self, score_maps: Any, masks: Any, ignore: Sequence[Any] | Any | None = None) -> None:
        """Add a batch of maps with their foreground masks (and optional ignore regions)."""
        maps = check_score_maps(score_maps, self.normalize)
        fg = as_numpy(masks)
        if fg.shape != maps.shape:
            raise ScoreMapError(f"masks have shape {fg.shape}, score maps {maps.shape}")
        if not np.isin(fg, (0, 1)).all():
            raise ScoreMapError("masks must hold only 0/1 (or bool) values")
        fg = fg.astype(bool)
        negative = ~fg
        if ignore is not None:
            ign = as_numpy(ignore)
            if ign.shape != maps.shape:
                raise ScoreMapError(f"ignore masks have shape {ign.shape}, score maps {maps.shape}")
            negative &= ~ign.astype(bool)
        self.positive_hist += np.histogram(maps[fg], bins=self.edges)[0]
        self.negative_hist += np.histogram(maps[negative], bins=self.edges)[0]
        self.n_images += len(maps)

    def merge(self, other: PxAP) -> PxAP:
        """Add another accumulator's pixels; configurations must match."""
        if (self.n_thresholds, self.normalize) != (other.n_thresholds, other.normalize):
            raise ScoreMapError("cannot merge PxAP accumulators with different settings")
        self.positive_hist += other.positive_hist
        self.negative_hist += other.negative_hist
        self.n_images += other.n_images
        return self

    def compute(self) -> PxAPResult:
        """Area under the precision-recall curve (percent) and the curve itself."""
        if self.n_images == 0:
            raise ScoreMapError("PxAP.compute() called before any image was added")
        tp = self.positive_hist[::-1].cumsum()
        fn = self.positive_hist.sum() - tp
        fp = self.negative_hist[::-1].cumsum()
        if not (tp + fn > 0).any():
            raise ScoreMapError("no foreground pixel in the evaluated masks")
        predicted = tp + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / predicted
            recall = tp / (tp + fn)
        keep = predicted[1:] != 0
        auc = float((precision[1:] * np.diff(recall))[keep].sum() * 100)
        return PxAPResult(pxap=auc, precision=precision, recall=recall, n_images=self.n_images)
