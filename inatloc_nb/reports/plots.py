"""The paper's figures as altair charts built from polars tables (and, from
:mod:`inatloc_nb.reports.cam_figures`, the CAM picture grids).

Every chart builder takes a table and returns an ``alt.Chart``-like object. A chart shows
only what its table holds: a missing method, level or seed is simply absent. An empty
table, or one without the columns a figure needs, raises :class:`PlotError`.

Input tables (column names as the results store writes them):

* results table (``inatloc_nb.runs.results`` schema, e.g. ``results.select_learning_rate``
  output): ``level`` (the evaluation level; CAM-Agg has one row per level), ``method``,
  ``seed``, ``per_class`` (null = all of D_w), ``n_train_images``, ``maxboxacc_v2``,
  ``maxboxacc_<iou>`` per IoU threshold and ``top1``. Only D_test rows (``split``) of
  finished runs (``status``) are drawn;
* analysis table (``results.load_analysis``, one row per D_f image and run): ``level``,
  ``box_area_ratio``, ``gt_activation_ratio``, ``n_components``;
* :func:`category_counts` and :func:`box_area_fractions` outputs for the dataset figures.

Levels run finest -> coarsest on the x axis (:func:`level_order`).
"""
from __future__ import annotations

import io
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import altair as alt
import numpy as np
import polars as pl

from inatloc_nb.core.atomic import atomic_write_bytes, atomic_write_text
from inatloc_nb.core.errors import PlotError
from inatloc_nb.hierarchies.labelling import parse_level
from inatloc_nb.reports.cam_figures import cam_grid, compare_levels, run_cam_grid

__all__ = [
    "PlotError", "level_order", "method_label", "save_chart", "granularity_comparison",
    "localization_by_level", "explainers_by_level", "classification_by_level", "data_efficiency",
    "analysis_medians", "component_counts", "level_box_plot", "per_iou_by_level", "seed_spread",
    "box_area_cdf", "images_per_category", "category_counts", "box_area_fractions", "learning_curve",
    "cam_grid", "run_cam_grid", "compare_levels",
]

#: Named levels, finest first, as they appear in iNaturalist-like and CUB hierarchies.
NAMED_LEVELS = ("species", "genus", "family", "order", "class", "phylum", "kingdom")
#: Display names of the WSOL methods.
METHOD_LABELS = {
    "cam": "CAM", "has": "HaS", "acol": "ACoL", "spg": "SPG", "adl": "ADL",
    "cutmix": "CutMix", "cam-agg": "CAM-Agg", "center": "Center", "fsl-seg": "FSL-Seg",
    "fsl-det": "FSL-Det",
}
#: Methods that are not trained at a level (they appear in tables, not in level curves).
NOT_BY_LEVEL = ("center", "fsl-seg", "fsl-det")
_PER_IOU = re.compile(r"maxboxacc_(\d+)$")
#: Run columns a mean over seeds keeps as text for its tooltip: column -> name in the chart data.
_RUN_DETAILS = {"lr": "lr", "run_id": "runs"}


def level_order(levels: Iterable[str]) -> list[str]:
    """Distinct ``levels`` finest first: named levels, then ``cK`` by K, then others as met."""
    seen = list(dict.fromkeys(levels))

    def rank(level: str) -> tuple[int, int, int]:
        if level in NAMED_LEVELS:
            return (0, NAMED_LEVELS.index(level), 0)
        steps = parse_level(level).steps
        if steps is not None:
            return (1, steps, 0)
        return (2, 0, seen.index(level))

    return sorted(seen, key=rank)


def method_label(method: str) -> str:
    """The paper's name for a method id (``"cam-agg"`` -> ``"CAM-Agg"``); unknown ids unchanged."""
    return METHOD_LABELS.get(method, method)


