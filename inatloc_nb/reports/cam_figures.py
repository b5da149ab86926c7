"""CAM picture grids: images with their class activation maps, ground-truth boxes and the
protocol's predicted boxes, as matplotlib figures (also reachable as ``inatloc_nb.reports.plots.*``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from inatloc_nb.core.errors import PlotError


def cam_grid(
    images: Sequence[np.ndarray],
    cams: Sequence[np.ndarray],
    gt_boxes: Sequence[np.ndarray],
    pred_boxes: Sequence[np.ndarray] | None = None,
    titles: Sequence[str] | None = None,
    ncols: int = 4,
):
    """A matplotlib figure: each image with its CAM overlaid, GT boxes (green) and predictions (red).

    ``images`` are HxWx3 uint8 arrays on the grid of ``cams`` (e.g. 224x224); boxes are
    ``(n, 4)`` inclusive ``(x0, y0, x1, y1)`` arrays on the same grid.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    if not len(images):
        raise PlotError("cam_grid: no image to show")
    if not len(images) == len(cams) == len(gt_boxes):
        raise PlotError(f"cam_grid: {len(images)} images, {len(cams)} CAMs and {len(gt_boxes)} box sets differ")
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.6 * ncols, 2.7 * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= len(images):
            continue
        ax.imshow(images[i])
        ax.imshow(np.asarray(cams[i], dtype=np.float32), cmap="jet", alpha=0.45)
        sets = [(gt_boxes[i], "lime")] + ([(pred_boxes[i], "red")] if pred_boxes is not None else [])
        for boxes, colour in sets:
            for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
                ax.add_patch(Rectangle((x0, y0), x1 - x0 + 1, y1 - y0 + 1, fill=False, color=colour, lw=1.5))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    plt.close(fig)  # shown once, by the notebook's display of the returned figure
    return fig


def _run_panels(run_dir: str | Path, split: str, indices: Sequence[int]) -> dict[str, list]:
    """Images (squished to the CAM grid), CAMs, GT boxes and protocol boxes at the run's optimal
    threshold for IoU 50, for rows ``indices`` of ``split``."""
    from inatloc_nb.metrics.boxacc import contour_boxes
    from inatloc_nb.metrics.scoremaps import EVAL_SIZE
    from inatloc_nb.metrics.scoremaps import binarize
    from inatloc_nb.runs.runfolder import RunFolder
    from inatloc_nb.training.run_config import RunConfig, load_dataset

    folder = RunFolder(run_dir)
    config = RunConfig.from_json(folder.params_path)
    metrics = folder.read_metrics()
    block = metrics if split == "test" else metrics[split]
    threshold = float(block["optimal_threshold"]["50"])
    cams = folder.load_cams(split)
    dataset = load_dataset(config.data, config.image_root)
    gt = dataset.gt_boxes(split, size=EVAL_SIZE)
    names = dataset.class_names(cams.level)
    panels: dict[str, list] = {"images": [], "maps": [], "gt": [], "pred": [], "titles": []}
    for i in indices:
        bgr = cv2.imread(str(dataset.image_path(cams.image_ids[i])), cv2.IMREAD_COLOR)
        if bgr is None:
            raise PlotError(f"cannot read image {dataset.image_path(cams.image_ids[i])}")
        panels["images"].append(cv2.cvtColor(cv2.resize(bgr, (EVAL_SIZE, EVAL_SIZE)), cv2.COLOR_BGR2RGB))
        cam = cams.map(i)
        panels["maps"].append(cam)
        panels["gt"].append(gt[i])
        panels["pred"].append(contour_boxes(binarize(cam, threshold)))
        panels["titles"].append(f"{cams.level}: {names[cams.labels[i]]}\npredicted {names[cams.predictions[i]]}")
    return panels


def run_cam_grid(run_dir: str | Path, split: str = "test", n: int = 8, ncols: int = 4):
    """:func:`cam_grid` of the first ``n`` images of a run folder's ``cams/<split>.npz``, with the
    protocol's boxes at the optimal threshold for IoU 50."""
    from inatloc_nb.runs.runfolder import RunFolder

    count = len(RunFolder(run_dir).load_cams(split))
    p = _run_panels(run_dir, split, range(min(n, count)))
    return cam_grid(p["images"], p["maps"], p["gt"], p["pred"], p["titles"], ncols=ncols)


def compare_levels(run_dirs: Sequence[str | Path], split: str = "test", indices: Sequence[int] = (0, 1, 2)):
    """The same images' CAMs and boxes from several runs (one column per run, e.g. per level)."""
    if not run_dirs:
        raise PlotError("compare_levels: no run folder given")
    columns = [_run_panels(run_dir, split, indices) for run_dir in run_dirs]
    order = [(c, r) for r in range(len(indices)) for c in range(len(columns))]
    pick = {key: [columns[c][key][r] for c, r in order] for key in columns[0]}
    return cam_grid(pick["images"], pick["maps"], pick["gt"], pick["pred"], pick["titles"], ncols=len(columns))
