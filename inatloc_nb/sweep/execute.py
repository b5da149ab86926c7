"""Executing a sweep: each run as the parameterized training notebook (papermill) in a
temporary folder published when it ends, in waves that respect the runs' dependencies
(CAM-Agg's model, ``lrs: selected``), then the post-hoc explainers and the results store.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from inatloc_nb.core.atomic import atomic_write_json, make_temp_dir
from inatloc_nb.core.env import PREPARED_ENV, PROGRESS_ENV
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs import results
from inatloc_nb.runs.runfolder import RunFolder, run_folder
from inatloc_nb.sweep import executors
from inatloc_nb.sweep.checks import check_data
from inatloc_nb.sweep.config import LR_SELECTED, SweepConfig
from inatloc_nb.sweep.grid import RunSpec, expand
from inatloc_nb.sweep.layout import NOTEBOOK_NAME, clean_stale, default_notebook, is_finished, runs_dir
from inatloc_nb.training.run_config import BASELINES

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass(frozen=True)
class RunOutcome:
    """What happened to one run."""

    run_id: str
    status: str  # "ok" or "failed"
    wall_seconds: float
    error: str | None = None


@dataclass
class SweepSummary:
    """Counts and ids of a sweep's runs; ``table_path`` is the consolidated results store."""

    results_dir: Path
    total: int
    skipped: int
    done: list[str]
    failed: list[str]
    table_path: Path | None = None

    def __str__(self) -> str:
        return (
            f"{self.total} runs: {self.skipped} already finished, {len(self.done)} done, "
            f"{len(self.failed)} failed; results in {self.table_path or self.results_dir}"
        )


