"""Several runs per GPU in a sweep: slot assignment, the free-memory check, the per-run share
of the cores, the config key and the CLI option (with fake GPU lists; no GPU needed)."""
from __future__ import annotations

import os
import queue

import pytest

from inatloc_nb import sweep
from inatloc_nb.cli import build_parser
from inatloc_nb.core.env import LOADER_WORKERS_ENV, PREPARED_ENV
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.sweep import ConfigError, SweepConfig
from inatloc_nb.training import pipeline

GIB = 2**30
BASE = {"name": "t", "datasets": {"toy": "synth:tiny"}, "levels": ["species"], "lrs": [0.01],
        "backbone": "tinycnn", "pretrained": False, "image_size": 32}


def test_gpu_slots_put_k_runs_on_every_gpu():
    assert sweep.gpu_slots(["3", "5"], 6) == ["3", "5", "3", "5", "3", "5"]
    assert sweep.gpu_slots(["0"], 3) == ["0", "0", "0"]
    assert sweep.gpu_slots([], 4) == []


def test_fit_runs_per_gpu_lowers_or_refuses():
    said = []
    assert sweep.fit_runs_per_gpu(3, {"0": 80 * GIB, "1": 80 * GIB}, 16, said.append) == 3
    assert said == []
    assert sweep.fit_runs_per_gpu(4, {"0": 130 * GIB, "1": 40 * GIB}, 16, said.append) == 2
    assert "lowered to 2" in said[0] and "GPU 1" in said[0]
    with pytest.raises(InatlocError, match="GPU 0 has 8.0 GiB free"):
        sweep.fit_runs_per_gpu(2, {"0": 8 * GIB}, 16, said.append)


def test_pinned_workers_get_a_gpu_and_their_share_of_cores(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(LOADER_WORKERS_ENV, raising=False)
    slots = queue.Queue()
    for gpu in sweep.gpu_slots(["3", "5"], 4):
        slots.put(gpu)
    seen = []
    for _ in range(4):
        sweep.executors._pin_gpu(slots, pipeline.workers_per_run(16, 4))
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
        assert pipeline.default_num_workers("cpu") == 4  # the env var wins over the device default
    assert sorted(seen) == ["3", "3", "5", "5"]

    class Worker:
        name = "3"

    assert sweep.executors._pin_dask_worker_gpu(["0", "1"], 2, dask_worker=Worker()) == "1"
    assert os.environ[LOADER_WORKERS_ENV] == "2"


def test_runs_per_gpu_config_key_and_cli():
    assert SweepConfig.from_dict(BASE).runs_per_gpu == 1
    config = SweepConfig.from_dict({**BASE, "runs_per_gpu": 3, "gpu_memory_per_run_gb": 12})
    assert (config.runs_per_gpu, config.gpu_memory_per_run_gb) == (3, 12.0)
    for bad in ({"runs_per_gpu": 0}, {"runs_per_gpu": "two"}, {"gpu_memory_per_run_gb": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            SweepConfig.from_dict({**BASE, **bad})
    args = build_parser().parse_args(["sweep", "c.yaml", "--runs-per-gpu", "4"])
    assert args.runs_per_gpu == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "c.yaml", "--runs-per-gpu", "0"])


def test_run_sweep_packs_runs_on_fake_gpus(monkeypatch, tmp_path):
    """run_sweep sizes the pool from the fake GPUs, their free memory and the cores."""
    monkeypatch.setattr(sweep.executors, "visible_gpus", lambda: ["3", "5"])
    monkeypatch.setattr(sweep.executors, "free_gpu_memory", lambda gpus: {"3": 70 * GIB, "5": 40 * GIB})
    monkeypatch.setattr(pipeline, "available_cores", lambda: 16)
    pools = []

    class FakePool:
        def __init__(self, parallel, gpus, loader_workers):
            pools.append((parallel, sweep.gpu_slots(gpus, parallel), loader_workers))

        def __enter__(self):
            raise RuntimeError("stop before running")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(sweep.executors, "_local_pool", FakePool)
    config = SweepConfig.from_dict({**BASE, "lrs": [0.01, 0.1], "runs_per_gpu": 4, "gpu_memory_per_run_gb": 16,
                                    "fuse_lrs": False})
    with pytest.raises(RuntimeError, match="stop before running"):
        sweep.run_sweep(config, tmp_path / "out", progress=False)
    assert pools == [(4, ["3", "5", "3", "5"], 4)]  # GPU 5 holds two 16 GiB runs: 2 per GPU, 16 cores / 4
    with pytest.raises(RuntimeError):
        sweep.run_sweep(config, tmp_path / "out", progress=False, runs_per_gpu=1)
    assert pools[-1] == (2, ["3", "5"], 8)


def test_sweep_prepared_cache_reaches_the_runs(monkeypatch, tmp_path, tiny_dataset_dir):
    """``prepared:`` is resolved next to the YAML file, set as $INATLOC_NB_PREPARED while the
    pool runs (and restored), and read by ``run_experiment`` when the run config has none."""
    import yaml

    from inatloc_nb.runs.run import run_experiment
    from inatloc_nb.training.run_config import RunConfig

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**BASE, "prepared": "cache"}))
    config = SweepConfig.from_yaml(path)
    assert config.prepared == str((tmp_path / "cache").resolve())
    with pytest.raises(ConfigError, match="prepared"):
        SweepConfig.from_dict({**BASE, "prepared": 3})

    monkeypatch.delenv(PREPARED_ENV, raising=False)
    seen = []

    class FakePool:
        def __init__(self, *args):
            pass

        def __enter__(self):
            seen.append(os.environ.get(PREPARED_ENV))
            raise RuntimeError("stop before running")

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(sweep.executors, "_local_pool", FakePool)
    with pytest.raises(RuntimeError, match="stop before running"):
        sweep.run_sweep(config, tmp_path / "out", progress=False)
    assert seen == [config.prepared] and PREPARED_ENV not in os.environ

    monkeypatch.setenv(PREPARED_ENV, str(tmp_path / "empty-cache"))
    run = RunConfig(data=str(tiny_dataset_dir), level="genus", backbone="tinycnn", pretrained=False,
                    image_size=32, batch_size=8, num_workers=0, device="cpu")
    with pytest.raises(InatlocError, match="inatloc-nb prepare"):
        run_experiment(run, tmp_path / "run", say=lambda *_: None)
