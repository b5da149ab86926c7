"""Shared fixtures: the ``tiny`` synthetic dataset, generated once per test session; a closing
line when browser tests were skipped."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keep numerical libraries to two threads and plotting off-screen."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "2")
    os.environ.setdefault("MPLBACKEND", "Agg")


#: The closing line about skipped browser tests, written after pytest's own last line.
BROWSER_NOTE = pytest.StashKey[str]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Note when browser tests were skipped, and why: the run did not test everything the suite
    lists (``make test`` installs Chromium where it can)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "browser" in getattr(r, "keywords", {})]
    if skipped:
        reasons = sorted({str(r.longrepr[2]).removeprefix("Skipped: ") if isinstance(r.longrepr, tuple)
                          else "skipped" for r in skipped})
        config.stash[BROWSER_NOTE] = (
            f"BROWSER TESTS NOT RUN: {len(skipped)} skipped ({'; '.join(reasons)}); `make test` installs "
            "Debian's chromium when run as root with apt-get, or install Chromium and rerun")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Write the browser note as the run's last line."""
    note, reporter = config.stash.get(BROWSER_NOTE, None), config.pluginmanager.get_plugin("terminalreporter")
    if note and reporter is not None:
        reporter.write_line(note, yellow=True, bold=True)


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated ``synth:PRESET`` data goes to a session folder, not the user's cache
    (set in the environment, so notebook kernels and sweep workers inherit it)."""
    folder = tmp_path_factory.mktemp("cache")
    os.environ["INATLOC_NB_CACHE"] = str(folder)
    return folder


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny models train faster on one thread (no OpenMP synchronisation); restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` synthetic preset generated with seed 0 (read-only: do not modify)."""
    from inatloc_nb.datasets.synth import generate

    return generate("tiny", seed=0, out=tmp_path_factory.mktemp("synth") / "tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_dataset_dir: Path):
    """``tiny_dataset_dir`` loaded as a :class:`inatloc_nb.datasets.dataset.WSOLDataset`."""
    from inatloc_nb.datasets.dataset import WSOLDataset

    return WSOLDataset.from_folder(tiny_dataset_dir, image_root=tiny_dataset_dir / "images")
