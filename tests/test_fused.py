"""Fused learning-rate runs: the same per-run metrics and weights as separate runs, each run's
own random stream, failures isolated, and the sweep's grouping."""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs import fused
from inatloc_nb.runs.run import run_experiment
from inatloc_nb.sweep import RunSpec, SweepConfig, fused_groups
from inatloc_nb.training.run_config import RunConfig

FAST = dict(backbone="tinycnn", pretrained=False, image_size=32, batch_size=16, num_workers=0)
LRS = (0.01, 0.1)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _configs(data: Path, method: str) -> list[RunConfig]:
    return [RunConfig(data=str(data), level="genus", method=method, lr=lr, schedule=2, **FAST) for lr in LRS]


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}{i}.").items()}
    return {prefix: value}


def _assert_same_run(a: Path, b: Path) -> None:
    metrics_a, metrics_b = (_flat(json.loads((p / "metrics.json").read_text())) for p in (a, b))
    assert metrics_a == pytest.approx(metrics_b, abs=1e-6)
    wa, wb = torch.load(a / "model.pth"), torch.load(b / "model.pth")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key].float(), wb[key].float(), atol=1e-5, rtol=0)
    assert (a / "history.csv").read_text() == (b / "history.csv").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["cam", "has"])  # HaS draws its hidden patches at training time
def test_fused_runs_match_separate_runs(tmp_path: Path, tiny_dataset_dir: Path, method: str) -> None:
    configs = _configs(tiny_dataset_dir, method)
    for config in configs:
        run_experiment(config, tmp_path / f"alone-{config.lr}", say=lambda _: None)
    outcomes = fused.run_fused(configs, [tmp_path / f"fused-{c.lr}" for c in configs], say=lambda _: None)
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    for config in configs:
        _assert_same_run(tmp_path / f"alone-{config.lr}", tmp_path / f"fused-{config.lr}")
    # a finished folder of the same config is returned as it is, not trained again
    again = run_experiment(configs[0], tmp_path / f"fused-{configs[0].lr}", say=lambda _: None)
    assert again == json.loads((tmp_path / f"fused-{configs[0].lr}" / "metrics.json").read_text())


@pytest.mark.slow
def test_a_failing_fused_run_leaves_the_others(tmp_path: Path, tiny_dataset_dir: Path) -> None:
    configs = _configs(tiny_dataset_dir, "cam")
    run_experiment(configs[1], tmp_path / "alone", say=lambda _: None)

    def say(message: str) -> None:
        if message.startswith(f"[lr {LRS[0]:g}] extracting CAMs of test"):
            raise RuntimeError("disk full")

    outcomes = fused.run_fused(configs, [tmp_path / "a", tmp_path / "b"], say=say)
    assert isinstance(outcomes[0], RuntimeError) and not (tmp_path / "a" / "metrics.json").exists()
    _assert_same_run(tmp_path / "alone", tmp_path / "b")


def test_lockstep_keeps_each_stream_and_refuses_diverging_draws() -> None:
    def job(extra: int):
        def work():
            seen = []
            for step in range(3):
                random.random()  # each job's own draw
                if step == 1:
                    for _ in range(extra):
                        random.random()
                seen.append(fused.shared("batch", lambda: random.random()))
                fused.active().yield_turn()
            return seen, random.random()
        return work

    same = fused.run_lockstep([job(0), job(0)], ["a", "b"])
    assert same[0] == same[1]

    def aside(pause: float):
        def work():
            seen = []
            for step in range(3):
                seen.append(fused.shared("batch", lambda: random.random()))
                fused.active().yield_turn()
                with fused.step_aside():  # the others go on meanwhile; the stream is kept
                    time.sleep(pause)
                seen.append(random.random())
            return seen
        return work

    stepped = fused.run_lockstep([aside(0.05), aside(0.0), aside(0.01)], ["a", "b", "c"])
    assert stepped[0] == stepped[1] == stepped[2]
    random.seed(0)
    diverging = fused.run_lockstep([job(0), job(1)], ["a", "b"])
    assert isinstance(diverging[1], fused.FusedDivergence) and "run b" in str(diverging[1])
    assert isinstance(diverging[0], tuple)


def test_only_lr_may_differ(tmp_path: Path) -> None:
    a = RunConfig(data="synth:tiny", lr=0.1, **FAST)
    with pytest.raises(InatlocError, match="differ only in their learning rate"):
        fused.check_fusable([a, RunConfig(data="synth:tiny", lr=0.01, seed=1, **FAST)])
    with pytest.raises(InatlocError, match="distinct"):
        fused.check_fusable([a, a])
    with pytest.raises(InatlocError, match="baseline"):
        fused.check_fusable([RunConfig(data="synth:tiny", method="center", lr=None)])


def test_sweep_groups_runs_by_everything_but_lr() -> None:
    config = SweepConfig.from_dict({"name": "t", "datasets": {"toy": "synth:tiny"}, "levels": ["species", "genus"],
                                    "methods": ["cam", "has"], "lrs": [0.01, 0.1, 1.0], "baselines": ["center"],
                                    "fuse_lrs": True})
    from inatloc_nb.sweep import expand

    groups = fused_groups(expand(config))
    assert config.fuse_lrs is True
    assert sorted(len(g) for g in groups) == [1, 3, 3, 3, 3]
    for group in groups:
        assert len({(s.level, s.method, s.seed) for s in group}) == 1
        assert all(isinstance(s, RunSpec) for s in group)
    with pytest.raises(InatlocError, match="fuse_lrs"):
        SweepConfig.from_dict({"name": "t", "datasets": {"toy": "synth:tiny"}, "levels": ["genus"],
                               "methods": ["cam"], "lrs": [0.1], "fuse_lrs": "yes"})


@pytest.mark.slow
def test_fused_sweep_matches_unfused_sweep(tmp_path: Path, tiny_dataset_dir: Path) -> None:
    """Through the real training notebook: per-run folders, records and results as unfused."""
    from inatloc_nb import sweep

    raw = {"name": "t", "datasets": {"toy": str(tiny_dataset_dir)}, "levels": ["genus"], "methods": ["has"],
           "lrs": list(LRS), "schedule": 2, "backbone": "tinycnn", "pretrained": False, "image_size": 32,
           "batch_size": 16}
    config = SweepConfig.from_dict(raw)
    alone = sweep.run_sweep(config, tmp_path / "alone", fuse_lrs=False, progress=False)
    together = sweep.run_sweep(config, tmp_path / "fused", fuse_lrs=True, progress=False)
    assert not alone.failed and not together.failed and sorted(alone.done) == sorted(together.done)
    for run_id in alone.done:
        a, b = tmp_path / "alone" / "runs" / run_id, tmp_path / "fused" / "runs" / run_id
        _assert_same_run(a, b)
        record = json.loads((b / "run.json").read_text())
        assert record["status"] == "ok" and len(record["fused_with"]) == 1
        assert (b / "02_train_wsol.ipynb").is_file() and (b / "fused.log").is_file()
