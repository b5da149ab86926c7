"""The results store: run tables from run folders, collect, learning-rate selection, analysis."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from inatloc_nb.runs import results
from inatloc_nb.runs.results import ResultsError

PARAMS = {"dataset": "toy", "level": "species", "method": "cam", "lr": 0.01, "seed": 0, "per_class": None,
          "schedule": "2epoch", "backbone": "tinycnn", "pretrained": False, "image_size": 64, "batch_size": 8}


def _block(score: float, top1: float | None = 50.0) -> dict:
    """A metrics block whose per-IoU accuracies average to ``score``."""
    return {"maxboxacc_v2": score, "per_iou": {"30": score + 10, "50": score, "70": score - 10},
            "optimal_threshold": {"30": 0.1, "50": 0.2, "70": 0.3}, "top1": top1}


def make_run(results_dir: Path, run_id: str, *, val: float = 50.0, test: float = 40.0, status: str = "ok",
             metrics: dict | None = None, analysis: pl.DataFrame | None = None, **params) -> Path:
    """A run folder as the sweep leaves it, with hand-written metrics following the contract."""
    folder = results_dir / "runs" / run_id
    folder.mkdir(parents=True)
    record = {"run_id": run_id, "params": {**PARAMS, **params}, "data": "synth:tiny", "status": status,
              "wall_seconds": 3.5, "finished_at": "2024-01-01T00:00:00+00:00"}
    (folder / "run.json").write_text(json.dumps(record))
    if status == "ok":
        if metrics is None:
            metrics = {**_block(test), "val": _block(val), "level": record["params"]["level"],
                       "method": record["params"]["method"], "n_train_images": 120}
        (folder / "metrics.json").write_text(json.dumps(metrics))
        (folder / "timings.json").write_text(json.dumps({"train": 2.0, "evaluate": 1.0}))
    else:
        (folder / "error.json").write_text(json.dumps({"type": "ValueError", "message": "ValueError: boom",
                                                       "traceback": "..."}))
    if analysis is not None:
        analysis.write_parquet(folder / "analysis.parquet")
    return folder


def test_run_results_rows_and_schema(tmp_path: Path) -> None:
    folder = make_run(tmp_path, "r1", val=55.0, test=45.0)
    table = results.write_run_results(folder)
    assert table.schema == pl.Schema(results.SCHEMA)
    assert (folder / "results.parquet").is_file()
    rows = {r["split"]: r for r in table.iter_rows(named=True)}
    assert set(rows) == {"val", "test"}
    assert rows["val"]["maxboxacc_v2"] == 55.0 and rows["test"]["maxboxacc_v2"] == 45.0
    assert (rows["test"]["maxboxacc_30"], rows["test"]["maxboxacc_70"]) == (55.0, 35.0)
    assert rows["test"]["threshold_50"] == 0.2
    assert rows["test"]["n_train_images"] == 120 and rows["test"]["status"] == "ok"
    assert rows["test"]["level"] == rows["test"]["train_level"] == "species"
    assert rows["test"]["per_class"] is None and rows["test"]["lr"] == 0.01
    assert json.loads(rows["test"]["timings"]) == {"evaluate": 1.0, "train": 2.0}


def test_cam_agg_gives_one_row_pair_per_level(tmp_path: Path) -> None:
    levels = {lv: {**_block(60.0 - i), "val": _block(61.0 - i)} for i, lv in enumerate(["species", "genus", "family"])}
    folder = make_run(tmp_path, "agg", method="cam-agg", metrics={"per_level": levels, "method": "cam-agg"})
    table = results.run_results(folder)
    assert table.height == 6
    assert set(table["level"]) == {"species", "genus", "family"}
    assert set(table["train_level"]) == {"species"}
    genus_test = table.filter((pl.col("level") == "genus") & (pl.col("split") == "test"))
    assert genus_test["maxboxacc_v2"].to_list() == [59.0]


def test_other_evaluated_splits_are_kept(tmp_path: Path) -> None:
    metrics = {**_block(40.0), "val": _block(50.0), "train": _block(70.0), "level": "species"}
    table = results.run_results(make_run(tmp_path, "r", metrics=metrics))
    assert dict(zip(table["split"], table["maxboxacc_v2"])) == {"test": 40.0, "val": 50.0, "train": 70.0}


def test_failed_run_is_one_row_with_error(tmp_path: Path) -> None:
    table = results.run_results(make_run(tmp_path, "bad", status="failed"))
    assert table.height == 1
    row = table.row(0, named=True)
    assert row["status"] == "failed" and row["error"] == "ValueError: boom"
    assert row["split"] is None and row["maxboxacc_v2"] is None


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"per_iou": {}, "val": {}}, "missing key(s) maxboxacc_v2"),
        ({**_block(40.0)}, "val: missing"),
        ({**_block(40.0), "val": {**_block(50.0), "per_iou": {"30": 1, "50": 2}}}, "val.per_iou: expected a mapping"),
        ({**_block(40.0), "maxboxacc_v2": "high", "val": _block(50.0)}, "maxboxacc_v2: expected a number"),
        ({**_block(40.0), "val": _block(50.0), "n_train_images": 1.5}, "n_train_images: expected an integer"),
        ({"per_level": {}}, "per_level: expected a non-empty mapping"),
    ],
)
def test_bad_metrics_name_file_and_key(tmp_path: Path, metrics: dict, message: str) -> None:
    folder = make_run(tmp_path, "r", metrics=metrics)
    with pytest.raises(ResultsError, match="metrics.json") as info:
        results.run_results(folder)
    assert message in str(info.value)


def test_bad_record_and_invalid_json(tmp_path: Path) -> None:
    folder = make_run(tmp_path, "r")
    (folder / "metrics.json").write_text('{"maxboxacc_v2": 1,\n oops}')
    with pytest.raises(ResultsError, match=r"metrics.json:2: not valid JSON"):
        results.run_results(folder)
    (folder / "run.json").write_text(json.dumps({"run_id": "r", "status": "ok", "params": {"level": "species"}}))
    with pytest.raises(ResultsError, match=r"run.json: params: missing dataset, method, lr"):
        results.run_results(folder)


def test_collect_consolidates_validates_and_rebuilds(tmp_path: Path) -> None:
    make_run(tmp_path, "a", lr=0.1)
    make_run(tmp_path, "b", status="failed")
    rebuilt = make_run(tmp_path, "c", lr=0.001)  # no results.parquet yet: rebuilt from run.json
    for name in ("a", "b"):
        results.write_run_results(tmp_path / "runs" / name)
    (tmp_path / "runs" / ".a.tmp-xyz").mkdir()  # a killed run's leftovers are not results
    store = results.collect(tmp_path)
    assert (rebuilt / "results.parquet").is_file()
    assert store.height == 5 and store["run_id"].to_list() == ["a", "a", "b", "c", "c"]
    assert store.equals(pl.read_parquet(tmp_path / "results.parquet"))
    assert results.load(tmp_path).equals(store)

    wrong = store.filter(pl.col("run_id") == "a").drop("top1")
    wrong.write_parquet(tmp_path / "runs" / "a" / "results.parquet")
    with pytest.raises(ResultsError, match=r"runs/a/results.parquet: columns differ.*missing: \['top1'\]"):
        results.collect(tmp_path)
    store.filter(pl.col("run_id") == "c").write_parquet(tmp_path / "runs" / "a" / "results.parquet")
    with pytest.raises(ResultsError, match="does not match its folder 'a'"):
        results.collect(tmp_path)
    results.write_run_results(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "stray").mkdir()
    with pytest.raises(ResultsError, match="stray: run folder without run.json"):
        results.collect(tmp_path)


def test_collect_empty_and_load_missing(tmp_path: Path) -> None:
    assert results.collect(tmp_path).schema == pl.Schema(results.SCHEMA)
    with pytest.raises(ResultsError, match="missing"):
        results.load(tmp_path / "elsewhere")


def test_select_learning_rate_uses_val_and_breaks_ties_to_smaller_lr(tmp_path: Path) -> None:
    # species seed 0: lr 0.1 is best on val although lr 0.01 is best on test
    make_run(tmp_path, "s0-lr1", lr=0.1, val=70.0, test=50.0)
    make_run(tmp_path, "s0-lr2", lr=0.01, val=60.0, test=65.0)
    make_run(tmp_path, "s0-lr3", lr=0.001, status="failed")
    # genus seed 0: a tie on val -> the smaller lr
    make_run(tmp_path, "g0-lr1", level="genus", lr=0.1, val=55.0, test=41.0)
    make_run(tmp_path, "g0-lr2", level="genus", lr=0.01, val=55.0, test=42.0)
    # a data-efficiency run and a training-free baseline are their own groups
    make_run(tmp_path, "s0-n50", per_class=50, lr=0.01, val=30.0, test=31.0)
    make_run(tmp_path, "center", method="center", lr=None, val=45.0, test=44.0)
    chosen = results.select_learning_rate(results.collect(tmp_path))
    assert set(chosen["split"]) == {"test"}
    by_run = {r["run_id"]: r for r in chosen.iter_rows(named=True)}
    assert set(by_run) == {"s0-lr1", "g0-lr2", "s0-n50", "center"}
    assert by_run["s0-lr1"]["maxboxacc_v2"] == 50.0 and by_run["s0-lr1"]["val_maxboxacc_v2"] == 70.0
    assert by_run["s0-lr1"]["n_lrs"] == 2  # the failed lr is not a candidate
    assert by_run["g0-lr2"]["lr"] == 0.01 and by_run["center"]["lr"] is None


def test_select_learning_rate_per_level_for_cam_agg(tmp_path: Path) -> None:
    for lr, (sp, ge) in {0.1: (60.0, 40.0), 0.01: (50.0, 45.0)}.items():
        levels = {"species": {**_block(sp), "val": _block(sp)}, "genus": {**_block(ge), "val": _block(ge)}}
        make_run(tmp_path, f"agg-{lr}", method="cam-agg", lr=lr, metrics={"per_level": levels})
    chosen = results.select_learning_rate(results.collect(tmp_path))
    assert dict(zip(chosen["level"], chosen["lr"])) == {"genus": 0.01, "species": 0.1}


def test_select_learning_rate_rejects_other_tables() -> None:
    with pytest.raises(ResultsError, match="columns differ"):
        results.select_learning_rate(pl.DataFrame({"lr": [0.1]}))


def test_load_analysis_adds_run_parameters(tmp_path: Path) -> None:
    per_image = pl.DataFrame({"image_id": ["a.jpg", "b.jpg"], "box_area_ratio": [1.5, 0.8], "n_components": [1, 3]})
    make_run(tmp_path, "cam", analysis=per_image, level="genus")
    agg = per_image.with_columns(pl.lit("family").alias("level"))
    make_run(tmp_path, "agg", method="cam-agg", analysis=agg,
             metrics={"per_level": {"family": {**_block(40.0), "val": _block(40.0)}}})
    make_run(tmp_path, "bad", status="failed", analysis=per_image)
    make_run(tmp_path, "none")
    table = results.load_analysis(tmp_path)
    assert table.height == 4
    assert table.columns[:3] == ["run_id", "data", "dataset"]
    levels = table.group_by("run_id").agg(pl.col("level").first(), pl.col("method").first()).sort("run_id")
    assert levels.rows() == [("agg", "family", "cam-agg"), ("cam", "genus", "cam")]
    assert table.filter(pl.col("run_id") == "agg")["train_level"].to_list() == ["species", "species"]
    assert results.load_analysis(tmp_path / "empty").height == 0
