"""What a sweep asks of a GPU, and how long that takes at measured rates (``docs/cost_model.md``).

:func:`sweep_work` counts, from the sweep's datasets, the images each run pushes through the
GPU: training images (its training set x epochs), fastai's validation passes over D_f after
every epoch, and evaluation passes (CAMs of every evaluated split, D_f again before training
and after each epoch with ``select_epoch: best``; the FSL baselines' maps and detections).
Center computes nothing on a GPU; CAM-Agg only extracts; a ``lr: selected`` run that repeats a
main-grid run (:meth:`RunSpec.repeats_a_candidate`) takes that run's outputs.

:class:`Rates` holds measured rates (from ``benchmarks/gpu_check.py``'s JSON:
:meth:`Rates.from_check`) and :func:`gpu_hours` applies the cost model::

    hours = W_train / A_train + W_eval / A_eval + W_valid / A_valid
            + (n_runs x t_run + W_eval x t_image) / k

with ``t_run`` a run's fixed seconds outside those passes, ``t_image`` the CPU seconds per
evaluated image of saving, scoring and analysing it (an upper bound: the sweep overlaps part of
it with the GPU's work), and ``k`` the runs sharing the GPU, whose fixed costs overlap.
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb.core.errors import InatlocError

if TYPE_CHECKING:
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.sweep.grid import RunSpec


@dataclass(frozen=True)
class Work:
    """Images a set of runs pushes through the GPU, and how many runs execute (``reused``:
    runs that take another run's outputs and compute nothing)."""

    runs: int = 0
    train_images: int = 0
    eval_images: int = 0
    valid_images: int = 0
    reused: int = 0

    def __add__(self, other: Work) -> Work:
        return Work(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    def __sub__(self, other: Work) -> Work:
        return Work(*(a - b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))


def run_work(spec: RunSpec, dataset: WSOLDataset) -> Work:
    """The :class:`Work` of one run of ``dataset``."""
    from inatloc_nb.training.learner import Schedule

    config = spec.config
    if spec.repeats_a_candidate():
        return Work(reused=1)
    size = {split: len(dataset.images(split)) for split in dataset.splits}
    evaluated = sum(size[split] for split in config.eval_splits)
    epochs = Schedule.parse(config.schedule, config.lr_decay).epochs
    if config.method == "center":
        return Work(runs=1)
    if config.method == "cam-agg":
        return Work(runs=1, eval_images=evaluated)
    if config.method in ("fsl-seg", "fsl-det"):  # trained on D_f's boxes
        return Work(runs=1, train_images=epochs * size["val"], eval_images=evaluated)
    if config.per_class is None:
        n_train = size["train"]
    else:
        with warnings.catch_warnings():  # categories with fewer images: reported when the run trains
            warnings.simplefilter("ignore")
            n_train = len(dataset.subsample("train", config.level, config.per_class, config.seed))
    reselected = (epochs + 1) * size["val"] if config.select_epoch == "best" else 0
    return Work(runs=1, train_images=epochs * n_train, eval_images=evaluated + reselected,
                valid_images=epochs * size["val"])


def sweep_work(specs: Iterable[RunSpec], datasets: Mapping[str, WSOLDataset]) -> Work:
    """The summed :func:`run_work` of ``specs``; ``datasets``: each spec's dataset by name."""
    return sum((run_work(spec, datasets[spec.dataset]) for spec in specs), Work())


@dataclass(frozen=True)
class Rates:
    """Measured rates (images/s) and fixed costs (seconds) of one run on one GPU."""

    train: float
    eval: float
    valid: float | None
    seconds_per_run: float
    seconds_per_eval_image: float = 0.0
    source: str = ""

    @classmethod
    def from_check(cls, results: Mapping[str, Any], prepared: bool = False, source: str = "") -> Rates:
        """The rates of a ``gpu_check.py`` result: training and CAM extraction of one run
        (``run_jpeg``; ``run_prepared``'s CAM rate with ``prepared``), the validation rate and
        fixed cost of its end-to-end run (``train_end_to_end``) with the CPU seconds per
        evaluated image (``score_test_seconds``: D_test's, which nothing overlaps) taken out
        of the fixed cost. Raises ``InatlocError`` naming what is missing."""
        one, e2e = results.get("run_jpeg", {}), results.get("train_end_to_end", {})
        if "train" not in one or "fixed_seconds" not in e2e:
            raise InatlocError(f"{source or 'the GPU check'}: needs the sections run_jpeg and train_end_to_end")
        cam = results.get("run_prepared", {}).get("cam_extraction") if prepared else None
        timings = e2e.get("timings", {})
        n_eval = results.get("data", {}).get("eval_images_per_split")
        post = timings.get("score_test_seconds")
        per_image = post / n_eval if n_eval and post is not None else 0.0
        return cls(train=one["train"]["images_per_s"],
                   eval=(cam or one["cam_extraction"])["images_per_s"],
                   valid=timings.get("validate_images_per_s"),
                   seconds_per_run=e2e["fixed_seconds"] - (post or 0.0),
                   seconds_per_eval_image=per_image, source=source)

    @classmethod
    def from_json(cls, path: str | Path, prepared: bool = False) -> Rates:
        """:meth:`from_check` of a ``gpu_check.py --json`` output file."""
        path = Path(path)
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InatlocError(f"{path}: not a readable gpu_check.py JSON output ({exc})") from None
        if not isinstance(results, dict):
            raise InatlocError(f"{path}: not a gpu_check.py JSON output (expected an object)")
        return cls.from_check(results, prepared, source=str(path))

    def replace(self, **changes: Any) -> Rates:
        """These rates with some changed (e.g. the aggregate rates of packed runs)."""
        return dataclasses.replace(self, **changes)


def gpu_hours(work: Work, rates: Rates, runs_at_once: int = 1) -> dict[str, float]:
    """The cost model's GPU-hours of ``work`` at ``rates`` (module docstring), by term, with
    ``runs_at_once`` runs sharing the GPU; ``validation_h`` only when the validation rate
    was measured."""
    parts = {
        "training_h": work.train_images / rates.train / 3600,
        "cams_h": work.eval_images / rates.eval / 3600,
        "fixed_h": (work.runs * rates.seconds_per_run + work.eval_images * rates.seconds_per_eval_image)
        / runs_at_once / 3600,
    }
    if rates.valid:
        parts["validation_h"] = work.valid_images / rates.valid / 3600
    return {**{k: round(v, 2) for k, v in parts.items()}, "total_h": round(sum(parts.values()), 2)}


__all__ = ["Rates", "Work", "gpu_hours", "run_work", "sweep_work"]