def _require(table: pl.DataFrame, columns: Sequence[str], figure: str, results: bool = True) -> pl.DataFrame:
    """``table`` (a results table: its finished D_test rows); PlotError when empty or lacking ``columns``."""
    if table.height == 0:
        raise PlotError(f"{figure}: the table is empty, nothing to draw")
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise PlotError(f"{figure}: the table lacks columns {missing} (has {table.columns})")
    if results and "status" in table.columns:
        table = table.filter(pl.col("status") == "ok")
    if results and "split" in table.columns:
        table = table.filter(pl.col("split") == "test")
    if table.height == 0:
        raise PlotError(f"{figure}: no finished D_test result in the table")
    return table


def _with_labels(table: pl.DataFrame) -> pl.DataFrame:
    if "method" not in table.columns:
        return table
    return table.with_columns(pl.col("method").replace(METHOD_LABELS).alias("Method"))


def _level_axis(table: pl.DataFrame, title: str = "training level") -> alt.X:
    return alt.X("level:N", sort=level_order(table["level"].to_list()), title=title)


def _full_data(table: pl.DataFrame) -> pl.DataFrame:
    """Rows trained on all of D_w (``per_class`` null) when the column exists."""
    if "per_class" not in table.columns:
        return table
    return table.filter(pl.col("per_class").is_null())


def _mean_over_seeds(table: pl.DataFrame, keys: Sequence[str], value: str) -> pl.DataFrame:
    """Mean, std and count of ``value`` per ``keys``, with the learning rates and run ids behind
    each mean (as text, for tooltips) when the table has them."""
    details = [pl.col(column).drop_nulls().unique().sort().cast(pl.String).str.join(", ").alias(name)
               for column, name in _RUN_DETAILS.items() if column in table.columns and column not in keys]
    return table.group_by(list(keys)).agg(
        pl.col(value).mean().alias(value),
        pl.col(value).std().fill_null(0.0).alias(f"{value}_std"),
        pl.len().alias("n_seeds"),
        *details,
    )


def _detail_tooltips(table: pl.DataFrame) -> list[alt.Tooltip]:
    """Tooltips for the :func:`_mean_over_seeds` run details ``table`` holds."""
    return [alt.Tooltip(f"{name}:N") for name in _RUN_DETAILS.values() if name in table.columns]


def _metric_by_level(table: pl.DataFrame, value: str, title: str, figure: str) -> alt.Chart:
    table = _require(table, ["level", "method", value], figure)
    full = _full_data(table.filter(~pl.col("method").is_in(NOT_BY_LEVEL))).drop_nulls(value)
    if full.height == 0:
        raise PlotError(f"{figure}: no run trained on all of D_w with a {value} value")
    means = _with_labels(_mean_over_seeds(full, ["level", "method"], value))
    return (
        alt.Chart(means)
        .mark_line(point=True)
        .encode(
            x=_level_axis(means),
            y=alt.Y(f"{value}:Q", title=title, scale=alt.Scale(zero=False)),
            color=alt.Color("Method:N", title="method"),
            tooltip=["Method", "level", alt.Tooltip(f"{value}:Q", format=".1f"), "n_seeds",
                     *_detail_tooltips(means)],
        )
        .properties(title=figure, width=320, height=240)
    )


def localization_by_level(table: pl.DataFrame) -> alt.Chart:
    """Fig. 3 (left): test MaxBoxAccV2 against training level, one line per method (mean over seeds)."""
    return _metric_by_level(table, "maxboxacc_v2", "MaxBoxAccV2 (%)", "Localization by training level")


def explainers_by_level(table: pl.DataFrame) -> alt.FacetChart:
    """Test MaxBoxAccV2 against training level, one line per explainer (``cam``: the run's own
    maps), one panel per method (mean over seeds)."""
    figure = "Explainers by training level"
    table = _require(table, ["level", "method", "explainer", "maxboxacc_v2"], figure)
    full = _full_data(table.filter(~pl.col("method").is_in(NOT_BY_LEVEL))).drop_nulls("maxboxacc_v2")
    if full.filter(pl.col("explainer") != "cam").height == 0:
        raise PlotError(f"{figure}: no explainer results (inatloc-nb explain, or a sweep with 'explainers:')")
    means = _with_labels(_mean_over_seeds(full, ["level", "method", "explainer"], "maxboxacc_v2"))
    return (
        alt.Chart(means)
        .mark_line(point=True)
        .encode(
            x=_level_axis(means),
            y=alt.Y("maxboxacc_v2:Q", title="MaxBoxAccV2 (%)", scale=alt.Scale(zero=False)),
            color=alt.Color("explainer:N", title="explainer"),
            tooltip=["Method", "explainer", "level", alt.Tooltip("maxboxacc_v2:Q", format=".1f"), "n_seeds",
                     *_detail_tooltips(means)],
        )
        .properties(width=280, height=220)
        .facet(column=alt.Column("Method:N", title=None))
        .properties(title=figure)
    )