def run_sweep(
    config: SweepConfig,
    results_dir: str | Path,
    executor: str = "local",
    scheduler: str | None = None,
    max_parallel: int | None = None,
    progress: bool = True,
    notebook: str | Path | None = None,
    kernel_name: str = "python3",
    runs_per_gpu: int | None = None,
    fuse_lrs: bool | None = None,
) -> SweepSummary:
    """Execute every unfinished run of ``config`` and consolidate the results store.

    ``executor="local"``: a pool of ``max_parallel`` worker processes (default:
    ``runs_per_gpu`` per visible GPU, each pinned to its GPU round-robin, or 1 without GPUs).
    ``runs_per_gpu`` (default: the config's ``runs_per_gpu``) above 1 packs runs on each GPU:
    it is lowered, with a message, to what the GPU with the least free memory holds at the
    config's ``gpu_memory_per_run_gb``. ``fuse_lrs`` (default: the config's ``fuse_lrs``,
    else on with GPUs) trains runs that differ only in lr as one group from one loader
    (``execute_group``; a group takes one slot of the pool, and packing counts the memory of
    its models together). With GPUs, each run's data loading gets its share of
    the cores (``inatloc_nb.training.pipeline.workers_per_run``). The config's ``prepared`` cache
    reaches the runs as ``$INATLOC_NB_PREPARED`` (local pool and local Dask cluster; workers
    of an existing cluster need it in their own environment). ``executor="dask"``: a
    ``LocalCluster`` of ``max_parallel`` single-threaded worker processes, or the existing
    cluster at ``scheduler`` (its workers must see ``results_dir`` and the notebook at the
    same paths). Returns the counts; ``results_dir/results.parquet`` holds the store.
    Worker processes are spawned: a script calling this needs an
    ``if __name__ == "__main__":`` guard.
    """
    from inatloc_nb.core.progress import track

    from inatloc_nb.training import pipeline

    if executor not in ("local", "dask"):
        raise InatlocError(f"unknown executor {executor!r}; use 'local' or 'dask'")
    if scheduler is not None and executor != "dask":
        raise InatlocError("--scheduler needs the dask executor")
    notebook = Path(notebook) if notebook is not None else default_notebook()
    if not notebook.is_file():
        raise InatlocError(f"training notebook not found: {notebook} (pass the notebook path explicitly)")
    if max_parallel is not None and max_parallel < 1:
        raise InatlocError(f"max_parallel must be at least 1, got {max_parallel}")
    runs_per_gpu = config.runs_per_gpu if runs_per_gpu is None else runs_per_gpu
    if runs_per_gpu < 1:
        raise InatlocError(f"runs_per_gpu must be at least 1, got {runs_per_gpu}")
    check_data(config)
    results_dir = Path(results_dir)
    specs = expand(config)
    todo = [s for s in specs if not is_finished(results_dir, s.run_id)]
    for spec in todo:
        clean_stale(results_dir, spec.run_id)
    summary = SweepSummary(results_dir, len(specs), len(specs) - len(todo), [], [])
    say = print if progress else (lambda *a, **k: None)
    say(f"sweep {config.name}: {len(specs)} runs, {summary.skipped} already finished, {len(todo)} to run")
    atomic_write_json(results_dir / results.SWEEP_RECORD,
                      {"name": config.name, "config": None if config.path is None else str(config.path.resolve())})
    if todo:
        gpus = executors.visible_gpus() if scheduler is None else []
        fuse = (config.fuse_lrs if config.fuse_lrs is not None else bool(gpus)) if fuse_lrs is None else fuse_lrs
        # a fused group holds all its models on the GPU: a slot needs the memory of the largest group
        per_slot_gb = config.gpu_memory_per_run_gb * (max(map(len, fused_groups(todo))) if fuse else 1)
        if gpus and runs_per_gpu > 1 and max_parallel is None:
            runs_per_gpu = executors.fit_runs_per_gpu(runs_per_gpu, executors.free_gpu_memory(gpus), per_slot_gb, say)
        parallel = max_parallel if max_parallel is not None else max(1, len(gpus) * runs_per_gpu)
        loader_workers = pipeline.workers_per_run(pipeline.available_cores(), parallel) if gpus else None
        if gpus:
            say(f"{parallel} runs at once on GPU(s) {', '.join(gpus)}, {loader_workers} data-loading workers each")
        if fuse:
            say("runs differing only in lr train together (fuse_lrs)")
        args = (results_dir.resolve(), notebook.resolve(), kernel_name)
        # runs that reuse another run's model (CAM-Agg) or select their lr among other runs
        # (lr: selected) start once those have ended
        phases = _phases(todo)
        pool = (executors._local_pool(parallel, gpus, loader_workers) if executor == "local"
                else executors._dask_client(parallel, gpus, scheduler, loader_workers))
        prepared = {PREPARED_ENV: config.prepared} if config.prepared else {}
        # executed notebooks are read afterwards, not watched: lines, not bars, unless set
        headless = {PROGRESS_ENV: os.environ.get(PROGRESS_ENV, "lines")}
        with track(total=len(todo), desc="runs", unit="run", show=progress) as bar, \
                _environment({**prepared, **headless}), pool as (submit, as_completed):
            for phase in filter(None, phases):
                groups = fused_groups(phase) if fuse else [[spec] for spec in phase]
                futures = {submit(execute_group, group, *args): group for group in groups}
                for future in as_completed(futures):
                    _report(futures[future], future, summary, len(todo), bar, progress)
    if config.explainers:
        summary.failed.extend(explain_runs(config, specs, results_dir, say))
    if runs_dir(results_dir).is_dir():
        results.collect(results_dir)
        summary.table_path = results_dir / results.STORE_NAME
    say(str(summary))
    return summary


def _report(group: Sequence[RunSpec], future: Any, summary: SweepSummary, n_todo: int, bar: Any,
            progress: bool) -> None:
    """Count the completed runs of a group and print their lines (done / failed / left)."""
    try:
        outcomes = future.result()
    except Exception as exc:  # the worker itself died (not a notebook error)
        outcomes = [RunOutcome(spec.run_id, "failed", float("nan"), _describe(exc)["message"]) for spec in group]
    for outcome in outcomes:
        _report_one(outcome, summary, n_todo, bar, progress)


