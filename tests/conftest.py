"""Shared fixtures: the ``tiny`` synthetic dataset, generated once per test session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Keep numerical libraries to two threads and plotting off-screen."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "2")
    os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(scope="session")
def tiny_dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``tiny`` synthetic preset generated with seed 0 (read-only: do not modify)."""
    from inatloc_nb.synth import generate

    return generate("tiny", seed=0, out=tmp_path_factory.mktemp("synth") / "tiny", progress=False)


@pytest.fixture(scope="session")
def tiny_dataset(tiny_dataset_dir: Path):
    """``tiny_dataset_dir`` loaded as a :class:`inatloc_nb.data.WSOLDataset`."""
    from inatloc_nb.data import WSOLDataset

    return WSOLDataset.from_folder(tiny_dataset_dir, image_root=tiny_dataset_dir / "images")
