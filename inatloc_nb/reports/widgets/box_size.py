"""Box-size explorer: per training level, the distributions behind Fig. 5 of the paper.

For the runs of a :class:`LevelRuns`, the per-image analysis tables written by each run
(predicted / GT box-area ratio and GT-box activation ratio at the optimal threshold for
IoU 0.5) are shown per level as box plots with their medians. A level and a value range
select images; the selection is listed and shown as thumbnails (CAM, GT box, best box).
The chart is rendered to PNG (vl-convert), so it shows offline in any Jupyter front end.
"""
from __future__ import annotations

import io

import altair as alt
import ipywidgets as W
import numpy as np
import polars as pl

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.reports import plots
from inatloc_nb.reports.widgets.render import analyse, compose, overlay, to_png
from inatloc_nb.reports.widgets.runs import LevelRuns
from inatloc_nb.runs import results

MEASURES = {
    "box_area_ratio": "predicted / GT box area",
    "gt_activation_ratio": "GT box activation (inside / outside)",
}
MAX_THUMBNAILS = 12


class BoxSizeExplorer(W.VBox):
    """Widget: distributions of box-size measures per level; a range selects images."""

    def __init__(self, runs: LevelRuns, analysis: pl.DataFrame):
        self.runs = runs
        missing = {"image_id", "level", *MEASURES} - set(analysis.columns)
        if missing:
            raise InatlocError(f"analysis table lacks columns {sorted(missing)}")
        run_ids = [v.run_id for v in runs.views]
        self.analysis = analysis.filter(pl.col("run_id").is_in(run_ids))
        if "split" in self.analysis.columns:
            self.analysis = self.analysis.filter(pl.col("split") == runs.split)
        if self.analysis.is_empty():
            raise InatlocError(f"no per-image analysis rows for runs {run_ids} on split {runs.split!r}")
        self.measure = W.Dropdown(options=[(v, k) for k, v in MEASURES.items()], description="measure")
        self.level = W.Dropdown(options=runs.levels, value=runs.levels[0], description="level")
        self.value_range = W.FloatRangeSlider(description="log10 range", step=0.01, readout_format=".2f",
                                              continuous_update=False, layout=W.Layout(width="520px"))
        self.chart = W.Image(format="png")
        self.count = W.HTML()
        self.gallery = W.Image(format="png")
        self.selected = pl.DataFrame()
        self._reset_range()
        self.measure.observe(self._on_measure, names="value")
        self.level.observe(self._on_selection, names="value")
        self.value_range.observe(self._on_selection, names="value")
        super().__init__([W.HBox([self.measure, self.level]), self.value_range, self.chart, self.count, self.gallery])
        self.update()

    @classmethod
    def from_results(cls, results_dir: str, method: str = "cam", split: str = "val") -> BoxSizeExplorer:
        """Explorer over a results folder (the runs :meth:`LevelRuns.from_results` chooses)."""
        return cls(LevelRuns.from_results(results_dir, method=method, split=split),
                   results.load_analysis(results_dir))

    def medians(self) -> pl.DataFrame:
        """Median of each measure per level (the curves of Fig. 5), finest level first."""
        order = {lvl: i for i, lvl in enumerate(self.runs.levels)}
        return (self.analysis.group_by("level").agg(pl.col(m).median() for m in MEASURES)
                .sort(pl.col("level").replace_strict(order, default=len(order))))

    def _log_values(self) -> pl.Series:
        values = self.analysis[self.measure.value].cast(pl.Float64)
        return values.filter((values > 0) & values.is_finite()).log10()

    def _reset_range(self) -> None:
        logs = self._log_values()
        lo, hi = (float(np.floor(logs.min() * 100) / 100), float(np.ceil(logs.max() * 100) / 100)) \
            if logs.len() else (-1.0, 1.0)
        hi = max(hi, lo + 0.01)
        with self.value_range.hold_trait_notifications():
            self.value_range.min, self.value_range.max = -1e9, 1e9
            self.value_range.min, self.value_range.max = lo, hi
            self.value_range.value = (lo, hi)

    def _on_measure(self, _change: dict) -> None:
        self._reset_range()
        self.update()

    def _on_selection(self, _change: dict) -> None:
        self.update()

    def update(self) -> None:
        """Recompute the selection and redraw chart, count and thumbnails."""
        measure, (lo, hi) = self.measure.value, self.value_range.value
        self.selected = self.analysis.filter(
            (pl.col("level") == self.level.value) & (pl.col(measure) >= 10**lo) & (pl.col(measure) <= 10**hi)
        ).sort(measure).select("image_id", "level", *MEASURES, *(c for c in ("n_components",) if c in self.analysis.columns))
        n_level = self.analysis.filter(pl.col("level") == self.level.value).height
        self.count.value = (f"<b>{self.selected.height}</b> of {n_level} images at level <b>{self.level.value}</b> "
                            f"with {MEASURES[measure]} in [{10**lo:.3g}, {10**hi:.3g}]")
        self.gallery.value = self._thumbnails()
        png = io.BytesIO()
        self.distribution_chart().save(png, format="png")
        self.chart.value = png.getvalue()

    def distribution_chart(self) -> alt.LayerChart:
        """Box plots per level (log scale) with medians and the selected range shaded."""
        measure, (lo, hi) = self.measure.value, self.value_range.value
        data = self.analysis.select("level", measure).filter((pl.col(measure) > 0) & pl.col(measure).is_finite())
        x = alt.X("level:N", sort=self.runs.levels, title="training level")
        boxes = plots.level_box_plot(data, measure, x, MEASURES[measure], log=True)
        medians = alt.Chart(data.group_by("level").agg(pl.col(measure).median())).mark_line(
            point=True, color="black").encode(x=x, y=alt.Y(f"{measure}:Q", scale=alt.Scale(type="log")))
        band = alt.Chart(pl.DataFrame({"level": [self.level.value], "lo": [10**lo], "hi": [10**hi]})).mark_bar(
            color="orange", opacity=0.35).encode(x=x, y="lo:Q", y2="hi:Q")
        return alt.layer(boxes, medians, band).properties(width=380, height=240, title="Fig. 5 per image")

    def _thumbnails(self) -> bytes:
        if self.selected.is_empty():
            return b""
        view = self.runs.views[self.runs.levels.index(self.level.value)]
        tiles = []
        for image_id in self.selected["image_id"].head(MAX_THUMBNAILS).to_list():
            row = self.runs.row_of[image_id]
            score_map = view.map(row)
            gt = self.runs.gt_boxes[row]
            state = analyse(view.level, score_map, gt, view.optimal_threshold, view.optimal_threshold)
            tiles.append(overlay(state, score_map, gt, self.runs.image(image_id))[::2, ::2])
        return to_png(compose(tiles, gap=4))
