"""The results store: one parquet per run, consolidated into ``results.parquet``.

A run folder (``runs/<id>/``, :mod:`inatloc_nb.runs.runfolder`) holds ``run.json`` (written by the
sweep: run id, parameters, status, wall time), ``metrics.json`` when the run finished,
``error.json`` when it failed and optionally ``timings.json``, ``analysis.parquet`` and
``explain/<explainer>/metrics.json``. :func:`run_results` turns it into one row per evaluated
split (and per level for CAM-Agg) and per explainer (``"cam"``: the run's own maps); the columns are :data:`SCHEMA`,
documented in ``docs/results_schema.md``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl

from inatloc_nb.core.atomic import atomic_write_parquet
from inatloc_nb.core.errors import ResultsError
from inatloc_nb.runs.explainers import OWN_MAPS
from inatloc_nb.runs.runfolder import REDO_RUN, RUN_RECORD, RUN_TABLE, RUNS_DIR, RunFolder, read_table
from inatloc_nb.training.run_config import identity_fields

#: The consolidated store, at the top of the results folder.
STORE_NAME = "results.parquet"
#: The sweep's name and configuration file, at the top of the results folder.
SWEEP_RECORD = "sweep.json"
#: IoU thresholds (percent) of the per-threshold columns.
IOU_THRESHOLDS = (30, 50, 70)
#: Parameters of a run, as recorded in ``run.json`` (``level`` is the training level): the
#: dataset and the ``RunConfig`` fields in every run's identity (``run_config.identity_fields``).
RUN_PARAMS = ("dataset", *identity_fields())
#: Run parameters that, with ``lr``, identify a result; ``select_learning_rate`` groups by them:
#: :data:`RUN_PARAMS` but ``lr``, with ``train_level`` after ``level`` and ``explainer`` after
#: ``method``.
GROUP_KEYS = tuple(key for param in RUN_PARAMS if param != "lr"
                   for key in (param, *{"level": ("train_level",), "method": ("explainer",)}.get(param, ())))

#: Columns and types of a run table and of the store, in order.
SCHEMA: dict[str, pl.DataType] = {
    "run_id": pl.String(),
    "dataset": pl.String(),
    "data": pl.String(),
    "level": pl.String(),
    "train_level": pl.String(),
    "method": pl.String(),
    "explainer": pl.String(),
    "lr": pl.Float64(),
    "seed": pl.Int64(),
    "per_class": pl.Int64(),
    "schedule": pl.String(),
    "backbone": pl.String(),
    "pretrained": pl.Boolean(),
    "image_size": pl.Int64(),
    "batch_size": pl.Int64(),
    "split": pl.String(),
    "maxboxacc_v2": pl.Float64(),
    **{f"maxboxacc_{d}": pl.Float64() for d in IOU_THRESHOLDS},
    **{f"threshold_{d}": pl.Float64() for d in IOU_THRESHOLDS},
    "top1": pl.Float64(),
    "n_train_images": pl.Int64(),
    "status": pl.String(),
    "error": pl.String(),
    "wall_seconds": pl.Float64(),
    "timings": pl.String(),
    "finished_at": pl.String(),
}
#: Keys of a metrics block (D_test at the top of ``metrics.json``, D_f under ``"val"``).
METRIC_KEYS = ("maxboxacc_v2", "per_iou", "optimal_threshold", "top1")


def _redo(path: Path) -> str:
    return REDO_RUN.format(run=path.parent)


def _number(block: Mapping, key: str, path: Path, where: str, nullable: bool = False) -> float | None:
    value = block.get(key)
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ResultsError(f"{path}: {where}{key}: expected a number, got {value!r}; {_redo(path)}")
    if not math.isfinite(value):
        raise ResultsError(f"{path}: {where}{key}: {value} is not a finite number; {_redo(path)}")
    return float(value)


def _per_iou(block: Mapping, key: str, path: Path, where: str) -> dict[int, float]:
    value = block.get(key)
    expected = {str(d) for d in IOU_THRESHOLDS}
    if not isinstance(value, Mapping) or set(map(str, value)) != expected:
        raise ResultsError(f"{path}: {where}{key}: expected a mapping with keys {sorted(expected)}, got {value!r}")
    return {d: _number(value, str(d), path, f"{where}{key}.") for d in IOU_THRESHOLDS}


def _metric_row(block: Any, path: Path, where: str) -> dict[str, Any]:
    if not isinstance(block, Mapping):
        raise ResultsError(f"{path}: {where or 'top level'}: expected a mapping of metrics")
    missing = [k for k in METRIC_KEYS if k not in block]
    if missing:
        raise ResultsError(f"{path}: {where}missing key(s) {', '.join(missing)}")
    per_iou = _per_iou(block, "per_iou", path, where)
    thresholds = _per_iou(block, "optimal_threshold", path, where)
    return {
        "maxboxacc_v2": _number(block, "maxboxacc_v2", path, where),
        **{f"maxboxacc_{d}": per_iou[d] for d in IOU_THRESHOLDS},
        **{f"threshold_{d}": thresholds[d] for d in IOU_THRESHOLDS},
        "top1": _number(block, "top1", path, where, nullable=True),
    }


def _metric_rows(metrics: Any, path: Path, train_level: str) -> list[dict[str, Any]]:
    """(level, split, metrics) rows of a ``metrics.json``: D_test at the top level, D_f under
    ``"val"`` (required) and any other split under its name; CAM-Agg's ``"per_level"`` holds
    one such block per level, any other run has one block at its training level."""
    if not isinstance(metrics, Mapping):
        raise ResultsError(f"{path}: expected a JSON object")
    if "per_level" in metrics:
        if not isinstance(metrics["per_level"], Mapping) or not metrics["per_level"]:
            raise ResultsError(f"{path}: per_level: expected a non-empty mapping level -> metrics")
        blocks = {str(level): (block, f"per_level.{level}.") for level, block in metrics["per_level"].items()}
    else:
        blocks = {train_level: (metrics, "")}
    rows = []
    for level, (block, where) in blocks.items():
        if not isinstance(block, Mapping) or "val" not in block:
            raise ResultsError(f"{path}: {where}val: missing (D_f metrics)")
        rows.append({"level": level, "split": "test", **_metric_row(block, path, where)})
        for split, sub in block.items():  # "val" and any other evaluated split
            if split == "val" or (isinstance(sub, Mapping) and "maxboxacc_v2" in sub):
                rows.append({"level": level, "split": split, **_metric_row(sub, path, f"{where}{split}.")})
    return rows


def read_record(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``run.json``, checked: ``run_id``, ``status``, ``params`` (:data:`RUN_PARAMS`)."""
    folder = RunFolder(run_dir)
    path, record = folder.record_path, folder.read_record()
    params = record.get("params")
    if not isinstance(params, Mapping) or "run_id" not in record or record.get("status") not in ("ok", "failed"):
        raise ResultsError(f"{path}: expected run_id, params and status 'ok' or 'failed'")
    missing = [k for k in RUN_PARAMS if k not in params]
    if missing:
        raise ResultsError(f"{path}: params: missing {', '.join(missing)}")
    return record