def classification_by_level(table: pl.DataFrame) -> alt.Chart:
    """Fig. 3 (right): test top-1 accuracy at the training granularity against training level."""
    return _metric_by_level(table, "top1", "top-1 accuracy (%)", "Classification by training level")


def data_efficiency(table: pl.DataFrame, method: str = "cam") -> alt.Chart:
    """Fig. 4: MaxBoxAccV2 against the number of training images, one colour per level.

    Subsampled runs (``per_class`` set) are squares with mean +- std over seeds; runs on all
    of D_w are circles; the dashed line is the finest level on all of D_w.
    """
    figure = "MaxBoxAccV2 vs number of training images"
    table = _require(table, ["level", "method", "per_class", "n_train_images", "maxboxacc_v2"], figure)
    runs = table.filter(pl.col("method") == method).drop_nulls("maxboxacc_v2")
    if runs.height == 0:
        raise PlotError(f"{figure}: no {method_label(method)} run in the table")
    points = _mean_over_seeds(runs, ["level", "per_class"], "maxboxacc_v2").join(
        runs.group_by("level", "per_class").agg(pl.col("n_train_images").mean()),
        on=["level", "per_class"], nulls_equal=True,
    ).with_columns(
        pl.lit(method_label(method)).alias("Method"),
        pl.when(pl.col("per_class").is_null()).then(pl.lit("all of D_w"))
        .otherwise(pl.lit("per-category subsample")).alias("training set"),
        (pl.col("maxboxacc_v2") - pl.col("maxboxacc_v2_std")).alias("low"),
        (pl.col("maxboxacc_v2") + pl.col("maxboxacc_v2_std")).alias("high"),
    )
    order = level_order(points["level"].to_list())
    colour = alt.Color("level:N", sort=order, title="training level")
    x = alt.X("n_train_images:Q", scale=alt.Scale(type="log"), title="number of training images")
    base = alt.Chart(points).encode(x=x, color=colour)
    layers = [
        base.mark_rule().encode(y="low:Q", y2="high:Q"),
        base.mark_point(filled=True, size=70).encode(
            y=alt.Y("maxboxacc_v2:Q", title="MaxBoxAccV2 (%)", scale=alt.Scale(zero=False)),
            shape=alt.Shape("training set:N", scale=alt.Scale(
                domain=["all of D_w", "per-category subsample"], range=["circle", "square"])),
            tooltip=["Method", "level", "per_class", "n_train_images", alt.Tooltip("maxboxacc_v2:Q", format=".1f"),
                     "n_seeds", *_detail_tooltips(points)],
        ),
    ]
    baseline = points.filter(pl.col("per_class").is_null() & (pl.col("level") == order[0]))
    if baseline.height:
        layers.append(alt.Chart(baseline).mark_rule(strokeDash=[6, 4], color="black").encode(y="maxboxacc_v2:Q"))
    return alt.layer(*layers).properties(title=figure, width=360, height=260)


