"""inatloc-nb: label granularity and weakly supervised object localization.

What notebooks and users reach for, from one place::

    from inatloc_nb import RunConfig, load_dataset, run_experiment, plots

Every name is imported on first use (a module-level ``__getattr__``), so ``import inatloc_nb``
loads neither torch nor fastai. :data:`EXPORTS` says where each name lives; the library's own
modules import from there, never through this facade.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: Public name -> the module defining it (a module exported whole maps to itself).
EXPORTS: dict[str, str] = {
    # datasets and hierarchies
    "WSOLDataset": "inatloc_nb.datasets.dataset",
    "load_shipped": "inatloc_nb.datasets.dataset",
    "Hierarchy": "inatloc_nb.hierarchies.taxonomy",
    "level_statistics": "inatloc_nb.hierarchies.level_stats",
    "generate": "inatloc_nb.datasets.synth",
    # one run
    "RunConfig": "inatloc_nb.training.run_config",
    "load_dataset": "inatloc_nb.training.run_config",
    "run_experiment": "inatloc_nb.runs.run",
    "load_run_model": "inatloc_nb.runs.run_model",
    # CAMs and metrics
    "CamSet": "inatloc_nb.training.cam",
    "extract_cams": "inatloc_nb.training.cam",
    "score_cams": "inatloc_nb.training.cam",
    "BoxAccuracy": "inatloc_nb.metrics",
    "binarize": "inatloc_nb.metrics.scoremaps",
    "contour_boxes": "inatloc_nb.metrics.boxacc",
    "multiple_iou": "inatloc_nb.metrics.boxacc",
    # results, figures, explorers
    "results": "inatloc_nb.runs.results",
    "report": "inatloc_nb.reports.report",
    "plots": "inatloc_nb.reports.plots",
    "chart_display": "inatloc_nb.reports.chart_display",
    "LevelRuns": "inatloc_nb.reports.widgets",
    "FragmentationExplorer": "inatloc_nb.reports.widgets",
    "BoxSizeExplorer": "inatloc_nb.reports.widgets",
    "PairedBootstrap": "inatloc_nb.granularity.intervals",
    # errors
    "InatlocError": "inatloc_nb.core.errors",
}

__all__ = ["__version__", *EXPORTS]


def __getattr__(name: str) -> object:
    """Import ``name`` from its module on first use and keep it in the package namespace."""
    try:
        module_name = EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'inatloc_nb' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if module_name.rpartition(".")[2] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *EXPORTS})
