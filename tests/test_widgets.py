"""The ipywidgets explorers, driven from Python on a real tiny results folder."""
from __future__ import annotations

from pathlib import Path

import cv2
import nbformat
import numpy as np
import polars as pl
import pytest

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.metrics.boxacc import best_iou_curves, contour_boxes
from inatloc_nb.metrics.scoremaps import quantize
from inatloc_nb.metrics.scoremaps import binarize
from inatloc_nb.reports.widgets import BoxSizeExplorer, FragmentationExplorer, LevelRuns
from inatloc_nb.reports.widgets.box_size import MEASURES
from inatloc_nb.reports.widgets.render import analyse
from inatloc_nb.runs import results

pytest_plugins = ["fixtures_results"]
pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "04_explorer.ipynb"
LOW, HIGH = 0.05, 0.999


def _png_shape(data: bytes) -> tuple[int, ...]:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a PNG"
    return image.shape


@pytest.fixture()
def fragmentation(level_runs: LevelRuns) -> FragmentationExplorer:
    return FragmentationExplorer(level_runs)


@pytest.fixture(scope="module")
def analysis(explorer_results: Path) -> pl.DataFrame:
    return results.load_analysis(explorer_results)


# ------------------------------------------------------------------------------ runs and rendering


def test_level_runs_one_view_per_level_finest_first(level_runs: LevelRuns, explorer_results: Path,
                                                      tiny_dataset) -> None:
    store = results.load(explorer_results)
    trained = set(store["train_level"])
    assert len(trained) == 3 and level_runs.levels == [lv for lv in tiny_dataset.hierarchy.levels if lv in trained]
    n = tiny_dataset.images("val").height
    assert level_runs.image_ids == tiny_dataset.images("val")["image_id"].to_list()
    for view in level_runs.views:
        assert len(view.cams) == n and view.cams.raw.dtype == np.float32
        np.testing.assert_array_equal(view.map(n - 1), view.cams.maps()[n - 1])
        assert view.map(0).shape == (224, 224) and view.map(0).dtype == np.float64
        row = store.filter((pl.col("run_id") == view.run_id) & (pl.col("split") == "val"))
        assert view.optimal_threshold == row["threshold_50"].item()
    table = level_runs.image_table()
    assert table.height == n and table["image_id"].to_list() == level_runs.image_ids
    assert {f"{m}_{lv}" for m in ("iou", "components") for lv in level_runs.levels} <= set(table.columns)
    assert set(tiny_dataset.hierarchy.levels) <= set(table.columns)


def test_render_follows_the_metrics_protocol(level_runs: LevelRuns) -> None:
    """binarize is ``q > int(t * q.max())``; analyse's best IoU is best_iou_curves' at that threshold."""
    thresholds = np.array([0.0, LOW, 0.3, 0.5, 0.8, HIGH])
    for view in level_runs.views:
        maps = view.cams.maps()
        curves = best_iou_curves(maps, level_runs.gt_boxes, thresholds)
        for i, score_map in enumerate(maps):
            q = quantize(score_map[None])[0]
            for j, t in enumerate(thresholds):
                binary = binarize(score_map, t)
                np.testing.assert_array_equal(binary, q > int(t * q.max()))
                state = analyse(view.level, score_map, level_runs.gt_boxes[i], t, view.optimal_threshold)
                assert state.best_iou == pytest.approx(curves[i, j], abs=1e-12)
                np.testing.assert_array_equal(state.labels > 0, binary)
                assert state.n_components == cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)[0] - 1
                np.testing.assert_array_equal(state.boxes, contour_boxes(binary))


def test_image_table_matches_the_metrics(level_runs: LevelRuns) -> None:
    table = level_runs.image_table()
    for view in level_runs.views:
        maps = view.cams.maps()
        curves = best_iou_curves(maps, level_runs.gt_boxes, np.array([view.optimal_threshold]))
        np.testing.assert_allclose(table[f"iou_{view.level}"].to_numpy(), curves[:, 0])
        comps = [analyse(view.level, m, gt, view.optimal_threshold, view.optimal_threshold).n_components
                 for m, gt in zip(maps, level_runs.gt_boxes)]
        assert table[f"components_{view.level}"].to_list() == comps


# ------------------------------------------------------------------------------ fragmentation explorer


