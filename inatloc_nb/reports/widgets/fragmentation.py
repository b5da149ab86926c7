"""Fragmentation explorer: one image's CAMs from the models of every level, side by side.

A threshold slider redraws every level's binarised map, its 8-connected components
(coloured and counted) and each contour box against the ground truth with the best IoU;
each panel marks its level's optimal threshold. Images are picked by category at any
level, or ordered by best / worst IoU or by component count at a chosen level. Each map is
read from its run's CAM file (:class:`LevelRuns`; the chunk holding it stays cached) and
upsampled as the metric does; a slider move only re-binarises and draws.
"""
from __future__ import annotations

import ipywidgets as W
import polars as pl

from inatloc_nb.reports.widgets.render import PanelState, analyse, compose, render_panel, to_png
from inatloc_nb.reports.widgets.runs import LevelRuns

ORDERS = {
    "dataset order": None,
    "best IoU first": ("iou", True),
    "worst IoU first": ("iou", False),
    "most components first": ("components", True),
    "fewest components first": ("components", False),
}
ALL = "(all)"


class FragmentationExplorer(W.VBox):
    """Widget: pick runs' images, move the threshold, see components and boxes per level."""

    def __init__(self, runs: LevelRuns):
        self.runs = runs
        self.table = runs.image_table()
        levels = runs.dataset.hierarchy.levels
        self.order = W.Dropdown(options=list(ORDERS), value="dataset order", description="order")
        self.order_level = W.Dropdown(options=runs.levels, value=runs.levels[0], description="at level")
        self.category_level = W.Dropdown(options=list(levels), value=levels[0], description="category of")
        self.category = W.Dropdown(description="category")
        self.image = W.Dropdown(description="image", layout=W.Layout(width="480px"))
        self.threshold = W.FloatSlider(value=runs.views[0].optimal_threshold, min=0.0, max=0.999, step=0.001,
                                       readout_format=".3f", description="threshold",
                                       continuous_update=True, layout=W.Layout(width="480px"))
        self.at_optimal = W.Checkbox(value=False, description="each level at its optimal threshold", indent=False,
                                     layout=W.Layout(width="auto"))
        self.picture = W.Image(format="png")
        self.summary = W.HTML()
        self.states: list[PanelState] = []
        self._fill_categories()
        self._fill_images()
        for control, handler in ((self.category_level, self._on_category_level), (self.category, self._on_filter),
                                 (self.order, self._on_filter), (self.order_level, self._on_filter),
                                 (self.image, self._on_redraw), (self.threshold, self._on_redraw),
                                 (self.at_optimal, self._on_redraw)):
            control.observe(handler, names="value")
        super().__init__([
            W.HBox([self.category_level, self.category]),
            W.HBox([self.order, self.order_level]),
            self.image, W.HBox([self.threshold, self.at_optimal]), self.picture, self.summary,
        ])
        self.redraw()

    # -------------------------------------------------------------------- selection

    def _fill_categories(self) -> None:
        names = sorted(self.table[self.category_level.value].unique().to_list())
        self.category.options = [ALL, *names]
        self.category.value = ALL

    def selected_images(self) -> list[str]:
        """Image ids matching the category filter, in the chosen order."""
        table = self.table
        if self.category.value not in (None, ALL):
            table = table.filter(pl.col(self.category_level.value) == self.category.value)
        order = ORDERS[self.order.value]
        if order is not None:
            column, descending = order
            table = table.sort([f"{column}_{self.order_level.value}", "image_id"],
                               descending=[descending, False])
        return table["image_id"].to_list()

    def _fill_images(self) -> None:
        ids = self.selected_images()
        self.image.options = ids
        self.image.value = ids[0] if ids else None

    def _on_category_level(self, _change: dict) -> None:
        with self.hold_trait_notifications():
            self._fill_categories()
        self._on_filter(_change)

    def _on_filter(self, _change: dict) -> None:
        self._fill_images()
        self.redraw()

    def _on_redraw(self, _change: dict) -> None:
        self.redraw()

    # -------------------------------------------------------------------- drawing

    def redraw(self) -> None:
        """Recompute every level's panel for the current image and threshold."""
        if self.image.value is None:
            self.states, self.picture.value = [], b""
            self.summary.value = "<i>no image matches the filter</i>"
            return
        row = self.runs.row_of[self.image.value]
        gt = self.runs.gt_boxes[row]
        picture = self.runs.image(self.image.value)
        panels, self.states = [], []
        for view in self.runs.views:
            t = view.optimal_threshold if self.at_optimal.value else self.threshold.value
            score_map = view.map(row)
            state = analyse(view.level, score_map, gt, t, view.optimal_threshold)
            self.states.append(state)
            panels.append(render_panel(state, score_map, gt, picture))
        self.picture.value = to_png(compose(panels))
        cells = "".join(
            f"<tr><td>{s.level}</td><td>{s.threshold:.3f}</td><td>{s.optimal_threshold:.3f}</td>"
            f"<td>{s.n_components}</td><td>{len(s.boxes)}</td><td>{s.best_iou:.3f}</td></tr>" for s in self.states)
        self.summary.value = (
            f"<b>{self.image.value}</b> ({len(gt)} GT box{'es' if len(gt) > 1 else ''})"
            "<table><tr><th>level</th><th>threshold</th><th>optimal</th><th>components</th>"
            f"<th>boxes</th><th>best IoU</th></tr>{cells}</table>")
