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

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.hierarchies.labelling import file_digest, is_mixed, labelling_path, short_name
from inatloc_nb.sweep.config import LR_SELECTED, LRSearch, SweepConfig
from inatloc_nb.sweep.layout import runs_dir
from inatloc_nb.training.run_config import ALWAYS, RunConfig, swept_fields


#: Run parameters left out of a run's identity (:meth:`RunSpec.params`) at these values, so
#: the ids of runs made before the parameters existed stay the same: the ``identity`` of the
#: ``RunConfig`` fields (``inatloc_nb.training.run_config.param``) and the sweep's own ``lr_search``.
#: ``select_epoch`` was ``"best"`` for those runs (the default then), so ``"best"`` stays out
#: of the identity and today's default ``"last"`` is part of it: a finished best-epoch run is
#: never resumed as a last-epoch one.
IDENTITY_DEFAULTS: dict[str, Any] = {
    **{f.name: f.metadata["identity"] for f in swept_fields() if f.metadata["identity"] is not ALWAYS},
    "lr_search": None,
}


@dataclass(frozen=True)
class RunSpec:
    """One training (or baseline) run of a sweep: the dataset's name in the sweep and the run's
    :class:`~inatloc_nb.training.run_config.RunConfig`. With ``lr_search`` and no ``config.lr``, the
    learning rate is ``LR_SELECTED`` until :func:`resolve_lr` picks it from the runs of
    ``lr_search``."""

    dataset: str
    config: RunConfig
    lr_search: LRSearch | None = None

    @property
    def data(self) -> str:
        """Where the data is (``config.data``); not part of the run's identity."""
        return self.config.data

    @property
    def level(self) -> str:
        """``config.level`` (part of the run id's readable prefix)."""
        return self.config.level

    @property
    def method(self) -> str:
        """``config.method`` (part of the run id's readable prefix)."""
        return self.config.method

    @property
    def seed(self) -> int:
        """``config.seed`` (part of the run id's readable prefix)."""
        return self.config.seed

    @property
    def per_class(self) -> int | None:
        """``config.per_class`` (part of the run id's readable prefix)."""
        return self.config.per_class

    @property
    def lr(self) -> float | str | None:
        """``config.lr``, or ``LR_SELECTED`` while it is to be selected."""
        return LR_SELECTED if self.selecting else self.config.lr

    @property
    def selecting(self) -> bool:
        """True while the learning rate is to be selected (``lrs: selected``)."""
        return self.lr_search is not None and self.config.lr is None

    def params(self) -> dict[str, Any]:
        """The run's identity: the dataset and every swept ``RunConfig`` parameter (the data
        location aside, see :attr:`run_id`) except those at their ``IDENTITY_DEFAULTS`` value;
        ``lr_search`` for ``lr: selected`` runs; for a ``mixed:FILE`` level, also
        ``labelling``, a digest of the file's content, so a labelling chosen anew gives new
        runs instead of resuming the old ones."""
        out: dict[str, Any] = {"dataset": self.dataset}
        for f in swept_fields():
            value = getattr(self.config, f.name)
            if f.metadata["identity"] is ALWAYS or value != f.metadata["identity"]:
                out[f.name] = value
        out["lr"] = self.lr
        if self.lr_search is not None:
            out["lr_search"] = dataclasses.asdict(self.lr_search)
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

    def replace(self, **changes: Any) -> RunSpec:
        """This run with ``RunConfig`` fields changed (``dataclasses.replace`` of the config)."""
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **changes))

    def dependency(self) -> RunSpec | None:
        """The run whose trained model this one reuses: CAM-Agg aggregates the CAMs of the
        finest-level CAM run with the same parameters."""
        return self.replace(method="cam") if self.method == "cam-agg" else None

    def lr_candidates(self) -> tuple[RunSpec, ...]:
        """For ``lr: selected``: the main-grid runs of the same dataset, level, method and
        scalar settings over ``lr_search``'s learning rates, seeds and subsets; else none."""
        if not self.selecting:
            return ()
        search = self.lr_search
        return tuple(dataclasses.replace(self.replace(lr=lr, seed=seed, per_class=n), lr_search=None)
                     for lr, seed, n in itertools.product(search.lrs, search.seeds, search.per_class))

    def repeats_a_candidate(self) -> bool:
        """For ``lr: selected``: whether the run, its lr selected, will be one of
        :meth:`lr_candidates` (same seed and subset), whose outputs the sweep then gives it
        instead of training it again (``inatloc_nb.sweep.execute.resolve_lr``)."""
        return (self.selecting and self.seed in self.lr_search.seeds
                and self.per_class in self.lr_search.per_class)

    def dependencies(self) -> tuple[RunSpec, ...]:
        """Every run that must have ended before this one starts: the model it reuses
        (:meth:`dependency`) and the runs its learning rate is selected from."""
        dependency = self.dependency()
        return (*(() if dependency is None else (dependency,)), *self.lr_candidates())

    def notebook_parameters(self, out_dir: str | Path, results_dir: str | Path) -> dict[str, Any]:
        """The values injected into the notebook's ``parameters`` cell: ``config``, the
        ``RunConfig`` as a dict (``model_run``: the folder of :meth:`dependency` under
        ``results_dir``, or None), and ``out_dir``."""
        if self.selecting:
            raise InatlocError(f"run {self.run_id}: resolve its learning rate first (sweep.resolve_lr)")
        dependency = self.dependency()
        model_run = None if dependency is None else str(runs_dir(results_dir) / dependency.run_id)
        return {"config": self.replace(model_run=model_run).config.to_dict(), "out_dir": str(out_dir)}


def expand(config: SweepConfig) -> list[RunSpec]:
    """Every run of the sweep, in config order, each once (grids may overlap); a run another
    depends on (:meth:`RunSpec.dependencies`) is added before it when no grid lists it. A
    grid's runs are its settings' ``RunConfig`` with each combination of its axes replaced."""
    runs: dict[str, RunSpec] = {}
    for dataset, data in config.datasets.items():
        for grid in config.grids:
            base = RunConfig(data=data, **grid.settings)
            for values in itertools.product(*grid.axes.values()):
                changes = dict(zip(grid.axes, values, strict=True))
                if is_mixed(changes["level"]):
                    changes["level"] = changes["level"].replace("{dataset}", dataset)
                selected = changes["lr"] == LR_SELECTED
                if selected:
                    changes["lr"] = None
                spec = RunSpec(dataset, dataclasses.replace(base, **changes), grid.lr_search if selected else None)
                for dependency in spec.dependencies():
                    runs.setdefault(dependency.run_id, dependency)
                runs.setdefault(spec.run_id, spec)
    return list(runs.values())