def test_threshold_slider_redraws_components_boxes_and_picture(fragmentation: FragmentationExplorer) -> None:
    fragmentation.threshold.value = LOW
    low, low_png = fragmentation.states, fragmentation.picture.value
    summary = fragmentation.summary.value
    fragmentation.threshold.value = HIGH
    high, high_png = fragmentation.states, fragmentation.picture.value
    assert [s.level for s in low] == [s.level for s in high] == fragmentation.runs.levels
    assert all(s.threshold == LOW for s in low) and all(s.threshold == HIGH for s in high)
    for lo, hi in zip(low, high):
        assert 1 <= hi.n_components <= lo.n_components
        assert np.all((hi.labels > 0) <= (lo.labels > 0))  # a higher threshold keeps a subset of pixels
        assert not np.array_equal(lo.boxes, hi.boxes) and lo.best_iou != hi.best_iou
    assert low_png and high_png and low_png != high_png
    height, width, _ = _png_shape(high_png)
    assert width >= 224 * len(low) and height > 2 * 224
    assert fragmentation.summary.value != summary and f"{HIGH:.3f}" in fragmentation.summary.value


def test_threshold_zero_keeps_every_pixel_above_the_lowest_grey_level(fragmentation: FragmentationExplorer,
                                                                      level_runs: LevelRuns) -> None:
    """At t = 0 the protocol keeps ``q > 0``: the whole map but its pixels quantised to 0."""
    fragmentation.threshold.value = 0.0
    row = level_runs.image_ids.index(fragmentation.image.value)
    for state, view in zip(fragmentation.states, level_runs.views):
        q = quantize(view.map(row)[None])[0]
        np.testing.assert_array_equal(state.labels > 0, q > 0)
        assert state.n_components == cv2.connectedComponents((q > 0).astype(np.uint8), connectivity=8)[0] - 1
        ys, xs = np.nonzero(q > 0)
        assert [xs.min(), ys.min(), xs.max(), ys.max()] in state.boxes.tolist()  # the outer contour's box


def test_optimal_checkbox_puts_each_level_at_its_own_threshold(fragmentation: FragmentationExplorer,
                                                               level_runs: LevelRuns) -> None:
    fragmentation.threshold.value = 0.5
    fragmentation.at_optimal.value = True
    assert [s.threshold for s in fragmentation.states] == pytest.approx([v.optimal_threshold for v in level_runs.views])
    assert [s.optimal_threshold for s in fragmentation.states] == [s.threshold for s in fragmentation.states]
    fragmentation.threshold.value = 0.9  # the slider no longer applies
    assert [s.threshold for s in fragmentation.states] == pytest.approx([v.optimal_threshold for v in level_runs.views])
    fragmentation.at_optimal.value = False
    assert all(s.threshold == pytest.approx(0.9) for s in fragmentation.states)


@pytest.mark.parametrize("position", [0, -1])
def test_worst_iou_order_starts_with_the_lowest_iou(fragmentation: FragmentationExplorer, position: int) -> None:
    """Ordering at the finest and at the coarsest training level."""
    level = fragmentation.runs.levels[position]
    fragmentation.at_optimal.value = True  # the table's IoUs are at each level's optimal threshold
    fragmentation.order_level.value = level
    fragmentation.order.value = "worst IoU first"
    table = fragmentation.runs.image_table()
    ious = dict(zip(table["image_id"], table[f"iou_{level}"]))
    options = list(fragmentation.image.options)
    assert sorted(options) == sorted(table["image_id"])
    assert fragmentation.image.value == options[0]
    assert ious[options[0]] == table[f"iou_{level}"].min()
    assert [ious[i] for i in options] == sorted(ious[i] for i in options)
    assert fragmentation.states[position].best_iou == pytest.approx(ious[options[0]])
    fragmentation.order.value = "most components first"
    comps = dict(zip(table["image_id"], table[f"components_{level}"]))
    counts = [comps[i] for i in fragmentation.image.options]
    assert counts == sorted(counts, reverse=True)