def _report_one(outcome: RunOutcome, summary: SweepSummary, n_todo: int, bar: Any, progress: bool) -> None:
    (summary.done if outcome.status == "ok" else summary.failed).append(outcome.run_id)
    left = n_todo - len(summary.done) - len(summary.failed)
    note = f"ok in {outcome.wall_seconds:.1f} s" if outcome.status == "ok" else f"FAILED: {outcome.error}"
    if progress:
        bar.write(f"{outcome.run_id}: {note} [done {len(summary.done)}, failed {len(summary.failed)}, left {left}]")
    bar.set_postfix(done=len(summary.done), failed=len(summary.failed), left=left)
    bar.update()


def execute_run(spec: RunSpec, results_dir: str | Path, notebook: str | Path,
                kernel_name: str = "python3") -> RunOutcome:
    """Execute the notebook for one run; publish ``runs/<id>`` (finished or failed).

    The kernel inherits this process's environment (``CUDA_VISIBLE_DEVICES`` included).
    """
    return execute_group([spec], results_dir, notebook, kernel_name)[0]


def execute_group(specs: Sequence[RunSpec], results_dir: str | Path, notebook: str | Path,
                  kernel_name: str = "python3") -> list[RunOutcome]:
    """Execute runs that differ only in their learning rate as one fused group
    (``inatloc_nb.runs.fused``, in a child process: one loader, one decode, each run its own
    folder and random stream), then each run's notebook, which finds its folder finished
    and shows it (the group's notebooks at once: each is a kernel of its own, mostly starting
    and importing); publish every ``runs/<id>``. A single spec is executed by its notebook
    alone. A run that fails is recorded as failed; the others go on."""
    from concurrent.futures import ThreadPoolExecutor

    parent = runs_dir(results_dir)
    parent.mkdir(parents=True, exist_ok=True)
    started = [_begin(spec, results_dir, parent) for spec in specs]
    start = time.perf_counter()
    if len(specs) > 1:
        _train_fused([s for s in started if s[3] is None], results_dir)

    def execute(spec: RunSpec, tmp: Path, error: dict[str, str] | None) -> dict[str, str] | None:
        if error is None:
            error = _fused_error(tmp) if len(specs) > 1 else None
        if error is None:
            try:
                papermill_execute(notebook, tmp, spec, results_dir, kernel_name)
            except Exception as exc:  # the run failed: recorded, the sweep goes on
                error = _describe(exc)
        return error

    with ThreadPoolExecutor(len(started), thread_name_prefix="notebook") as pool:
        errors = list(pool.map(execute, *zip(*((spec, tmp, error) for spec, tmp, _, error in started))))
    outcomes = []
    for (spec, tmp, record, _), error in zip(started, errors):
        if len(specs) > 1:
            record["fused_with"] = [s.run_id for s in specs if s.run_id != spec.run_id]
        outcomes.append(_publish(spec, tmp, record, error, time.perf_counter() - start, parent))
    return outcomes


def _begin(spec: RunSpec, results_dir: str | Path, parent: Path
           ) -> tuple[RunSpec, Path, dict[str, Any], dict[str, str] | None]:
    """A run's temporary folder and ``run.json`` record, its learning rate resolved (an
    error when it cannot be)."""
    tmp = make_temp_dir(f".{spec.run_id}.tmp-", parent)
    error = selection = params = None
    run_id = spec.run_id
    try:
        spec, selection = resolve_lr(spec, results_dir)
        params = spec.params()
        if selection is not None and "trained_as" in selection:  # the very same run has finished
            RunFolder(tmp).share_outputs(run_folder(results_dir, selection["trained_as"]))
    except InatlocError as exc:  # recorded as a failed run (lr unknown if params is None), retried next sweep
        params, error = params or {**spec.params(), "lr": None}, _describe(exc)
    record = {
        "run_id": run_id, "params": params, "data": spec.data,
        "started_at": _now(), "host": os.uname().nodename,
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        **({} if selection is None else {"lr_selection": selection}),
    }
    RunFolder(tmp).write_record(record)
    return spec, tmp, record, error


def papermill_execute(notebook: str | Path, tmp: Path, spec: RunSpec, results_dir: str | Path,
                      kernel_name: str) -> None:
    """Execute the training notebook for ``spec`` into ``tmp``."""
    import papermill

    papermill.execute_notebook(
        str(notebook), str(tmp / NOTEBOOK_NAME),
        parameters=spec.notebook_parameters(tmp.resolve(), Path(results_dir).resolve()),
        kernel_name=kernel_name, cwd=str(tmp), progress_bar=False,
    )


