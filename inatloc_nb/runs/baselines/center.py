"""The Center baseline (App. F.3): the same centred Gaussian score map for every image.

``C_ij = exp(-((i - (M-1)/2)^2 + (j - (M-1)/2)^2) / (2 sigma^2))``, M = 224, sigma = M / 4,
min-max normalised (``inatloc_nb.metrics.center_map``), scored with MaxBoxAccV2 against
the metadata's boxes. It needs no images and no training.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inatloc_nb.runs.runfolder import RunFolder, analysis_frame, metrics_block, run_identity

if TYPE_CHECKING:
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.metrics.boxacc import BoxAccuracyResult
    from inatloc_nb.training.run_config import RunConfig

#: Maps per chunk of :func:`center_chunks`.
CHUNK = 256


def center_chunks(n_images: int) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, maps)`` chunks of the Center map for ``n_images`` images (read-only broadcast
    views, no copies), as ``analysis_frame`` takes them."""
    from inatloc_nb.metrics.scoremaps import center_map

    smap = center_map()
    for start in range(0, n_images, CHUNK):
        yield start, np.broadcast_to(smap, (min(CHUNK, n_images - start), *smap.shape))


def center_accuracy(gt_boxes: list[np.ndarray]) -> BoxAccuracyResult:
    """MaxBoxAccV2 result of the Center map against one box array per image (on the
    224 grid); the map's boxes are found once for all images."""
    from inatloc_nb.metrics import BoxAccuracy, center_map

    accuracy = BoxAccuracy()
    accuracy.update_shared(center_map(), gt_boxes)
    return accuracy.compute()


def run_center(config: RunConfig, dataset: WSOLDataset, out: str | Path,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    """Score the Center baseline on ``config.eval_splits`` and write the run folder; return metrics.json."""
    folder = RunFolder(out)
    folder.write_params(config, dataset.name)
    per_split, frames = {}, []
    for split in config.eval_splits:
        say(f"scoring the Center map on {split}")
        boxes, ids = dataset.gt_boxes(split), dataset.images(split)["image_id"].to_list()
        result = center_accuracy(boxes)
        per_split[split] = metrics_block(result)
        frames.append(analysis_frame(center_chunks(len(ids)), boxes, ids, result, split))
    folder.write_analysis(frames)
    return folder.write_metrics(per_split, **run_identity(config, 0))