def analysis_medians(analysis: pl.DataFrame) -> alt.Chart:
    """Fig. 5 (left): medians of box-area ratio and GT-box activation ratio by training level."""
    figure = "CAM analysis on D_f (medians)"
    analysis = _require(analysis, ["level", "box_area_ratio", "gt_activation_ratio"], figure, results=False)
    medians = analysis.group_by("level").agg(
        pl.col("box_area_ratio").median().alias("predicted / GT box area"),
        pl.col("gt_activation_ratio").median().alias("GT box activation"),
    ).unpivot(index="level", variable_name="measure", value_name="median")
    return (
        alt.Chart(medians)
        .mark_line(point=True)
        .encode(
            x=_level_axis(medians),
            y=alt.Y("median:Q", title="median ratio"),
            color=alt.Color("measure:N", scale=alt.Scale(range=["black", "#d62728"])),
            tooltip=["level", "measure", alt.Tooltip("median:Q", format=".3f")],
        )
        .properties(title=figure, width=320, height=240)
    )


def level_box_plot(table: pl.DataFrame, value: str, x: alt.X, title: str, log: bool = False) -> alt.LayerChart:
    """Box plots of ``value`` per ``level``: whiskers from min to max, box from the first to the
    third quartile (linear interpolation), black tick at the median. Drawn from one summary row
    per level, so the chart's size does not grow with the number of images and runs."""
    column = pl.col(value)
    summary = table.group_by("level").agg(
        min=column.min(), q1=column.quantile(0.25, "linear"), median=column.median(),
        q3=column.quantile(0.75, "linear"), max=column.max(), images=pl.len())
    scale = alt.Scale(type="log") if log else alt.Undefined
    base = alt.Chart(summary).encode(x=x)
    tooltip = ["level", "images", "min", "q1", "median", "q3", "max"]
    whiskers = base.mark_rule().encode(y=alt.Y("min:Q", title=title, scale=scale), y2="max:Q")
    boxes = base.mark_bar(size=18).encode(y=alt.Y("q1:Q", scale=scale), y2="q3:Q", tooltip=tooltip)
    medians = base.mark_tick(color="black", size=18, thickness=2).encode(y=alt.Y("median:Q", scale=scale))
    return alt.layer(whiskers, boxes, medians)


def component_counts(analysis: pl.DataFrame) -> alt.LayerChart:
    """Fig. 5 (right): box plots of the connected-component counts of the binarised CAMs by level."""
    figure = "Connected components of the binarised CAM"
    analysis = _require(analysis, ["level", "n_components"], figure, results=False)
    return (level_box_plot(analysis, "n_components", _level_axis(analysis), "number of components")
            .properties(title=figure, width=320, height=240))


def per_iou_by_level(table: pl.DataFrame, method: str = "cam") -> alt.HConcatChart:
    """Fig. A3: MaxBoxAcc per IoU threshold by level, absolute and relative to the finest level."""
    figure = "MaxBoxAcc per IoU threshold"
    table = _require(table, ["level", "method"], figure)
    iou_columns = [c for c in table.columns if _PER_IOU.match(c)]
    if not iou_columns:
        raise PlotError(f"{figure}: the table has no maxboxacc_<iou> column (has {table.columns})")
    runs = _full_data(table.filter(pl.col("method") == method))
    if runs.height == 0:
        raise PlotError(f"{figure}: no {method_label(method)} run trained on all of D_w")
    long = runs.unpivot(index="level", on=iou_columns, variable_name="iou", value_name="maxboxacc")
    long = long.drop_nulls("maxboxacc").group_by("level", "iou").agg(pl.col("maxboxacc").mean()).with_columns(
        ("IoU " + pl.col("iou").str.extract(r"(\d+)$") + "%").alias("IoU threshold")
    )
    order = level_order(long["level"].to_list())
    finest = long.filter(pl.col("level") == order[0]).select("iou", pl.col("maxboxacc").alias("finest"))
    long = long.join(finest, on="iou", how="left").with_columns(
        (pl.col("maxboxacc") / pl.col("finest")).alias("relative")
    )
    base = alt.Chart(long).mark_line(point=True).encode(
        x=alt.X("level:N", sort=order, title="training level"),
        color=alt.Color("IoU threshold:N"),
        tooltip=["level", "IoU threshold", alt.Tooltip("maxboxacc:Q", format=".1f"),
                 alt.Tooltip("relative:Q", format=".3f")],
    ).properties(width=300, height=240)
    return alt.hconcat(
        base.encode(y=alt.Y("maxboxacc:Q", title="MaxBoxAcc (%)")).properties(title="absolute"),
        base.encode(y=alt.Y("relative:Q", title=f"relative to {order[0]}", scale=alt.Scale(zero=False)))
        .properties(title=f"relative to {order[0]}"),
    ).properties(title=f"{figure} ({method_label(method)})")


