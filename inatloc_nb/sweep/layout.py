"""The results folder of a sweep: one sub-folder per run under ``runs/``, finished when its
``metrics.json`` and ``results.parquet`` are in place; the training notebook each run executes.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from inatloc_nb.core.resources import shipped_folder
from inatloc_nb.runs.runfolder import RUNS_DIR, run_folder


#: File name of the executed notebook inside a run folder.
NOTEBOOK_NAME = "02_train_wsol.ipynb"


def default_notebook() -> Path:
    """The shipped ``notebooks/02_train_wsol.ipynb`` (installed package or source tree)."""
    return shipped_folder("notebooks") / NOTEBOOK_NAME


def runs_dir(results_dir: str | Path) -> Path:
    """The folder holding one sub-folder per run."""
    return Path(results_dir) / RUNS_DIR


def is_finished(results_dir: str | Path, run_id: str) -> bool:
    """True when the run's ``metrics.json`` and ``results.parquet`` are both in place."""
    folder = run_folder(results_dir, run_id)
    return folder.is_finished() and folder.table_path.is_file()


def clean_stale(results_dir: Path, run_id: str) -> None:
    """Remove temporary folders left by killed executions of ``run_id``."""
    for stale in runs_dir(results_dir).glob(f".{run_id}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
