"""A run folder: the name of every file it holds and their reading and writing.

Training runs, baselines, explainers, sweeps and the results store all go through
:class:`RunFolder`. Files are written atomically (``inatloc_nb.core.atomic``); a file that cannot be
read is an error naming it and how to redo the run (:data:`REDO_RUN`). A run folder holds::

    run.json           the sweep's record: run id, parameters, status, wall time
    params.json        the RunConfig (``config``), the dataset name, library versions and
                       what the run adds (number of classes, training image ids, device, ...)
    model.pth          the scored model's state dict
    history.csv        per-epoch train/valid loss and accuracy
    cams/<split>.npz   a ``CamSet`` of every evaluated split
    analysis.parquet   per image: ``image_id, split, box_area_ratio, gt_activation_ratio,
                       n_components`` at the split's optimal threshold for IoU 50
    timings.json       seconds and images/s of each stage
    metrics.json       written last (its presence means the run finished): D_test's metrics
                       block at the top level (:func:`metrics_block`), every other evaluated
                       split's under its name (``"val"`` = D_f), and the run's identity
                       (:data:`IDENTITY_KEYS`) plus what the run adds
    results.parquet    the run's rows of the results store (``inatloc_nb.runs.results``)
    error.json         why a failed run failed (type, message, traceback)
    fused_error.json   what a failed run of a fused group left for the sweep
    explain/<name>/    a post-hoc explainer's ``cams/``, ``timings.json`` and ``metrics.json``,
                       laid out as the run's own (:meth:`RunFolder.explain`)

A sweep's results folder keeps one run folder per run under ``runs/<run id>``
(:func:`run_folder`).
"""
from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from inatloc_nb.core.atomic import atomic_path, atomic_write_json, atomic_write_parquet, atomic_write_text
from inatloc_nb.core.errors import InatlocError, ResultsError

if TYPE_CHECKING:
    import numpy as np
    from torch import nn

    from inatloc_nb.metrics.boxacc import BoxAccuracyResult
    from inatloc_nb.training.cam import CamSet
    from inatloc_nb.training.run_config import RunConfig

#: The sweep's record of a run.
RUN_RECORD = "run.json"
#: What defines the run, as trained.
PARAMS = "params.json"
#: The scored model's state dict.
MODEL = "model.pth"
#: The learning curve.
HISTORY = "history.csv"
#: Folder of the ``CamSet`` files, one ``<split>.npz`` per evaluated split.
CAMS_DIR = "cams"
#: Per-image analysis table.
ANALYSIS = "analysis.parquet"
#: Seconds and rates of each stage.
TIMINGS = "timings.json"
#: The run's scores, written last.
METRICS = "metrics.json"
#: A run's own results table.
RUN_TABLE = "results.parquet"
#: Why a failed run failed.
ERROR = "error.json"
#: What a failed run of a fused group left for the sweep: type, message, traceback.
FUSED_ERROR = "fused_error.json"
#: Folder holding one sub-folder per post-hoc explainer.
EXPLAIN_DIR = "explain"
#: Folder of a results folder holding one run folder per run.
RUNS_DIR = "runs"
#: What a finished training run leaves in its folder, ``metrics.json`` last (it marks the run
#: finished): what :meth:`RunFolder.share_outputs` gives another folder.
OUTPUTS = (PARAMS, MODEL, HISTORY, TIMINGS, ANALYSIS, CAMS_DIR, EXPLAIN_DIR, METRICS)
#: How to redo a run whose files are damaged (``{run}``: the run folder).
REDO_RUN = "delete the run folder {run} and run it again (a sweep reruns missing runs)"
#: The run's identity in ``metrics.json``, beside its metrics blocks.
IDENTITY_KEYS = ("level", "method", "lr", "seed", "per_class", "n_train_images")


def run_folder(results_dir: str | Path, run_id: str) -> RunFolder:
    """The folder of run ``run_id`` in a sweep's results folder (``runs/<run_id>``)."""
    return RunFolder(Path(results_dir) / RUNS_DIR / run_id)