def _parameter_columns(record: Mapping[str, Any]) -> dict[str, Any]:
    params = record["params"]
    return {"run_id": record["run_id"], "data": record.get("data"), **{k: params[k] for k in RUN_PARAMS},
            "train_level": params["level"]}


def run_results(run_dir: str | Path) -> pl.DataFrame:
    """The results table of one run folder (see the module docstring), typed as :data:`SCHEMA`."""
    folder = RunFolder(run_dir)
    record = read_record(folder.path)
    params = record["params"]
    base = {
        **_parameter_columns(record), "status": record["status"],
        "wall_seconds": record.get("wall_seconds"), "finished_at": record.get("finished_at"),
    }
    base["timings"] = _timings_text(folder)
    if record["status"] == "ok":
        metrics_path, metrics = folder.metrics_path, folder.read_metrics()
        n_train = metrics.get("n_train_images") if isinstance(metrics, Mapping) else None
        if n_train is not None and (isinstance(n_train, bool) or not isinstance(n_train, int)):
            raise ResultsError(f"{metrics_path}: n_train_images: expected an integer, got {n_train!r}")
        rows = [{**base, "n_train_images": n_train, "explainer": OWN_MAPS, **row}
                for row in _metric_rows(metrics, metrics_path, params["level"])]
        rows += _explainer_rows(folder, {**base, "n_train_images": n_train}, params["level"])
    else:
        error = folder.read_error()
        rows = [{**base, "explainer": OWN_MAPS,
                 "error": error.get("message") if isinstance(error, Mapping) else None}]
    return pl.DataFrame(rows, schema=SCHEMA, strict=False).select(list(SCHEMA))