def _train_fused(started: Sequence[tuple[RunSpec, Path, dict[str, Any], Any]], results_dir: str | Path) -> None:
    """Train the runs of ``started`` as one fused group in a child process
    (``python -m inatloc_nb.runs.fused``); its output goes to each run's ``fused.log``. A run
    that did not finish finds why in its folder (``_fused_error``)."""
    import subprocess
    import sys

    if not started:
        return
    group = [{"params": spec.notebook_parameters(tmp.resolve(), Path(results_dir).resolve()),
              "out_dir": str(tmp.resolve())} for spec, tmp, _, _ in started]
    group_file = started[0][1] / "fused_group.json"
    atomic_write_json(group_file, group)
    log = started[0][1] / "fused.log"
    with open(log, "w") as out:
        code = subprocess.run([sys.executable, "-m", "inatloc_nb.runs.fused", str(group_file)],
                              stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    text = _ANSI.sub("", log.read_text(errors="replace"))
    for _, tmp, _, _ in started:
        if tmp != started[0][1]:
            (tmp / "fused.log").write_text(text)
        run = RunFolder(tmp)
        if code != 0 and not run.is_finished() and not run.fused_error_path.is_file():
            tail = "\n".join(text.splitlines()[-20:])
            run.write_fused_error({"type": "FusedGroupError",
                                   "message": f"the fused group's process exited with code {code}",
                                   "traceback": tail})
    group_file.unlink()


def _fused_error(tmp: Path) -> dict[str, str] | None:
    """The error a fused group recorded for the run in ``tmp`` (removed from there), or None."""
    return RunFolder(tmp).pop_fused_error()


def _publish(spec: RunSpec, tmp: Path, record: dict[str, Any], error: dict[str, str] | None,
             wall_seconds: float, parent: Path) -> RunOutcome:
    """Write the run's record, results table and ``error.json``; move ``tmp`` to ``runs/<id>``."""
    run_id, run = record["run_id"], RunFolder(tmp)
    record.update(wall_seconds=wall_seconds, finished_at=_now())
    if error is None:
        record["status"] = "ok"
        run.write_record(record)
        try:
            results.write_run_results(tmp)
        except InatlocError as exc:  # the notebook ended without valid results
            error = _describe(exc)
    if error is not None:
        record["status"] = "failed"
        run.write_record(record)
        run.write_error(error)
        results.write_run_results(tmp)
    final = parent / run_id
    if final.exists():  # a failed attempt being replaced
        shutil.rmtree(final)
    os.rename(tmp, final)
    return RunOutcome(run_id, record["status"], record["wall_seconds"], None if error is None else error["message"])


def fused_groups(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """``specs`` in groups of runs that differ only in their (given) learning rate, in
    first-appearance order; baselines and ``lr: selected`` runs stay alone."""
    groups: dict[Any, list[RunSpec]] = {}
    for spec in specs:
        fusable = spec.method not in BASELINES and isinstance(spec.lr, float)
        same_but_lr = json.dumps(spec.replace(lr=None).config.to_dict(), sort_keys=True)
        key = (spec.dataset, same_but_lr) if fusable else spec.run_id
        groups.setdefault(key, []).append(spec)
    return list(groups.values())


def resolve_lr(spec: RunSpec, results_dir: str | Path) -> tuple[RunSpec, dict[str, Any] | None]:
    """``spec`` with a learning rate, and how it was selected (None when it had one).

    For ``lr: selected`` the paper's model selection (``results.select_learning_rate``: best
    D_f MaxBoxAccV2, ties to the smaller lr) runs over the finished runs of
    :meth:`RunSpec.lr_candidates` under ``results_dir``; when the main grid has several
    seeds or subsets, the lr selected most often wins (ties to the smaller). When the run, its
    lr now given, is one of those candidates (same configuration: e.g. the stability grid's
    seed 0 and the main grid's run at the selected lr), ``trained_as`` names it: the sweep
    gives the run that candidate's outputs instead of training it again. Raises
    ``InatlocError`` when no candidate has finished with D_f results.
    """
    if spec.lr != LR_SELECTED:
        return spec, None
    import polars as pl

    candidates = spec.lr_candidates()
    finished = [c.run_id for c in candidates if is_finished(results_dir, c.run_id)]
    chosen = (results.select_learning_rate(pl.concat([results.run_results(runs_dir(results_dir) / r)
                                                      for r in finished]))
              .filter(pl.col("explainer") == results.OWN_MAPS)  # selected by the runs' own maps
              if finished else pl.DataFrame())
    if chosen.is_empty():
        raise InatlocError(
            f"run {spec.run_id}: its lr is selected on D_f among the main-grid runs "
            f"{', '.join(c.run_id for c in candidates)}, but none has finished with D_f ('val') "
            f"results under {runs_dir(results_dir)}; run the main grid first (the sweep does)")
    lrs = chosen["lr"].to_list()
    lr = min(set(lrs), key=lambda v: (-lrs.count(v), v))
    resolved = spec.replace(lr=lr)
    selection = {"lr": lr, "selected_runs": chosen.filter(pl.col("lr") == lr)["run_id"].to_list(),
                 "candidates": finished}
    twin = next((c.run_id for c in candidates
                 if c.config == resolved.config and c.run_id in selection["selected_runs"]), None)
    if twin is not None:
        selection["trained_as"] = twin
    return resolved, selection


def _phases(specs: Sequence[RunSpec]) -> list[list[RunSpec]]:
    """``specs`` in waves, each run in a later wave than every run it depends on
    (:meth:`RunSpec.dependencies`)."""
    depth: dict[str, int] = {}

    def wave(spec: RunSpec) -> int:
        if spec.run_id not in depth:
            depth[spec.run_id] = 1 + max((wave(d) for d in spec.dependencies()), default=-1)
        return depth[spec.run_id]

    waves: list[list[RunSpec]] = [[] for _ in range(1 + max(map(wave, specs), default=-1))]
    for spec in specs:
        waves[wave(spec)].append(spec)
    return waves


def explain_runs(config: SweepConfig, specs: Sequence[RunSpec], results_dir: Path,
                 say: Callable[[str], None] = print) -> list[str]:
    """Score each of ``config.explainers`` on every finished trained run of ``specs`` that lacks
    it (``inatloc_nb.runs.explainers.explain_run``, in this process), then rebuild the run's results
    table. Resumable: an explainer counts as done once its ``metrics.json`` is written (last).
    Returns one message per explainer that failed (the sweep goes on)."""
    from inatloc_nb.runs.explainers import explain_run, is_explained

    failures = []
    for spec in specs:
        folder = runs_dir(results_dir) / spec.run_id
        if spec.method in BASELINES or not is_finished(results_dir, spec.run_id):
            continue
        todo = [name for name in config.explainers if not is_explained(folder, name)]
        for name in todo:
            try:
                explain_run(folder, name, say=say)
            except Exception as exc:  # recorded and reported; the other explainers go on
                failures.append(f"{spec.run_id}: {name}: {_describe(exc)['message']}")
                say(f"explainer FAILED: {failures[-1]}")
        if todo:
            results.write_run_results(folder)
    return failures


@contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables (inherited by worker processes and notebook kernels
    started meanwhile), restoring the previous values afterwards."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _describe(exc: BaseException) -> dict[str, str]:
    """``error.json``: type, one-line message and the full traceback (cell traceback for
    notebook errors), without terminal colour codes."""
    ename = getattr(exc, "ename", None) or type(exc).__name__
    evalue = getattr(exc, "evalue", None) or str(exc)
    cell_tb = getattr(exc, "traceback", None)
    tb = "\n".join(cell_tb) if isinstance(cell_tb, list) else "".join(traceback.format_exception(exc))
    return {"type": ename, "message": _ANSI.sub("", f"{ename}: {evalue}").strip(), "traceback": _ANSI.sub("", tb)}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