def read_json(path: str | Path, advice: str | None = None) -> Any:
    """A JSON file's content, or ``ResultsError`` naming it (and the line of a syntax error)
    when it is missing, not UTF-8 or not JSON (``advice``: what to do; default: redo the run
    of the folder it is in)."""
    path = Path(path)
    advice = advice or REDO_RUN.format(run=path.parent)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing; {advice}") from None
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); {advice}") from None
    except UnicodeDecodeError as exc:
        raise ResultsError(f"{path}: not UTF-8 text ({exc.reason}); {advice}") from None
    except OSError as exc:
        raise ResultsError(f"{path}: cannot read ({exc.strerror or exc}); {advice}") from None


def read_table(path: str | Path, advice: str | None = None) -> pl.DataFrame:
    """A parquet file, or ``ResultsError`` naming it when it is missing, empty, truncated or
    not parquet (``advice``: what to do; default: redo the run of the folder it is in)."""
    path = Path(path)
    advice = advice or REDO_RUN.format(run=path.parent)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing; {advice}") from None
    if not path.is_file():
        raise ResultsError(f"{path}: not a file; {advice}")
    if size == 0:
        raise ResultsError(f"{path}: empty file (0 bytes); {advice}")
    try:
        return pl.read_parquet(path)
    except Exception as exc:  # polars raises ComputeError, OSError, ... for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ResultsError(f"{path}: not a readable parquet table ({first}); {advice}") from None


def metrics_block(result: BoxAccuracyResult, top1: float | None = None) -> dict[str, Any]:
    """One split's block of ``metrics.json``: ``result.to_dict()`` (``maxboxacc_v2``,
    ``per_iou``, ``optimal_threshold``, ``n_images``) and ``top1`` (None: not a classifier)."""
    return {**result.to_dict(), "top1": top1}


def run_identity(config: RunConfig, n_train_images: int) -> dict[str, Any]:
    """The :data:`IDENTITY_KEYS` of a run of ``config`` trained on ``n_train_images`` images."""
    return {"level": config.level, "method": config.method, "lr": config.lr, "seed": config.seed,
            "per_class": config.per_class, "n_train_images": n_train_images}


def analysis_frame(chunks: Iterable[tuple[int, np.ndarray]], gt_boxes: list[np.ndarray], image_ids: list[str],
                   result: BoxAccuracyResult, split: str) -> pl.DataFrame:
    """The rows of ``analysis.parquet`` for ``split`` (App. F.1), at the split's optimal
    threshold for IoU ``ANALYSIS_IOU``, from ``(start, evaluation maps)`` chunks (e.g.
    ``CamSet.iter_maps()``)."""
    from inatloc_nb.metrics.analysis import analysis_table
    from inatloc_nb.training.run_config import ANALYSIS_IOU

    threshold = result.optimal_threshold[ANALYSIS_IOU]
    parts = [analysis_table(maps, gt_boxes[i : i + len(maps)], image_ids[i : i + len(maps)], threshold)
             for i, maps in chunks]
    return (pl.concat(parts)
            .rename({"gt_activation": "gt_activation_ratio"})
            .with_columns(split=pl.lit(split))
            .select("image_id", "split", "box_area_ratio", "gt_activation_ratio", "n_components"))


