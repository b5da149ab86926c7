"""ipywidgets explorers of a results folder: activation fragmentation and box-size ratios."""
from inatloc_nb.widgets.box_size import BoxSizeExplorer
from inatloc_nb.widgets.fragmentation import FragmentationExplorer
from inatloc_nb.widgets.runs import LevelRuns, LevelView

__all__ = ["BoxSizeExplorer", "FragmentationExplorer", "LevelRuns", "LevelView"]