def _timings_text(folder: RunFolder) -> str | None:
    """A folder's ``timings.json`` as compact sorted JSON (the ``timings`` column), or None."""
    timings = folder.read_timings()
    return None if timings is None else json.dumps(timings, sort_keys=True)


def _explainer_rows(folder: RunFolder, base: dict[str, Any], train_level: str) -> list[dict[str, Any]]:
    """Rows of every finished ``explain/<name>/metrics.json`` (``inatloc_nb.runs.explainers``), with
    the explainer's own ``timings.json``."""
    rows = []
    for name, explained in folder.explained():
        extra = {"explainer": name, "timings": _timings_text(explained)}
        rows += [{**base, **extra, **row}
                 for row in _metric_rows(explained.read_metrics(), explained.metrics_path, train_level)]
    return rows


def write_run_results(run_dir: str | Path) -> pl.DataFrame:
    """Build :func:`run_results` and write it to ``run_dir/results.parquet`` (atomically)."""
    table = run_results(run_dir)
    RunFolder(run_dir).write_table(table)
    return table


def validate(table: pl.DataFrame, source: str | Path) -> pl.DataFrame:
    """Check ``table`` has exactly the columns and types of :data:`SCHEMA`; return it."""
    found = dict(table.schema)
    if list(found) != list(SCHEMA):
        missing = [c for c in SCHEMA if c not in found]
        extra = [c for c in found if c not in SCHEMA]
        raise ResultsError(f"{source}: columns differ from the results schema "
                           f"(missing: {missing or 'none'}, unexpected: {extra or 'none'}, or out of order)")
    wrong = [f"{c} is {found[c]}, expected {t}" for c, t in SCHEMA.items() if found[c] != t]
    if wrong:
        raise ResultsError(f"{source}: " + "; ".join(wrong))
    bad_status = table.filter(~pl.col("status").is_in(["ok", "failed"]))
    if bad_status.height:
        raise ResultsError(f"{source}: status must be 'ok' or 'failed' (run {bad_status['run_id'][0]})")
    incomplete = table.filter((pl.col("status") == "ok") & pl.any_horizontal(
        pl.col("split", "maxboxacc_v2", *(f"maxboxacc_{d}" for d in IOU_THRESHOLDS)).is_null()))
    if incomplete.height:
        raise ResultsError(f"{source}: finished run {incomplete['run_id'][0]} has rows without split or metrics")
    metric_cols = ["maxboxacc_v2", *(f"maxboxacc_{d}" for d in IOU_THRESHOLDS),
                   *(f"threshold_{d}" for d in IOU_THRESHOLDS), "top1"]
    not_finite = table.filter(pl.any_horizontal(pl.col(metric_cols).is_nan() | pl.col(metric_cols).is_infinite()))
    if not_finite.height:
        run = not_finite["run_id"][0]
        raise ResultsError(f"{source}: run {run} has NaN or infinite metrics; "
                           f"{REDO_RUN.format(run=f'runs/{run}')}")
    return table


def _run_folders(results_dir: Path) -> list[Path]:
    runs = results_dir / RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if p.is_dir() and not p.name.startswith("."))


def _run_table(folder: Path) -> pl.DataFrame:
    """The validated table of one run folder (rebuilt from ``run.json`` when absent)."""
    run = RunFolder(folder)
    path = run.table_path
    if not path.exists():
        if not run.record_path.is_file():
            raise ResultsError(f"{folder}: run folder without {RUN_RECORD} or {RUN_TABLE}; {run.redo}")
        write_run_results(folder)
    table = run.read_table()
    if "explainer" not in table.columns and run.record_path.is_file():
        table = write_run_results(folder)  # written before results had an explainer column
    table = validate(table, path)
    if set(table["run_id"]) != {folder.name}:
        raise ResultsError(f"{path}: run_id {table['run_id'][0]!r} does not match its folder {folder.name!r}")
    return table


