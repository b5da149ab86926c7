"""A real results folder for the explorer tests (a pytest plugin: ``pytest_plugins = ["fixtures_results"]``).

Three tiny CAM runs on the ``tiny`` synthetic preset, at the finest, a middle and the coarsest
level, trained once per test session by ``run_experiment`` (what ``02_train_wsol`` calls) into
the sweep's layout: ``runs/<run id>/`` named by :class:`inatloc_nb.sweep.RunSpec`, with the
sweep's ``run.json`` record and run table, consolidated by :func:`inatloc_nb.runs.results.collect`.
They train in this process, without a kernel per run, to keep the session short.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

#: Training levels of the fixture's runs, finest first.
EXPLORER_LEVELS = ("species", "order", "phylum")


@pytest.fixture(scope="session")
def explorer_results(tiny_dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``results_dir`` holding one finished CAM run per level of :data:`EXPLORER_LEVELS`."""
    from inatloc_nb.core.atomic import atomic_write_json
    from inatloc_nb.runs import results
    from inatloc_nb.runs.run import run_experiment
    from inatloc_nb.sweep import RunSpec, runs_dir
    from inatloc_nb.training.run_config import RunConfig

    results_dir = tmp_path_factory.mktemp("explorer") / "results"
    for level in EXPLORER_LEVELS:
        config = RunConfig(data=str(tiny_dataset_dir), level=level, method="cam", lr=0.05, seed=0, per_class=None,
                           schedule="2", backbone="tinycnn", pretrained=False, image_size=48, batch_size=16,
                           num_workers=0)
        spec = RunSpec("tiny", config)
        folder = runs_dir(results_dir) / spec.run_id
        start = time.perf_counter()
        run_experiment(config, folder, say=lambda _line: None)
        atomic_write_json(folder / results.RUN_RECORD, {
            "run_id": spec.run_id, "params": spec.params(), "data": spec.data, "status": "ok",
            "wall_seconds": time.perf_counter() - start,
        })
        results.write_run_results(folder)
    results.collect(results_dir)
    return results_dir


@pytest.fixture(scope="session")
def level_runs(explorer_results: Path):
    """The fixture's runs gathered by :meth:`inatloc_nb.reports.widgets.LevelRuns.from_results` (split ``val``)."""
    from inatloc_nb.reports.widgets import LevelRuns

    return LevelRuns.from_results(explorer_results, method="cam", split="val")