def seed_spread(table: pl.DataFrame, method: str = "cam") -> alt.LayerChart:
    """Fig. A4: MaxBoxAccV2 of every seed at each level, with the mean as a tick."""
    figure = "Spread over retrainings"
    table = _require(table, ["level", "method", "seed", "maxboxacc_v2"], figure)
    runs = _full_data(table.filter(pl.col("method") == method)).drop_nulls("maxboxacc_v2")
    if runs.height == 0:
        raise PlotError(f"{figure}: no {method_label(method)} run trained on all of D_w")
    x = _level_axis(runs)
    y = alt.Y("maxboxacc_v2:Q", title="MaxBoxAccV2 (%)", scale=alt.Scale(zero=False))
    shown = [c for c in ("run_id", "level", "lr", "seed", "n_train_images") if c in runs.columns]
    dots = alt.Chart(runs.select(*shown, "maxboxacc_v2")).mark_circle(size=60, opacity=0.7).encode(
        x=x, y=y, tooltip=[*shown, alt.Tooltip("maxboxacc_v2:Q", format=".2f")]
    )
    mean = alt.Chart(runs.group_by("level").agg(pl.col("maxboxacc_v2").mean())).mark_tick(
        color="orange", thickness=2, size=30
    ).encode(x=x, y=y)
    return alt.layer(dots, mean).properties(title=f"{figure} ({method_label(method)})", width=320, height=240)


def category_counts(hierarchy, leaf_labels: Sequence[int] | np.ndarray) -> pl.DataFrame:
    """Images per category at every level of ``hierarchy``: ``level, category, n_images``."""
    labels = np.asarray(leaf_labels, dtype=np.int64).reshape(-1)
    frames = []
    for level in hierarchy.levels:
        names = hierarchy.level_names(level)
        counts = np.bincount(hierarchy.level_index(level)[labels], minlength=len(names))
        frames.append(pl.DataFrame({"level": level, "category": list(names), "n_images": counts.astype(np.int64)}))
    return pl.concat(frames)


def images_per_category(counts: pl.DataFrame) -> alt.Chart:
    """Fig. A7: the distribution of images per category at each level (box plot over the points)."""
    figure = "Images per category"
    counts = _require(counts, ["level", "category", "n_images"], figure, results=False)
    x = _level_axis(counts, title="level")
    y = alt.Y("n_images:Q", title="images per category", scale=alt.Scale(type="log"))
    boxes = alt.Chart(counts).mark_boxplot(extent="min-max", opacity=0.4, outliers=False).encode(x=x, y=y)
    dots = alt.Chart(counts).mark_circle(size=18, opacity=0.5).encode(
        x=x, y=y, xOffset=alt.XOffset("jitter:Q"), tooltip=["level", "category", "n_images"]
    ).transform_calculate(jitter="random()")
    return alt.layer(boxes, dots).properties(title=figure, width=360, height=260)


def box_area_fractions(images: pl.DataFrame, boxes: pl.DataFrame, dataset: str) -> pl.DataFrame:
    """Box area / image area for every box: ``dataset, fraction`` (inclusive pixel areas)."""
    joined = boxes.join(images.select("image_id", "width", "height"), on="image_id", how="left")
    orphans = joined.filter(pl.col("width").is_null())["image_id"]
    if len(orphans):
        raise PlotError(f"{dataset}: boxes for images without a size, e.g. {orphans.head(3).to_list()}")
    return joined.select(
        pl.lit(dataset).alias("dataset"),
        ((pl.col("x1") - pl.col("x0") + 1) * (pl.col("y1") - pl.col("y0") + 1)
         / (pl.col("width") * pl.col("height"))).cast(pl.Float64).alias("fraction"),
    )


