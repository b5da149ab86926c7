"""ipywidgets explorers of a results folder: activation fragmentation and box-size ratios."""
from inatloc_nb.reports.widgets.box_size import BoxSizeExplorer
from inatloc_nb.reports.widgets.fragmentation import FragmentationExplorer
from inatloc_nb.reports.widgets.runs import LevelRuns, LevelView

__all__ = ["BoxSizeExplorer", "FragmentationExplorer", "LevelRuns", "LevelView"]
