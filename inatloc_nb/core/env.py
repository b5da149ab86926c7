"""The environment variables the library reads, one name each.

Standard library only (nothing imported), so light modules such as the sweep's process
launchers set them without loading fastai or torch.
"""
from __future__ import annotations

#: Number of data-loading worker processes of each run (a sweep packing several runs on a
#: machine sets it in each run's process so the runs share the cores).
LOADER_WORKERS_ENV = "INATLOC_NB_LOADER_WORKERS"
#: Cache root of the prepared copies read by runs whose config names none (a sweep's
#: ``prepared:`` sets it for its runs).
PREPARED_ENV = "INATLOC_NB_PREPARED"
#: Progress display: ``auto``, ``bars`` or ``lines`` (``inatloc_nb.core.progress``).
PROGRESS_ENV = "INATLOC_NB_PROGRESS"
#: Folder of generated data (synthetic worlds); default ``~/.cache/inatloc-nb``.
CACHE_ENV = "INATLOC_NB_CACHE"
#: Folder of the shipped metadata tables; default the project's ``data/``.
DATA_ENV = "INATLOC_NB_DATA"

__all__ = ["CACHE_ENV", "DATA_ENV", "LOADER_WORKERS_ENV", "PREPARED_ENV", "PROGRESS_ENV"]
