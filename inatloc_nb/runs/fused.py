"""Fused learning-rate runs: runs that differ only in their learning rate, trained together
in one process from one set of loaders.

Such runs see the same images in the same order with the same augmentation, so one decode
can feed them all. :func:`run_fused` runs :func:`inatloc_nb.runs.run.run_experiment` for each
configuration in a thread of its own, in lockstep: one thread runs at a time and hands over
after each batch it takes from a loader (:class:`LockstepGroup`). What the runs have in
common is computed once, by the first run that asks for it (:func:`shared`): the dataset,
the loaders (``inatloc_nb.training.learner.build_dataloaders``), every batch of every pass over a
loader (training, D_f validation, CAM extraction). Each run gets its own copy of each batch,
so a method that edits its inputs in place does not reach the others.

Random streams: each run keeps its own python, numpy, torch (and CUDA) random state,
swapped in when the run takes its turn. A shared step runs on the state of the run that
computes it; every other run must arrive with the same state (checked; a run whose draws
went another way stops with :class:`FusedDivergence`) and continues from the state the step
left. So a run that draws at training time (HaS, ADL, CutMix, SPG) draws exactly what its
separate run draws, and its weights and metrics are those of its separate run.

Each run writes its own run folder (``run_experiment``); a run that fails leaves the group
and the others go on. ``python -m inatloc_nb.runs.fused GROUP.json`` runs a group described as
``[{"params": <notebook parameters>, "out_dir": ...}, ...]`` (what a sweep executes) and
writes ``fused_error.json`` (``RunFolder.write_fused_error``) into the folder of each run that failed.
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.lockstep import (
    FusedDivergence,
    LockstepGroup,
    active,
    run_lockstep,
    shared,
    step_aside,
)

if TYPE_CHECKING:
    from inatloc_nb.training.run_config import RunConfig

__all__ = ["FusedDivergence", "LockstepGroup", "active", "check_fusable", "config_from_parameters",
           "run_fused", "run_lockstep", "shared", "step_aside"]

def check_fusable(configs: Sequence[RunConfig]) -> None:
    """Raise ``InatlocError`` unless ``configs`` are trained runs differing only in ``lr``."""
    from inatloc_nb.training.run_config import BASELINES

    if not configs:
        raise InatlocError("a fused group needs at least one run")
    def without_lr(config: RunConfig) -> dict[str, Any]:
        return {k: v for k, v in config.to_dict().items() if k != "lr"}

    for config in configs:
        if config.method in BASELINES:
            raise InatlocError(f"method {config.method!r} is a baseline: it is not trained, so it is not fused")
        if without_lr(config) != without_lr(configs[0]):
            raise InatlocError("fused runs must differ only in their learning rate; "
                               f"{config} differs from {configs[0]} otherwise")
    lrs = [c.lr for c in configs]
    if len(set(lrs)) != len(lrs):
        raise InatlocError(f"fused runs need distinct learning rates, got {lrs}")


def run_fused(configs: Sequence[RunConfig], out_dirs: Sequence[str | Path],
              say: Callable[[str], None] = print) -> list[dict[str, Any] | BaseException]:
    """Run ``configs`` (trained runs differing only in ``lr``) as one fused group, each into
    its ``out_dirs`` folder (see the module docstring). Returns per run its ``metrics.json``
    content or the exception that ended it; one run failing does not stop the others."""
    import torch

    from inatloc_nb.runs.run import run_experiment

    check_fusable(configs)
    if len(out_dirs) != len(configs):
        raise InatlocError(f"{len(configs)} fused runs need as many folders, got {len(out_dirs)}")
    device = configs[0].device
    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        torch.cuda.init()  # the CUDA random state is part of every run's state from the start

    def job(config: RunConfig, folder: str | Path) -> Callable[[], dict[str, Any]]:
        def work() -> dict[str, Any]:
            try:
                return run_experiment(config, folder, say=lambda m: say(f"[lr {config.lr:g}] {m}"))
            except BaseException as exc:
                say(f"[lr {config.lr:g}] FAILED: {type(exc).__name__}: {exc}")
                raise
        return work

    return run_lockstep([job(c, f) for c, f in zip(configs, out_dirs, strict=True)],
                        [f"lr {c.lr:g}" for c in configs])


def config_from_parameters(params: dict[str, Any]) -> RunConfig:
    """The ``RunConfig`` the training notebook builds from its parameters (its ``config``)."""
    from inatloc_nb.training.run_config import RunConfig

    return RunConfig.from_dict(params["config"])


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m inatloc_nb.runs.fused GROUP.json``: run a fused group (see the module docstring)."""
    import json

    from inatloc_nb.runs.runfolder import RunFolder

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m inatloc_nb.runs.fused GROUP.json", file=sys.stderr)
        return 2
    group = json.loads(Path(args[0]).read_text())
    configs = [config_from_parameters(run["params"]) for run in group]
    folders = [Path(run["out_dir"]) for run in group]
    outcomes = run_fused(configs, folders, say=lambda m: print(m, flush=True))
    for folder, outcome in zip(folders, outcomes, strict=True):
        if isinstance(outcome, BaseException):
            RunFolder(folder).write_fused_error({
                "type": type(outcome).__name__, "message": f"{type(outcome).__name__}: {outcome}",
                "traceback": "".join(traceback.format_exception(outcome))})
    return 0


if __name__ == "__main__":
    sys.exit(main())