def box_area_cdf(fractions: pl.DataFrame) -> alt.Chart:
    """Fig. A6: the CDF of box area / image area, one line per dataset."""
    figure = "CDF of box size"
    fractions = _require(fractions, ["dataset", "fraction"], figure, results=False)
    grid = np.linspace(0.0, 1.0, 101)
    curves = []
    for (name,), group in fractions.group_by("dataset", maintain_order=True):
        values = np.sort(group["fraction"].to_numpy())
        cdf = np.searchsorted(values, grid, side="right") / len(values)
        curves.append(pl.DataFrame({"dataset": name, "fraction": grid, "cdf": cdf}))
    return (
        alt.Chart(pl.concat(curves))
        .mark_line()
        .encode(
            x=alt.X("fraction:Q", title="box area / image area"),
            y=alt.Y("cdf:Q", title="fraction of boxes", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("dataset:N"),
            tooltip=["dataset", alt.Tooltip("fraction:Q", format=".2f"), alt.Tooltip("cdf:Q", format=".3f")],
        )
        .properties(title=figure, width=320, height=240)
    )


def learning_curve(history: pl.DataFrame) -> alt.Chart:
    """The learning curve of a run's ``history.csv``: every loss / accuracy column by epoch."""
    figure = "Learning curve"
    history = _require(history, ["epoch"], figure, results=False)
    long = history.unpivot(index="epoch", variable_name="measure", value_name="value").drop_nulls("value")
    kind = pl.when(pl.col("measure").str.contains("loss")).then(pl.lit("loss")).otherwise(pl.lit("accuracy"))
    return (
        alt.Chart(long.with_columns(kind.alias("kind")))
        .mark_line(point=True)
        .encode(x=alt.X("epoch:Q", title="epoch"), y=alt.Y("value:Q", title=None),
                color="measure:N", tooltip=["epoch", "measure", alt.Tooltip("value:Q", format=".4f")])
        .properties(width=260, height=180)
        .facet(column=alt.Column("kind:N", title=None))
        .resolve_scale(y="independent")
        .properties(title=figure)
    )


def granularity_comparison(table: pl.DataFrame) -> alt.FacetChart:
    """D_test MaxBoxAccV2 (mean +- std over seeds) of each granularity strategy, per dataset, from
    :func:`inatloc_nb.granularity.selection.comparison_table`."""
    figure = "Choosing the granularity"
    table = _require(table, ["dataset", "strategy", "mean", "std"], figure, results=False)
    table = table.fill_nan(None)  # one seed has no std; NaN is not valid JSON
    table = table.with_columns(low=pl.col("mean") - pl.col("std").fill_null(0), high=pl.col("mean") + pl.col("std").fill_null(0))
    base = alt.Chart().encode(y=alt.Y("strategy:N", title=None, sort=None))
    title = "D_test MaxBoxAccV2 (%), mean +- std over seeds"
    bars = base.mark_bar(color="#4c78a8").encode(
        x=alt.X("mean:Q", title=title, scale=alt.Scale(zero=False)),
        tooltip=["strategy", "detail", alt.Tooltip("mean:Q", format=".1f"), alt.Tooltip("std:Q", format=".1f"),
                 "n_seeds"])
    errors = base.mark_errorbar(color="black").encode(x=alt.X("low:Q", title=title), x2="high:Q")
    return (alt.layer(bars, errors, data=table).properties(width=320, height=150)
            .facet(row=alt.Row("dataset:N", title=None)).properties(title=figure))


def save_chart(chart: alt.TopLevelMixin, path_stem: str | Path, scale: float = 2.0) -> tuple[Path, Path]:
    """Write ``chart`` as ``<stem>.html`` (self-contained, works offline) and ``<stem>.png``."""
    import vl_convert as vlc

    stem = Path(path_stem)
    html = io.StringIO()
    chart.save(html, format="html", inline=True)
    html_path = atomic_write_text(stem.with_suffix(".html"), html.getvalue())
    png_path = atomic_write_bytes(stem.with_suffix(".png"), vlc.vegalite_to_png(chart.to_json(), scale=scale))
    return html_path, png_path