class RunFolder:
    """The files of the run folder at ``path`` (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunFolder) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def redo(self) -> str:
        """How to redo this run when one of its files is damaged."""
        return REDO_RUN.format(run=self.path)

    # ------------------------------------------------------------------ file paths
    @property
    def record_path(self) -> Path:
        return self.path / RUN_RECORD

    @property
    def params_path(self) -> Path:
        return self.path / PARAMS

    @property
    def model_path(self) -> Path:
        return self.path / MODEL

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY

    @property
    def analysis_path(self) -> Path:
        return self.path / ANALYSIS

    @property
    def timings_path(self) -> Path:
        return self.path / TIMINGS

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    @property
    def table_path(self) -> Path:
        return self.path / RUN_TABLE

    @property
    def error_path(self) -> Path:
        return self.path / ERROR

    @property
    def fused_error_path(self) -> Path:
        return self.path / FUSED_ERROR

    def cams_path(self, split: str) -> Path:
        """``cams/<split>.npz``."""
        return self.path / CAMS_DIR / f"{split}.npz"

    def explain(self, name: str) -> RunFolder:
        """The folder of explainer ``name``'s maps and scores (``explain/<name>``), laid out
        as a run folder."""
        return RunFolder(self.path / EXPLAIN_DIR / name)

    def explained(self) -> list[tuple[str, RunFolder]]:
        """``(name, folder)`` of every explainer that finished (has ``metrics.json``), by name."""
        return [(p.parent.name, RunFolder(p.parent)) for p in sorted((self.path / EXPLAIN_DIR).glob(f"*/{METRICS}"))]

    def is_finished(self) -> bool:
        """Whether ``metrics.json`` (written last) is in place."""
        return self.metrics_path.is_file()

    # ------------------------------------------------------------------ JSON files
    def _read_object(self, path: Path) -> dict[str, Any]:
        value = read_json(path, self.redo)
        if not isinstance(value, dict):
            raise ResultsError(f"{path}: expected a JSON object; {self.redo}")
        return value

    def write_params(self, config: RunConfig, dataset_name: str, **extra: Any) -> Path:
        """``params.json``: ``config``, the dataset name, library versions and ``extra``."""
        from inatloc_nb.training.run_config import package_versions

        return atomic_write_json(self.params_path, {
            "config": config.to_dict(), "dataset": dataset_name, "versions": package_versions(), **extra,
        })

    def read_params(self) -> dict[str, Any]:
        """``params.json`` as a dict."""
        return self._read_object(self.params_path)

    def write_metrics(self, per_split: Mapping[str, Mapping[str, Any]], **identity: Any) -> dict[str, Any]:
        """``metrics.json`` from per-split blocks (:func:`metrics_block`): D_test's at the top
        level, the others under their split's name, then ``identity`` (the run's
        :data:`IDENTITY_KEYS` and any other key); returns what it wrote."""
        summary = dict(per_split.get("test", {}))
        summary.update({split: block for split, block in per_split.items() if split != "test"})
        summary.update(identity)
        atomic_write_json(self.metrics_path, summary)
        return summary

    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict."""
        return self._read_object(self.metrics_path)

    def write_timings(self, timings: Mapping[str, Any]) -> Path:
        """``timings.json``."""
        return atomic_write_json(self.timings_path, dict(timings))

    def read_timings(self) -> dict[str, Any] | None:
        """``timings.json`` as a dict, or None when the run wrote none."""
        return self._read_object(self.timings_path) if self.timings_path.is_file() else None

    def write_record(self, record: Mapping[str, Any]) -> Path:
        """``run.json``."""
        return atomic_write_json(self.record_path, dict(record))

    def read_record(self) -> dict[str, Any]:
        """``run.json`` as a dict."""
        return self._read_object(self.record_path)

    def write_error(self, error: Mapping[str, Any]) -> Path:
        """``error.json``."""
        return atomic_write_json(self.error_path, dict(error))

    def read_error(self) -> Any:
        """``error.json``'s content."""
        return read_json(self.error_path, self.redo)

    def write_fused_error(self, error: Mapping[str, Any]) -> Path:
        """``fused_error.json``."""
        return atomic_write_json(self.fused_error_path, dict(error))

    def pop_fused_error(self) -> Any:
        """``fused_error.json``'s content, removing the file; None when there is none."""
        if not self.fused_error_path.is_file():
            return None
        error = read_json(self.fused_error_path, self.redo)
        self.fused_error_path.unlink()
        return error

    # ------------------------------------------------------------------ tables and arrays
    def write_history(self, rows: list[dict[str, Any]]) -> Path:
        """``history.csv`` from one row per epoch."""
        return atomic_write_text(self.history_path, pl.DataFrame(rows).write_csv())

    def read_history(self) -> pl.DataFrame:
        """``history.csv`` as a table."""
        try:
            return pl.read_csv(self.history_path)
        except FileNotFoundError:
            raise ResultsError(f"{self.history_path}: missing; {self.redo}") from None
        except Exception as exc:  # polars raises ComputeError, NoDataError, ... for damaged files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ResultsError(f"{self.history_path}: not a readable CSV table ({first}); {self.redo}") from None

    def write_analysis(self, frames: Iterable[pl.DataFrame]) -> Path:
        """``analysis.parquet`` from per-split frames (:func:`analysis_frame`)."""
        return atomic_write_parquet(self.analysis_path, pl.concat(list(frames)))

    def read_analysis(self) -> pl.DataFrame:
        """``analysis.parquet``."""
        return read_table(self.analysis_path, self.redo)

    def write_table(self, table: pl.DataFrame) -> Path:
        """``results.parquet`` (the run's results table)."""
        return atomic_write_parquet(self.table_path, table)

    def read_table(self) -> pl.DataFrame:
        """``results.parquet``."""
        return read_table(self.table_path, self.redo)

    def save_cams(self, cams: CamSet) -> Path:
        """``cams/<split>.npz`` of ``cams.split``."""
        return cams.save(self.cams_path(cams.split))

    def load_cams(self, split: str) -> CamSet:
        """The ``CamSet`` of ``split`` (maps read lazily); an error naming the file when the
        run did not evaluate ``split`` or the file is damaged."""
        from inatloc_nb.training.cam import CamSet

        path = self.cams_path(split)
        if not path.is_file():
            raise InatlocError(f"{path}: missing; the run did not evaluate split {split!r}")
        return CamSet.load(path)

    def share_outputs(self, source: RunFolder) -> None:
        """Give this folder the outputs (:data:`OUTPUTS`) of the finished run in ``source``:
        hard links where the file system allows (no second copy on disk; files are only ever
        replaced, never written in place), else copies; ``metrics.json`` last."""
        if not source.is_finished():
            raise ResultsError(f"{source.path}: not a finished run (no {METRICS}); {source.redo}")
        self.path.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            src, dst = source.path / name, self.path / name
            if src.is_dir():
                shutil.copytree(src, dst, copy_function=_link_or_copy, dirs_exist_ok=True)
            elif src.is_file():
                _link_or_copy(src, dst)

    def save_model(self, model: nn.Module) -> Path:
        """``model.pth``: ``model``'s state dict."""
        import torch

        with atomic_path(self.model_path) as tmp:
            torch.save(model.state_dict(), tmp)
        return self.model_path

    def load_model(self, model: nn.Module) -> nn.Module:
        """``model`` with the weights of ``model.pth`` (read on the CPU); an error naming the
        file when it is missing, damaged or not the weights of this model."""
        import torch

        path = self.model_path
        if not path.is_file():
            raise InatlocError(f"{path}: missing; is {self.path} a finished training run? {self.redo}")
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # truncated or foreign file: zip, pickle, EOF or key/shape errors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InatlocError(f"{path}: damaged or not the weights of this run ({first}); {self.redo}") from None
        return model


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard-link ``src`` at ``dst`` (replacing it), or copy it where links are not possible."""
    Path(dst).unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or one without hard links
        shutil.copy2(src, dst)


__all__ = ["ANALYSIS", "CAMS_DIR", "ERROR", "EXPLAIN_DIR", "FUSED_ERROR", "HISTORY", "IDENTITY_KEYS", "METRICS",
           "MODEL", "OUTPUTS", "PARAMS", "REDO_RUN", "RUNS_DIR", "RUN_RECORD", "RUN_TABLE", "RunFolder", "TIMINGS",
           "analysis_frame", "metrics_block", "read_json", "read_table", "run_folder", "run_identity"]
