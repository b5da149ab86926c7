"""The per-level CAMs of a results folder, gathered once so the explorers never re-infer.

For one method, one run per training level is chosen the way the paper reports results:
the learning rate with the best D_f MaxBoxAccV2 (:func:`inatloc_nb.runs.results.select_learning_rate`),
on all of D_w (``per_class`` null) unless asked otherwise, lowest seed first. Its stored
CAMs of the explored split are opened with the optimal threshold (IoU 0.5) on that split.
Maps are read from the run's ``cams/<split>.npz`` chunk by chunk when needed and turned into
evaluation maps by the same function the metric uses (``inatloc_nb.metrics.scoremaps.evaluation_maps``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.datasets.dataset import WSOLDataset
from inatloc_nb.metrics.boxacc import best_iou_curves
from inatloc_nb.runs import results
from inatloc_nb.runs.runfolder import run_folder
from inatloc_nb.training.cam import CamSet


@dataclass(frozen=True)
class LevelView:
    """One training level's run: its CAMs of the explored split and optimal threshold."""

    level: str
    run_id: str
    cams: CamSet                     # rows of LevelRuns.image_ids, raw maps read lazily
    optimal_threshold: float         # IoU 0.5, on the explored split

    def map(self, row: int) -> np.ndarray:
        """The (224, 224) float64 evaluation map of one image row."""
        return self.cams.map(row)


class LevelRuns:
    """CAMs of the same images from models trained at each level, finest level first."""

    def __init__(self, dataset: WSOLDataset, split: str, method: str, views: list[LevelView]):
        if not views:
            raise InatlocError(f"no finished {method!r} runs with stored CAMs of split {split!r}")
        self.dataset, self.split, self.method, self.views = dataset, split, method, views
        images = dataset.images(split)
        self.image_ids: list[str] = images["image_id"].to_list()
        self.row_of: dict[str, int] = {image_id: i for i, image_id in enumerate(self.image_ids)}
        self.gt_boxes: list[np.ndarray] = dataset.gt_boxes(split)
        self._table: pl.DataFrame | None = None

    @property
    def levels(self) -> list[str]:
        return [v.level for v in self.views]

    @classmethod
    def from_results(cls, results_dir: str | Path, method: str = "cam", split: str = "val",
                     per_class: int | None = None, dataset: WSOLDataset | None = None) -> LevelRuns:
        """Choose one run per level from a results folder (see the module docstring)."""
        from inatloc_nb.training.run_config import load_dataset

        results_dir = Path(results_dir)
        store = results.collect(results_dir)
        chosen = results.select_learning_rate(store).filter(
            (pl.col("method") == method) & (pl.col("explainer") == results.OWN_MAPS)
            & (pl.col("level") == pl.col("train_level"))
            & (pl.col("per_class").is_null() if per_class is None else pl.col("per_class") == per_class)
        ).sort("seed")
        if chosen.is_empty():
            raise InatlocError(f"{results_dir}: no finished {method!r} runs "
                               f"(methods present: {sorted(store['method'].unique().to_list())})")
        if dataset is None:
            dataset = load_dataset(chosen["data"][0])
        order = {lvl: i for i, lvl in enumerate(dataset.hierarchy.levels)}
        views = []
        for row in chosen.unique("level", keep="first", maintain_order=True).iter_rows(named=True):
            folder = run_folder(results_dir, row["run_id"])
            if not folder.cams_path(split).is_file():
                continue
            cams = folder.load_cams(split)
            thr = store.filter((pl.col("run_id") == row["run_id"]) & (pl.col("split") == split)
                               & (pl.col("level") == row["level"]))["threshold_50"]
            views.append((order.get(row["level"], len(order)), row["level"], row["run_id"], cams,
                          float(thr[0]) if thr.len() else 0.5))
        views.sort(key=lambda v: v[0])
        ids = dataset.images(split)["image_id"].to_list()
        level_views = []
        for _, level, run_id, cams, thr in views:
            if cams.image_ids != ids:
                raise InatlocError(f"run {run_id}: its CAMs of {split!r} are not the dataset's images of that split")
            level_views.append(LevelView(level, run_id, cams, thr))
        return cls(dataset, split, method, level_views)

    def image(self, image_id: str) -> np.ndarray | None:
        """(224, 224, 3) RGB uint8 of an image, or None when the dataset has no image root."""
        import cv2

        if self.dataset.image_root is None:
            return None
        path = self.dataset.image_path(image_id)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InatlocError(f"cannot read image {path}")
        return cv2.cvtColor(cv2.resize(bgr, (224, 224), interpolation=cv2.INTER_LINEAR), cv2.COLOR_BGR2RGB)

    def image_table(self) -> pl.DataFrame:
        """One row per image: its category at every level, and per training level the best IoU
        and the number of 8-connected components at that level's optimal threshold."""
        if self._table is None:
            import cv2

            from inatloc_nb.metrics.scoremaps import binarize

            columns: dict[str, object] = {"image_id": self.image_ids}
            for level in self.dataset.hierarchy.levels:
                names = self.dataset.hierarchy.level_names(level)
                columns[level] = [names[i] for i in self.dataset.labels(self.split, level)]
            for view in self.views:
                threshold = np.array([view.optimal_threshold])
                iou, comps = [], []
                for start, maps in view.cams.iter_maps():
                    iou.append(best_iou_curves(maps, self.gt_boxes[start : start + len(maps)], threshold)[:, 0])
                    comps.extend(cv2.connectedComponents(binarize(m, view.optimal_threshold).astype(np.uint8),
                                                         connectivity=8)[0] - 1 for m in maps)
                columns[f"iou_{view.level}"] = np.concatenate(iou) if iou else np.empty(0)
                columns[f"components_{view.level}"] = np.asarray(comps, dtype=np.int64)
            self._table = pl.DataFrame(columns)
        return self._table
