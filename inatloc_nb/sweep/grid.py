"""A sweep's runs: :class:`RunSpec` (one run, its identity and dependencies) and
:func:`expand` (every run of a configuration's grids).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inatloc_nb.errors import InatlocError
from inatloc_nb.labelling import file_digest, is_mixed, labelling_path, short_name
from inatloc_nb.sweep.config import LR_SELECTED, LRSearch, SweepConfig
from inatloc_nb.sweep.layout import runs_dir


#: Run parameters left out of a run's identity (:meth:`RunSpec.params`) at these values, so
#: the ids of runs made before the parameters existed stay the same. ``select_epoch`` was
#: ``"best"`` for those runs (the default then), so ``"best"`` stays out of the identity and
#: today's default ``"last"`` is part of it: a finished best-epoch run is never resumed as a
#: last-epoch one.
IDENTITY_DEFAULTS: dict[str, Any] = {"lr_groups": "reference", "lr_decay": "reference", "select_epoch": "best",
                                     "lr_search": None}


@dataclass(frozen=True)
class RunSpec:
    """One training (or baseline) run: every parameter of ``02_train_wsol``; ``lr`` is
    ``LR_SELECTED`` until :func:`resolve_lr` picks it from the runs of ``lr_search``."""

    dataset: str
    data: str
    level: str
    method: str
    lr: float | str | None
    seed: int
    per_class: int | None
    schedule: str
    backbone: str
    pretrained: bool
    image_size: int
    batch_size: int
    lr_groups: str = "reference"
    lr_decay: str = "reference"
    select_epoch: str = "last"
    lr_search: LRSearch | None = None

    def params(self) -> dict[str, Any]:
        """The run's identity: every parameter except the data location (see :attr:`run_id`)
        and those at their ``IDENTITY_DEFAULTS`` value; for a ``mixed:FILE`` level, also
        ``labelling``, a digest of the file's content, so a labelling chosen anew gives new
        runs instead of resuming the old ones."""
        out = dataclasses.asdict(self)
        del out["data"]
        for key, default in IDENTITY_DEFAULTS.items():
            if out[key] == default:
                del out[key]
        if is_mixed(self.level) and labelling_path(self.level).is_file():
            out["labelling"] = file_digest(labelling_path(self.level))[:10]
        return out

    @property
    def run_id(self) -> str:
        """``<dataset>-<level>-<method>-lr<lr>-s<seed>-n<per_class>-<hash>``.

        The hash is the first 10 hex digits of SHA-1 over the canonical JSON (sorted keys,
        no spaces) of :meth:`params`, so the same parameters give the same id on every
        machine, wherever the data lives.
        """
        canonical = json.dumps(self.params(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha1(canonical.encode()).hexdigest()[:10]
        lr = "none" if self.lr is None else self.lr if isinstance(self.lr, str) else f"{self.lr:g}"
        n = "all" if self.per_class is None else str(self.per_class)
        prefix = f"{self.dataset}-{short_name(self.level)}-{self.method}-lr{lr}-s{self.seed}-n{n}"
        return f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', prefix)}-{digest}"

    def dependency(self) -> RunSpec | None:
        """The run whose trained model this one reuses: CAM-Agg aggregates the CAMs of the
        finest-level CAM run with the same parameters."""
        return dataclasses.replace(self, method="cam") if self.method == "cam-agg" else None

    def lr_candidates(self) -> tuple[RunSpec, ...]:
        """For ``lr: selected``: the main-grid runs of the same dataset, level, method and
        scalar settings over ``lr_search``'s learning rates, seeds and subsets; else none."""
        if self.lr != LR_SELECTED or self.lr_search is None:
            return ()
        search = self.lr_search
        return tuple(dataclasses.replace(self, lr=lr, seed=seed, per_class=n, lr_search=None)
                     for lr, seed, n in itertools.product(search.lrs, search.seeds, search.per_class))

    def dependencies(self) -> tuple[RunSpec, ...]:
        """Every run that must have ended before this one starts: the model it reuses
        (:meth:`dependency`) and the runs its learning rate is selected from."""
        dependency = self.dependency()
        return (*(() if dependency is None else (dependency,)), *self.lr_candidates())

    def notebook_parameters(self, out_dir: str | Path, results_dir: str | Path) -> dict[str, Any]:
        """The values injected into the notebook's ``parameters`` cell (``model_run``: the
        folder of :meth:`dependency` under ``results_dir``, or None)."""
        if self.lr == LR_SELECTED:
            raise InatlocError(f"run {self.run_id}: resolve its learning rate first (sweep.resolve_lr)")
        out = dataclasses.asdict(self)
        del out["dataset"], out["lr_search"]
        dependency = self.dependency()
        out["model_run"] = None if dependency is None else str(runs_dir(results_dir) / dependency.run_id)
        out["out_dir"] = str(out_dir)
        return out


def expand(config: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep, in config order, each once (grids may overlap); a run another
    depends on (:meth:`RunSpec.dependencies`) is added before it when no grid lists it."""
    runs: dict[str, RunSpec] = {}
    for dataset, data in config.datasets.items():
        for grid in config.grids:
            for level, method, lr, seed, per_class in itertools.product(
                grid.levels, grid.methods, grid.lrs, grid.seeds, grid.per_class
            ):
                spec = RunSpec(
                    dataset=dataset, data=data, level=level.replace("{dataset}", dataset) if is_mixed(level) else level,
                    method=method, lr=lr, seed=seed,
                    per_class=per_class, schedule=grid.schedule, backbone=grid.backbone,
                    pretrained=grid.pretrained, image_size=grid.image_size, batch_size=grid.batch_size,
                    lr_groups=grid.lr_groups, lr_decay=grid.lr_decay, select_epoch=grid.select_epoch,
                    lr_search=grid.lr_search if lr == LR_SELECTED else None,
                )
                for dependency in spec.dependencies():
                    runs.setdefault(dependency.run_id, dependency)
                runs.setdefault(spec.run_id, spec)
    return list(runs.values())
