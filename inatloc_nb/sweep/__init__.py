"""Granularity sweeps: YAML grids expanded into runs, each executed as the parameterized
notebook ``notebooks/02_train_wsol.ipynb`` with papermill, on a local process pool or Dask.

A sweep is resumable: a run is *finished* when ``runs/<id>/metrics.json`` and
``runs/<id>/results.parquet`` exist, and finished runs are skipped. A run executes in
``runs/.<id>.tmp-XXXX`` and is renamed into ``runs/<id>`` when it ends, so a killed run leaves
no half-written result (its temporary folder is removed and the run redone next time).
A failing run is recorded (``runs/<id>/error.json``, the partially executed notebook, status
``failed`` in the results store) and retried by the next sweep. The YAML schema is
documented in ``docs/results_schema.md``.

The package, one module per part (each re-exported here):

- :mod:`~inatloc_nb.sweep.config`: the YAML schema, its validation (``ConfigError``) and the
  grids (``SweepConfig``, ``Grid``);
- :mod:`~inatloc_nb.sweep.grid`: one run (``RunSpec``: identity, run id, dependencies,
  notebook parameters) and ``expand``;
- :mod:`~inatloc_nb.sweep.checks`: the data checks made before any run, ``plan``;
- :mod:`~inatloc_nb.sweep.layout`: the results folder (``runs_dir``, ``is_finished``) and the
  training notebook;
- :mod:`~inatloc_nb.sweep.execute`: ``run_sweep``, ``execute_run``, ``execute_group``
  (fused learning-rate runs), ``resolve_lr``,
  ``explain_runs``;
- :mod:`~inatloc_nb.sweep.executors`: the local process pool and the Dask cluster, GPU pinning
  and packing;
- :mod:`~inatloc_nb.sweep.cost`: what the runs ask of a GPU and the cost model's hours at
  measured rates (``sweep --dry-run --rates``).
"""
from inatloc_nb.sweep.checks import check_data, dataset_levels, plan
from inatloc_nb.sweep.config import (
    DEFAULT_GPU_MEMORY_PER_RUN_GB,
    EXECUTION_KEYS,
    LIST_DEFAULTS,
    LIST_KEYS,
    LR_SELECTED,
    METHODS,
    REQUIRED_KEYS,
    SCALAR_DEFAULTS,
    SCALAR_KEYS,
    SYNTH_SOURCES,
    ConfigError,
    Grid,
    LRSearch,
    SweepConfig,
)
from inatloc_nb.sweep.cost import Rates, Work, gpu_hours, sweep_work
from inatloc_nb.sweep.execute import (
    RunOutcome,
    SweepSummary,
    execute_group,
    execute_run,
    explain_runs,
    fused_groups,
    resolve_lr,
    run_sweep,
)
from inatloc_nb.sweep.executors import fit_runs_per_gpu, free_gpu_memory, gpu_slots, visible_gpus
from inatloc_nb.sweep.grid import IDENTITY_DEFAULTS, RunSpec, expand
from inatloc_nb.sweep.layout import NOTEBOOK_NAME, default_notebook, is_finished, runs_dir

__all__ = [
    "DEFAULT_GPU_MEMORY_PER_RUN_GB", "EXECUTION_KEYS", "IDENTITY_DEFAULTS", "LIST_DEFAULTS", "LIST_KEYS",
    "LR_SELECTED", "METHODS", "NOTEBOOK_NAME", "REQUIRED_KEYS", "SCALAR_DEFAULTS",
    "SCALAR_KEYS", "SYNTH_SOURCES", "ConfigError", "Grid", "LRSearch", "Rates", "RunOutcome", "RunSpec",
    "SweepConfig", "SweepSummary", "Work", "check_data", "dataset_levels", "default_notebook", "execute_group", "execute_run", "expand",
    "explain_runs", "fused_groups",
    "fit_runs_per_gpu", "free_gpu_memory", "gpu_hours", "gpu_slots", "is_finished", "plan", "resolve_lr",
    "run_sweep", "runs_dir", "sweep_work", "visible_gpus",
]