def test_category_filter_restricts_the_images(fragmentation: FragmentationExplorer, tiny_dataset) -> None:
    table = fragmentation.runs.image_table()
    fragmentation.category_level.value = "phylum"
    names = tiny_dataset.hierarchy.level_names("phylum")
    assert set(fragmentation.category.options) == {"(all)", *names}
    for name in names:
        fragmentation.category.value = name
        expected = table.filter(pl.col("phylum") == name)["image_id"].to_list()
        assert list(fragmentation.image.options) == expected and 0 < len(expected) < table.height
        assert fragmentation.selected_images() == expected
        assert fragmentation.image.value == expected[0] and fragmentation.picture.value
    fragmentation.category_level.value = "species"
    assert fragmentation.category.value == "(all)" and len(fragmentation.image.options) == table.height


# ------------------------------------------------------------------------------ box-size explorer


def test_box_size_range_narrows_the_selection(level_runs: LevelRuns, analysis: pl.DataFrame) -> None:
    explorer = BoxSizeExplorer(level_runs, analysis)
    for measure in MEASURES:
        explorer.measure.value = measure
        for level in level_runs.levels:
            explorer.level.value = level
            explorer.value_range.value = (explorer.value_range.min, explorer.value_range.max)
            full = explorer.selected
            n_level = analysis.filter((pl.col("level") == level) & (pl.col("split") == "val")).height
            assert full.height == n_level  # the slider's bounds span every positive value
            assert explorer.gallery.value and _png_shape(explorer.gallery.value)
            chart = explorer.chart.value
            values = np.log10(full[measure].to_numpy())
            narrow = (float(np.quantile(values, 0.25)), float(np.quantile(values, 0.75)))
            explorer.value_range.value = narrow
            lo, hi = explorer.value_range.value
            assert 0 < explorer.selected.height < full.height
            assert explorer.selected["level"].unique().to_list() == [level]
            assert explorer.selected[measure].is_between(10**lo, 10**hi).all()
            inside = full.filter(pl.col(measure).is_between(10**lo, 10**hi))
            assert sorted(explorer.selected["image_id"]) == sorted(inside["image_id"])
            assert f"<b>{explorer.selected.height}</b> of {n_level}" in explorer.count.value
            assert _png_shape(explorer.chart.value) and explorer.chart.value != chart  # the shaded band moved


def test_box_size_medians_and_chart(level_runs: LevelRuns, analysis: pl.DataFrame, explorer_results: Path) -> None:
    explorer = BoxSizeExplorer.from_results(explorer_results)
    direct = (analysis.filter(pl.col("split") == "val").group_by("level")
              .agg(pl.col(m).median() for m in MEASURES))
    medians = explorer.medians()
    assert medians["level"].to_list() == level_runs.levels
    for row in medians.iter_rows(named=True):
        expected = direct.filter(pl.col("level") == row["level"]).row(0, named=True)
        assert [row[m] for m in MEASURES] == pytest.approx([expected[m] for m in MEASURES])
    spec = explorer.distribution_chart().to_dict()
    assert len(spec["layer"]) == 3
    assert [layer["mark"]["type"] for layer in spec["layer"][0]["layer"]] == ["rule", "bar", "tick"]
    summaries = [row for row in spec["datasets"].values() if row and "q1" in row[0]]
    assert len(summaries) == 1 and len(summaries[0]) == len(level_runs.levels)  # one row per level, not per image


def test_explorer_errors_are_clear(level_runs: LevelRuns, analysis: pl.DataFrame, explorer_results: Path,
                                   tmp_path: Path) -> None:
    with pytest.raises(InatlocError, match=r"lacks columns \['box_area_ratio'\]"):
        BoxSizeExplorer(level_runs, analysis.drop("box_area_ratio"))
    with pytest.raises(InatlocError, match="no per-image analysis rows"):
        BoxSizeExplorer(level_runs, analysis.filter(pl.col("split") == "nowhere"))
    with pytest.raises(InatlocError, match=r"no finished 'has' runs \(methods present: \['cam'\]\)"):
        LevelRuns.from_results(explorer_results, method="has")


# ------------------------------------------------------------------------------ the notebook


def test_explorer_notebook_is_clean_and_runs(explorer_results: Path, tmp_path: Path) -> None:
    import papermill

    stored = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(stored)
    code = [c for c in stored.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    out = tmp_path / "04.ipynb"
    papermill.execute_notebook(str(NOTEBOOK), str(out), parameters={"results_dir": str(explorer_results)},
                               kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    done = nbformat.read(out, as_version=4)
    outputs = [o for c in done.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 2  # the two explorers
