"""Classification accuracy and its combination with localization (GT-known / top-1 loc)."""
from __future__ import annotations

from typing import Any

import numpy as np

from inatloc_nb.core.errors import ScoreMapError
from inatloc_nb.metrics.scoremaps import as_numpy


def topk_accuracy(logits: Any, targets: Any, k: int = 1) -> float:
    """Percentage of rows whose target is among the ``k`` highest logits (ties: lowest index first)."""
    scores = as_numpy(logits)
    labels = as_numpy(targets).astype(np.int64).reshape(-1)
    if scores.ndim != 2 or len(scores) != len(labels) or len(labels) == 0:
        raise ScoreMapError(f"logits must be (N, C) with N = len(targets) > 0, got {scores.shape} and {labels.shape}")
    if not 1 <= k <= scores.shape[1]:
        raise ScoreMapError(f"k must lie in [1, {scores.shape[1]}], got {k}")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ScoreMapError(f"targets must lie in [0, {scores.shape[1] - 1}]")
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean() * 100)


def localization_accuracy(image_correct: Any, predicted: Any, targets: Any) -> dict[str, float]:
    """GT-known and top-1 localization accuracy (percent).

    ``image_correct`` is the per-image box correctness at the chosen threshold
    (``BoxAccuracyResult.image_correct[50]``); top-1 localization also needs the
    predicted class to equal the target.
    """
    correct = as_numpy(image_correct).astype(bool).reshape(-1)
    pred = as_numpy(predicted).reshape(-1)
    true = as_numpy(targets).reshape(-1)
    if not len(correct) == len(pred) == len(true) or len(correct) == 0:
        raise ScoreMapError(f"got {len(correct)} correctness flags, {len(pred)} predictions and {len(true)} targets")
    return {
        "gt_known": float(correct.mean() * 100),
        "top1_loc": float((correct & (pred == true)).mean() * 100),
    }