def collect(results_dir: str | Path, problems: list[str] | None = None) -> pl.DataFrame:
    """Consolidate every ``runs/<id>/results.parquet`` into ``results_dir/results.parquet``.

    A run folder without its table (but with ``run.json``) has it rebuilt. A damaged or
    incomplete run folder is an error naming its file, unless ``problems`` is a list: then the
    run is left out and the error message appended to it. Rows are ordered by run id, level,
    split. ``results_dir`` must exist (nothing is created for a misspelt path).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ResultsError(f"{results_dir}: no such results folder (give the folder a sweep wrote, holding runs/)")
    tables = []
    for folder in _run_folders(results_dir):
        try:
            tables.append(_run_table(folder))
        except ResultsError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
    store = pl.concat(tables) if tables else pl.DataFrame(schema=SCHEMA)
    store = store.sort("run_id", "level", "split", nulls_last=True)
    atomic_write_parquet(results_dir / STORE_NAME, store)
    return store


def load(results_dir: str | Path) -> pl.DataFrame:
    """The consolidated store ``results_dir/results.parquet``, validated."""
    path = Path(results_dir) / STORE_NAME
    if not path.is_file():
        raise ResultsError(f"{path}: missing (run a sweep, or results.collect, first)")
    return validate(read_table(path, "rebuild it with results.collect (or rerun the sweep)"), path)


def sweep_name(results_dir: str | Path) -> str | None:
    """The name of the sweep that wrote ``results_dir`` (its ``sweep.json``), or None."""
    path = Path(results_dir) / SWEEP_RECORD
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    name = record.get("name") if isinstance(record, Mapping) else None
    return name if isinstance(name, str) and name else None


def select_learning_rate(table: pl.DataFrame) -> pl.DataFrame:
    """The paper's model selection: per :data:`GROUP_KEYS` group, the lr with the best D_f
    (``split == "val"``) MaxBoxAccV2, reported by its D_test row.

    Each explainer (``explainer`` column) selects its own lr on its own D_f score.
    Failed runs are ignored. Ties go to the smaller learning rate. Adds
    ``val_maxboxacc_v2`` (the selection score) and ``n_lrs`` (learning rates compared).
    """
    validate(table, "results table")
    ok = table.filter(pl.col("status") == "ok")
    best = (
        ok.filter(pl.col("split") == "val")
        .sort(["maxboxacc_v2", "lr"], descending=[True, False], nulls_last=True, maintain_order=True)
        .group_by(list(GROUP_KEYS), maintain_order=True)
        .agg(pl.col("run_id").first(), pl.col("maxboxacc_v2").first().alias("val_maxboxacc_v2"),
             pl.len().alias("n_lrs"))
        .select("run_id", "level", "explainer", "val_maxboxacc_v2", "n_lrs")
    )
    chosen = ok.filter(pl.col("split") == "test").join(best, on=["run_id", "level", "explainer"], how="inner")
    return chosen.sort(list(GROUP_KEYS), nulls_last=True)


def load_analysis(results_dir: str | Path, problems: list[str] | None = None) -> pl.DataFrame:
    """Every finished run's ``analysis.parquet`` (one row per image), with the run's
    parameters as extra columns (a column the analysis already has, such as CAM-Agg's
    evaluation ``level``, is kept as the run wrote it). Runs without one add no rows. A
    damaged file is an error naming it, or, when ``problems`` is a list, left out with its
    message appended there."""
    results_dir = Path(results_dir)
    param_cols = ["run_id", "data", *RUN_PARAMS, "train_level"]
    frames = []
    for folder in _run_folders(results_dir):
        run = RunFolder(folder)
        if not run.analysis_path.is_file():
            continue
        try:
            record = read_record(folder)
            if record["status"] != "ok":
                continue
            frame = run.read_analysis()
        except ResultsError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            continue
        params = _parameter_columns(record)
        frame = frame.with_columns(
            pl.lit(params[c], dtype=SCHEMA[c]).alias(c) for c in param_cols if c not in frame.columns)
        frames.append(frame.select(*(c for c in param_cols if c in frame.columns),
                                   *(c for c in frame.columns if c not in param_cols)))
    if not frames:
        return pl.DataFrame(schema={c: SCHEMA[c] for c in param_cols})
    return pl.concat(frames, how="diagonal_relaxed")
