"""Checks of a sweep's data before any run: dataset folders, mixed labelling files, the levels
each grid lists and, with ``check_data: true``, every image; :func:`plan` for ``--dry-run``.
"""
from __future__ import annotations

from pathlib import Path

from inatloc_nb.hierarchies.labelling import LabellingError, is_mixed, labelling_path, parse_level, read_labelling
from inatloc_nb.sweep.config import ConfigError, SweepConfig
from inatloc_nb.sweep.grid import RunSpec, expand
from inatloc_nb.sweep.layout import is_finished


def check_data(config: SweepConfig) -> None:
    """Fail clearly when a dataset folder of the config does not exist, or a mixed labelling file
    does not exist or is not valid for its dataset."""
    for name, data in config.datasets.items():
        if not data.startswith("synth:") and not Path(data).is_dir():
            where = config.path or "<config>"
            raise ConfigError(f"{where}: datasets.{name}: no such metadata folder {data} (edit the path)")
    if config.check_images:
        _check_images(config)
    _check_labellings(config)
    _check_levels(config)


def _check_labellings(config: SweepConfig) -> None:
    """Every mixed labelling file of the config exists and is valid for its dataset's hierarchy
    (:func:`inatloc_nb.hierarchies.labelling.read_labelling`), checked once per dataset and file."""
    checked: set[tuple[str, Path]] = set()
    hierarchies: dict[str, object] = {}
    for spec in expand(config):
        if not is_mixed(spec.level) or (spec.dataset, labelling_path(spec.level)) in checked:
            continue
        path = labelling_path(spec.level)
        if not path.is_file():
            raise ConfigError(f"{config.path or '<config>'}: levels: no labelling file {path} "
                              f"for dataset {spec.dataset!r} (write it with inatloc-nb choose-levels)")
        if spec.dataset not in hierarchies:
            hierarchies[spec.dataset] = dataset_hierarchy(spec.data)
        try:
            read_labelling(path, hierarchies[spec.dataset])
        except LabellingError as exc:
            raise ConfigError(f"{config.path or '<config>'}: levels: the labelling for dataset {spec.dataset!r} "
                              f"is not valid: {exc}") from None
        checked.add((spec.dataset, path))


def dataset_hierarchy(data: str):
    """The taxonomy of a sweep data source (a metadata folder or ``synth:PRESET[:SEED]``, whose
    taxonomy is known without generating its images)."""
    if data.startswith("synth:"):
        from inatloc_nb.datasets.synth import PRESETS, SynthWorld
        from inatloc_nb.training.run_config import parse_synth_spec

        preset, seed = parse_synth_spec(data)
        return SynthWorld(PRESETS[preset], seed).hierarchy()
    from inatloc_nb.datasets.dataset import WSOLDataset

    return WSOLDataset.from_folder(data, allow_overlap=True).hierarchy


def dataset_levels(data: str) -> tuple[str, ...]:
    """The label levels of a sweep data source (a metadata folder or ``synth:PRESET``)."""
    if data.startswith("synth:"):
        from inatloc_nb.datasets.synth import LEVELS

        return tuple(LEVELS)
    from inatloc_nb.datasets.dataset import WSOLDataset

    return WSOLDataset.from_folder(data, allow_overlap=True).levels


def _check_levels(config: SweepConfig) -> None:
    """Every named level a grid lists exists in every dataset of the config (``cK``, K steps
    above the leaves, exists in every hierarchy; mixed labellings are checked on their own)."""
    where = config.path or "<config>"
    for name, data in config.datasets.items():
        levels = dataset_levels(data)
        for grid in config.grids:
            unknown = [lv for lv in grid.axes["level"]
                       if parse_level(lv).kind == "name" and lv not in levels]
            if unknown:
                raise ConfigError(f"{where}: grid {grid.name!r}: levels: {', '.join(map(repr, unknown))} not in "
                                  f"dataset {name!r} (its levels: {', '.join(levels)})")


def _check_images(config: SweepConfig) -> None:
    """``check_data: true``: decode every image of every dataset folder (:mod:`inatloc_nb.datasets.check`)."""
    from inatloc_nb.datasets.check import check_dataset

    for name, data in config.datasets.items():
        if data.startswith("synth:"):
            continue
        report = check_dataset(data)
        if not report.ok:
            shown = "; ".join(f"{p.kind}: {p.detail}" for p in report.first(2)[:4])
            raise ConfigError(f"{config.path or '<config>'}: datasets.{name}: {len(report.problems)} problems in "
                              f"{data} (inatloc-nb check {data} lists them): {shown}")


def plan(config: SweepConfig, results_dir: str | Path) -> list[tuple[RunSpec, bool]]:
    """Every run of the sweep with whether it is already finished (for ``--dry-run``); the
    config's data and levels are checked first, as :func:`run_sweep` does."""
    check_data(config)
    return [(spec, is_finished(results_dir, spec.run_id)) for spec in expand(config)]
