"""Figure builders, chart files and the ``report`` command on hand-written run folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from inatloc_nb.cli import main
from inatloc_nb.core.atomic import atomic_write_json, atomic_write_parquet
from inatloc_nb.reports import plots, report
from inatloc_nb.runs import results, runfolder

LEVELS = ("species", "genus", "family", "order")
#: A made-up "true" MaxBoxAccV2 per level, peaking at family as in the paper.
PEAK = {"species": 50.0, "genus": 55.0, "family": 60.0, "order": 52.0}


def _metrics(score: float, top1: float) -> dict:
    per_iou = {"30": score + 20, "50": score, "70": score - 20}
    block = {"maxboxacc_v2": score, "per_iou": per_iou, "optimal_threshold": {"30": 0.2, "50": 0.3, "70": 0.4},
             "top1": top1}
    return {**block, "val": {**block, "maxboxacc_v2": score + 1}}


def _write_run(root: Path, run_id: str, params: dict, metrics: dict | None, analysis: pl.DataFrame | None = None,
               table: bool = True) -> None:
    folder = root / "runs" / run_id
    record = {"run_id": run_id, "params": params, "data": "synth:demo",
              "status": "ok" if metrics is not None else "failed", "wall_seconds": 1.5}
    atomic_write_json(folder / results.RUN_RECORD, record)
    if metrics is None:
        atomic_write_json(folder / "error.json", {"type": "RuntimeError", "message": "RuntimeError: diverged"})
    else:
        atomic_write_json(folder / "metrics.json", metrics)
    if analysis is not None:
        atomic_write_parquet(folder / runfolder.ANALYSIS, analysis)
    if table:  # the others are rebuilt by results.collect
        results.write_run_results(folder)


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory) -> Path:
    """A sweep-like folder: CAM and HaS at four levels, two learning rates, three seeds, CAM
    subsamples of 5 and 10 images per class, CAM-Agg, the center baseline and a failed run."""
    root = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    base = {"dataset": "demo", "schedule": "2epoch", "backbone": "tinycnn", "pretrained": False,
            "image_size": 64, "batch_size": 32}
    n_per_level = {"species": 8, "genus": 4, "family": 2, "order": 1}
    for method, seeds, subsets in (("cam", (0, 1, 2), (None, 5, 10)), ("has", (0,), (None,))):
        for level in LEVELS:
            for lr in (0.01, 0.001):
                for seed in seeds:
                    for per_class in subsets:
                        score = PEAK[level] - (5 if lr == 0.001 else 0) - (3 if per_class else 0) + rng.normal(0, 1)
                        run_id = f"{method}-{level}-{lr}-s{seed}-n{per_class}"
                        metrics = _metrics(score, 40 + 10 * LEVELS.index(level))
                        metrics["n_train_images"] = (per_class or 50) * n_per_level[level]
                        analysis = None
                        if method == "cam" and per_class is None:
                            analysis = pl.DataFrame({
                                "image_id": [f"val/{i}.png" for i in range(6)],
                                "box_area_ratio": rng.uniform(1, 3, 6) / (1 + LEVELS.index(level)),
                                "gt_activation_ratio": rng.uniform(0.5, 2, 6),
                                "n_components": rng.integers(1, 5 + LEVELS.index(level), 6),
                            })
                        _write_run(root, run_id, {**base, "level": level, "method": method, "lr": lr, "seed": seed,
                                                  "per_class": per_class}, metrics, analysis, table=seed != 2)
    agg = {"per_level": {level: _metrics(PEAK["species"] - 2 * i, 40.0) for i, level in enumerate(LEVELS)}}
    _write_run(root, "cam-agg-species", {**base, "level": "species", "method": "cam-agg", "lr": 0.01, "seed": 0,
                                         "per_class": None}, agg)
    _write_run(root, "center-species", {**base, "level": "species", "method": "center", "lr": None, "seed": 0,
                                        "per_class": None}, _metrics(30.0, None))
    _write_run(root, "has-species-broken", {**base, "level": "species", "method": "has", "lr": 0.1, "seed": 0,
                                            "per_class": None}, None)
    return root


@pytest.fixture(scope="module")
def best(results_dir) -> pl.DataFrame:
    return results.select_learning_rate(results.collect(results_dir))


def _chart_rows(chart) -> list[dict]:
    """Every data row embedded in an altair chart spec."""
    return [row for rows in chart.to_dict()["datasets"].values() for row in rows]


def test_level_order_finest_first():
    assert plots.level_order(["order", "species", "c2", "genus", "c0", "odd", "order"]) == [
        "species", "genus", "order", "c0", "c2", "odd"]


def test_localization_by_level_averages_seeds_of_selected_runs(best):
    rows = _chart_rows(plots.localization_by_level(best))
    by_key = {(r["Method"], r["level"]): r for r in rows}
    assert {m for m, _ in by_key} == {"CAM", "HaS", "CAM-Agg"}  # center is a table-only baseline
    cam = best.filter((pl.col("method") == "cam") & (pl.col("level") == "family") & pl.col("per_class").is_null())
    assert cam.height == 3 and set(cam["lr"]) == {0.01}  # the D_f selection picked the better lr
    assert by_key["CAM", "family"]["maxboxacc_v2"] == pytest.approx(cam["maxboxacc_v2"].mean())
    assert by_key["CAM", "family"]["n_seeds"] == 3
    assert by_key["CAM-Agg", "order"]["maxboxacc_v2"] == pytest.approx(PEAK["species"] - 6)


def test_level_axis_runs_finest_to_coarsest(best):
    spec = plots.classification_by_level(best.sample(fraction=1.0, shuffle=True, seed=1)).to_dict()
    assert spec["encoding"]["x"]["sort"] == list(LEVELS)


def test_missing_methods_and_levels_are_absent_not_errors(best):
    part = best.filter((pl.col("method") == "cam") & (pl.col("level") != "genus"))
    for build in (plots.localization_by_level, plots.seed_spread, plots.per_iou_by_level, plots.data_efficiency):
        levels = {r["level"] for r in _chart_rows(build(part)) if "level" in r}
        assert levels == {"species", "family", "order"}


def test_data_efficiency_error_bars_and_baseline(best):
    rows = _chart_rows(plots.data_efficiency(best))
    sub = [r for r in rows if r.get("level") == "genus" and r.get("per_class") == 5]
    assert len(sub) == 1 and sub[0]["n_train_images"] == 20 and sub[0]["n_seeds"] == 3
    assert sub[0]["low"] < sub[0]["maxboxacc_v2"] < sub[0]["high"]
    full_species = best.filter((pl.col("method") == "cam") & (pl.col("level") == "species")
                               & pl.col("per_class").is_null())["maxboxacc_v2"].mean()
    baseline = [r for r in rows if r.get("level") == "species" and r.get("per_class") is None]
    assert baseline and all(r["maxboxacc_v2"] == pytest.approx(full_species) for r in baseline)


def test_per_iou_relative_to_finest_level(best):
    rows = _chart_rows(plots.per_iou_by_level(best))
    species = [r for r in rows if r["level"] == "species"]
    assert len(species) == 3 and all(r["relative"] == pytest.approx(1.0) for r in species)


def test_analysis_figures(results_dir, best):
    analysis = results.load_analysis(results_dir)
    medians = _chart_rows(plots.analysis_medians(analysis))
    species = analysis.filter(pl.col("level") == "species")["box_area_ratio"].median()
    assert any(r["median"] == pytest.approx(species) for r in medians if r["level"] == "species")
    boxes = {r["level"]: r for r in _chart_rows(plots.component_counts(analysis))}
    assert set(boxes) == set(analysis["level"])
    order = analysis.filter(pl.col("level") == "order")["n_components"]
    assert boxes["order"]["images"] == order.len()
    assert (boxes["order"]["min"], boxes["order"]["median"], boxes["order"]["max"]) == (
        order.min(), pytest.approx(order.median()), order.max())
    assert boxes["order"]["q1"] == pytest.approx(float(np.percentile(order.to_numpy(), 25)))


def test_dataset_figures(tmp_path):
    images = pl.DataFrame({"image_id": ["a", "b"], "width": [100, 200], "height": [100, 100]})
    boxes = pl.DataFrame({"image_id": ["a", "a", "b"], "x0": [0, 10, 0], "y0": [0, 10, 0],
                          "x1": [49, 19, 199], "y1": [99, 19, 99]})
    fractions = plots.box_area_fractions(images, boxes, "toy")
    assert fractions["fraction"].to_list() == pytest.approx([0.5, 0.01, 1.0])
    cdf = [r for r in _chart_rows(plots.box_area_cdf(fractions)) if r["fraction"] == pytest.approx(0.5)]
    assert cdf[0]["cdf"] == pytest.approx(2 / 3)
    with pytest.raises(plots.PlotError, match="without a size"):
        plots.box_area_fractions(images.head(1), boxes, "toy")
    counts = pl.DataFrame({"level": ["species"] * 3 + ["genus"], "category": ["s1", "s2", "s3", "g"],
                           "n_images": [3, 4, 5, 12]})
    html_path, png_path = plots.save_chart(plots.images_per_category(counts), tmp_path / "a7")
    assert png_path.read_bytes().startswith(b"\x89PNG") and "vega" in html_path.read_text()


def test_empty_or_incomplete_tables_raise_clear_errors(best):
    with pytest.raises(plots.PlotError, match="empty"):
        plots.localization_by_level(best.clear())
    with pytest.raises(plots.PlotError, match="top1"):
        plots.classification_by_level(best.drop("top1"))
    with pytest.raises(plots.PlotError, match="no ADL run"):
        plots.seed_spread(best, method="adl")


@pytest.mark.parametrize("figure", report.FIGURES, ids=lambda f: f.name)
def test_every_report_figure_builds_a_valid_spec(figure, results_dir, best):
    spec = figure.draw(best, results.load_analysis(results_dir)).to_dict(validate=True)
    assert spec["$schema"].startswith("https://vega.github.io/schema/vega-lite/")


def test_report_command(results_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", str(results_dir), "--out", str(out)]) == 0
    page = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert page == out / "report.html"
    text = page.read_text()
    assert text.count("data:image/png;base64,") == len(report.FIGURES)
    assert "has-species-broken" in text and "diverged" in text  # the failed run is reported
    for fig in report.FIGURES:  # every figure written as PNG and as self-contained HTML
        png = out / "figures" / f"demo_{fig.name}.png"
        assert png.stat().st_size > 1000 and png.read_bytes().startswith(b"\x89PNG")
        assert "<html" in png.with_suffix(".html").read_text()
    a2 = pl.read_csv(out / "tables" / "demo_tableA2_maxboxacc.csv")
    assert a2.columns == ["method", *LEVELS]
    assert a2["method"].to_list() == ["CAM", "CAM-Agg", "HaS"]
    table2 = pl.read_csv(out / "tables" / "table2_methods.csv")
    assert dict(zip(table2["method"], table2["demo"]))["Center"] == 30.0
    assert "| method" in (out / "tables" / "demo_tableA3_lr.md").read_text()
    runs = pl.read_csv(out / "tables" / "runs.csv")
    assert runs.filter(pl.col("status") == "failed")["run_id"].to_list() == ["has-species-broken"]


def test_metrics_table_rows():
    single = {**_metrics(50.0, 40.0), "level": "genus"}
    table = report.metrics_table(single)
    assert table.select("level", "split", "maxboxacc_v2").rows() == [("genus", "test", 50.0), ("genus", "val", 51.0)]
    agg = report.metrics_table({"per_level": {"species": _metrics(50.0, 40.0), "order": _metrics(44.0, 60.0)}})
    assert agg.filter(pl.col("split") == "test").select("level", "maxboxacc_v2").rows() == [
        ("species", 50.0), ("order", 44.0)]


def test_report_on_empty_folder_fails_clearly(tmp_path):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    with pytest.raises(report.ReportError, match="no run folders"):
        report.build_report(tmp_path, tmp_path / "out", progress=False)


def _tooltip_fields(spec: dict) -> set[str]:
    """Fields shown on hover anywhere in a chart spec (layers, facets and concatenations included)."""
    found: set[str] = set()
    for key, node in spec.items():
        if key == "encoding" and "tooltip" in node:
            tips = node["tooltip"]
            found |= {tip["field"] for tip in (tips if isinstance(tips, list) else [tips])}
        elif key != "datasets" and isinstance(node, dict):
            found |= _tooltip_fields(node)
        elif key != "datasets" and isinstance(node, list):
            found |= set().union(*(_tooltip_fields(n) for n in node if isinstance(n, dict)))
    return found


def test_figures_name_runs_levels_lrs_and_values_on_hover(best):
    by_level = {"Method", "level", "n_seeds", "lr", "runs"}
    assert _tooltip_fields(plots.localization_by_level(best).to_dict()) == by_level | {"maxboxacc_v2"}
    assert _tooltip_fields(plots.classification_by_level(best).to_dict()) == by_level | {"top1"}
    assert _tooltip_fields(plots.data_efficiency(best).to_dict()) == by_level | {
        "per_class", "n_train_images", "maxboxacc_v2"}
    assert _tooltip_fields(plots.seed_spread(best).to_dict()) == {
        "run_id", "level", "lr", "seed", "n_train_images", "maxboxacc_v2"}
    assert _tooltip_fields(plots.per_iou_by_level(best).to_dict()) == {"level", "IoU threshold", "maxboxacc",
                                                                     "relative"}
    # the hovered values: the selected lr and the three seeds' runs behind a mean
    family = next(r for r in _chart_rows(plots.localization_by_level(best))
                  if r["Method"] == "CAM" and r["level"] == "family")
    cam = best.filter((pl.col("method") == "cam") & (pl.col("level") == "family") & pl.col("per_class").is_null())
    assert family["lr"] == "0.01" and family["runs"].split(", ") == sorted(cam["run_id"])


def test_notebook_chart_output_is_valid_nbformat_and_vega_lite_5(best):
    import base64

    import nbformat
    import vl_convert as vlc

    from inatloc_nb.reports import chart_display

    bundle = chart_display.notebook_bundle(plots.seed_spread(best).to_dict())
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "chart", outputs=[nbformat.v4.new_output("display_data", data=bundle)])])
    nbformat.validate(nb)  # altair's own mimetype (application/vnd.vegalite.v6.json) fails this
    spec = bundle[chart_display.VEGALITE5_MIME_TYPE]
    assert spec["$schema"] == chart_display.VEGALITE5_SCHEMA and "tooltip" in spec["layer"][0]["encoding"]
    assert vlc.vegalite_to_vega(spec, vl_version="5.8")["marks"]  # compiles with a Vega-Lite 5
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert bundle["text/plain"] == "<chart: Spread over retrainings (CAM)>"
