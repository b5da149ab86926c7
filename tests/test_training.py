"""The training core on the tiny synthetic world: learner, schedules, seeding, CAMs, runs, CLI."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import polars as pl
import pytest
import torch
from fastai.callback.core import Callback

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.cam import CamSet, evaluation_maps, extract_cams
from inatloc_nb.training.learner import (
    Schedule, build_learner, history_rows, is_classifier_param, labelled_items, param_groups, train,
)
from inatloc_nb.runs.run import run_experiment
from inatloc_nb.runs.run_model import load_run_model
from inatloc_nb.training.run_config import RunConfig, synth_folder

LEVEL = "genus"
FAST = dict(backbone="tinycnn", pretrained=False, image_size=32, batch_size=16, num_workers=0)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


class GroupLRs(Callback):
    """Records every parameter group's LR at each training batch."""

    def before_fit(self):
        self.lrs = []

    def before_batch(self):
        if self.training:
            self.lrs.append((self.epoch, [h["lr"] for h in self.opt.hypers]))


def _fit(dataset, seed=0, lr=0.01):
    learn = build_learner(dataset, RunConfig(
        data="synth:tiny", level=LEVEL, lr=lr, seed=seed, schedule="2epoch", **FAST))
    probe = GroupLRs()
    with learn.no_bar():
        train(learn.add_cb(probe))
    return learn, probe


@pytest.fixture(scope="module")
def fitted(tiny_dataset):
    return _fit(tiny_dataset)


def test_schedules_step_the_lr_by_epoch():
    assert [Schedule.parse("2epoch").factor(e) for e in range(2)] == [1, 0.1]
    ten = [Schedule.parse("10epoch").factor(e) for e in range(10)]
    np.testing.assert_allclose(ten, [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001, 0.001])
    text = [Schedule.parse("10epoch", lr_decay="text").factor(e) for e in range(10)]
    np.testing.assert_allclose(text, [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.001])
    assert Schedule.parse(4) == Schedule(4, (2,))
    assert Schedule.parse("paper") == Schedule.parse("2epoch")
    for bad in ("3epochs", 0):
        with pytest.raises(InatlocError):
            Schedule.parse(bad)


@pytest.mark.slow
def test_fast_group_gets_ten_times_the_lr(fitted):
    learn, probe = fitted
    model = learn.model
    backbone, head = param_groups(model)
    fast = [*model.features[-1].parameters(), *model.classifier.parameters()]
    assert {id(p) for p in head} == {id(p) for p in fast}
    assert len(backbone) == len(list(model.features[:-1].parameters()))
    _, classifier_only = param_groups(model, lr_groups="classifier")
    assert {id(p) for p in classifier_only} == {id(p) for p in model.classifier.parameters()}
    assert is_classifier_param("classifier_b.0.weight") and not is_classifier_param("features.0.0.weight")
    per_epoch = {epoch: lrs for epoch, lrs in probe.lrs}
    np.testing.assert_allclose(per_epoch[0], [0.01, 0.1])
    np.testing.assert_allclose(per_epoch[1], [0.001, 0.01])
    assert len(probe.lrs) == 2 * len(learn.dls.train)
    opt = learn.opt.opt  # the wrapped torch optimiser
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["nesterov"] and g["momentum"] == 0.9 and g["weight_decay"] == 1e-5 for g in opt.param_groups)


@pytest.mark.slow
def test_history_has_one_row_per_epoch(fitted):
    rows = history_rows(fitted[0])
    assert [r["epoch"] for r in rows] == [0, 1]
    assert set(rows[0]) == {"epoch", "train_loss", "train_accuracy", "valid_loss", "valid_accuracy"}
    assert all(np.isfinite(v) for r in rows for v in r.values())


@pytest.mark.slow
def test_same_seed_gives_identical_weights(tiny_dataset, fitted):
    again, _ = _fit(tiny_dataset, seed=0)
    other, _ = _fit(tiny_dataset, seed=1)
    reference = fitted[0].model.state_dict()
    for name, value in again.model.state_dict().items():
        assert torch.equal(value, reference[name]), name
    assert not torch.equal(other.model.classifier.weight, fitted[0].model.classifier.weight)


def test_per_class_subsample_is_recorded(tiny_dataset):
    learn = build_learner(tiny_dataset, RunConfig(data="synth:tiny", level=LEVEL, per_class=3, seed=2, **FAST))
    n_genera = len(tiny_dataset.class_names(LEVEL))
    assert len(learn.train_ids) == len(learn.dls.train_ds) == 3 * n_genera
    assert learn.train_ids == tiny_dataset.subsample("train", LEVEL, 3, 2)


@pytest.mark.slow
def test_cams_are_normalised_ground_truth_maps(tiny_dataset, fitted):
    learn = fitted[0]
    model = learn.model
    model.zero_grad(set_to_none=True)
    cams = extract_cams(learn, tiny_dataset, "test", LEVEL)
    n = tiny_dataset.images("test").height
    assert cams.raw.shape == (n, 8, 8) and cams.raw.dtype == np.float32  # tinycnn at 32 px: 8 x 8
    maps = cams.maps()
    assert maps.shape == (n, 224, 224) and maps.dtype == np.float64  # the reference normalises in float64
    np.testing.assert_array_equal(cams.labels, tiny_dataset.labels("test", LEVEL))
    np.testing.assert_array_equal(cams.cam_classes, cams.labels)
    assert cams.image_ids == tiny_dataset.images("test")["image_id"].to_list()
    assert np.all(maps.min(axis=(1, 2)) == 0) and np.all(maps.max(axis=(1, 2)) == 1)
    assert all(p.grad is None for p in model.parameters()) and torch.is_grad_enabled()
    assert cams.top1 == pytest.approx(100 * np.mean(cams.predictions == cams.labels))

    # The same maps computed by hand from the evaluation batch.
    xb, yb = learn.dls.test_dl(labelled_items(tiny_dataset, "test", LEVEL)[:4], with_labels=True).one_batch()
    with torch.no_grad():
        model.eval()
        x = xb.as_subclass(torch.Tensor)
        raw = model.class_activation_maps(model.feature_maps(x), yb.as_subclass(torch.Tensor))
        logits = model(x)
    np.testing.assert_allclose(cams.raw[:4], raw.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(maps[:4], evaluation_maps(raw), atol=1e-5)
    np.testing.assert_array_equal(cams.predictions[:4], logits.argmax(1).numpy())

    top1 = extract_cams(model, tiny_dataset, "test", LEVEL, target="top1", image_size=32, num_workers=0)
    np.testing.assert_array_equal(top1.cam_classes, cams.predictions)
    fixed = extract_cams(learn, tiny_dataset, "test", LEVEL, target=np.zeros(n, dtype=int))
    assert np.all(fixed.cam_classes == 0)
    with pytest.raises(InatlocError, match="shape"):
        extract_cams(learn, tiny_dataset, "test", LEVEL, target=[0, 1])


@pytest.mark.slow
def test_camset_round_trip(tmp_path, tiny_dataset, fitted):
    cams = extract_cams(fitted[0], tiny_dataset, "val", LEVEL)
    path = cams.save(tmp_path / "cams" / "val.npz")
    loaded = CamSet.load(path)
    assert (loaded.split, loaded.level, loaded.image_ids) == ("val", LEVEL, cams.image_ids)
    for name in ("raw", "labels", "cam_classes", "predictions", "top1_logits"):
        np.testing.assert_array_equal(np.asarray(getattr(loaded, name)), getattr(cams, name))
    np.testing.assert_array_equal(loaded.maps(), cams.maps())
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InatlocError, match="bad.npz"):
        CamSet.load(tmp_path / "bad.npz")


def _config(data, **kw):
    return RunConfig(data=str(data), level=LEVEL, lr=0.01, schedule=1, **FAST, **kw)


@pytest.mark.slow
def test_run_experiment_writes_a_complete_run_folder(tmp_path, tiny_dataset_dir, tiny_dataset):
    out = tmp_path / "run"
    metrics = run_experiment(_config(tiny_dataset_dir), out, say=lambda _: None)
    for name in ("params.json", "model.pth", "cams/val.npz", "cams/test.npz", "metrics.json",
                 "analysis.parquet", "history.csv", "timings.json"):
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*.tmp"))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    keys = {"maxboxacc_v2", "per_iou", "optimal_threshold", "top1", "n_images"}
    assert keys <= set(on_disk) and keys <= set(on_disk["val"])
    assert set(on_disk["per_iou"]) == {"30", "50", "70"}
    assert on_disk["maxboxacc_v2"] == pytest.approx(np.mean(list(on_disk["per_iou"].values())))
    assert (on_disk["level"], on_disk["method"], on_disk["lr"], on_disk["seed"]) == (LEVEL, "cam", 0.01, 0)
    assert on_disk["per_class"] is None
    assert on_disk["n_train_images"] == tiny_dataset.images("train").height
    assert on_disk["n_images"] == tiny_dataset.images("test").height

    analysis = pl.read_parquet(out / "analysis.parquet")
    assert analysis.columns == ["image_id", "split", "box_area_ratio", "gt_activation_ratio", "n_components"]
    assert analysis.height == tiny_dataset.images("val").height + tiny_dataset.images("test").height
    history = pl.read_csv(out / "history.csv")
    assert history.height == 1 and "valid_accuracy" in history.columns
    timings = json.loads((out / "timings.json").read_text())
    assert timings["train_images_per_s"] > 0 and timings["cam_test_images_per_s"] > 0
    params = json.loads((out / "params.json").read_text())
    assert RunConfig.from_dict(params["config"]) == _config(tiny_dataset_dir)

    # model.pth rebuilds the trained model: it reproduces the stored test predictions.
    model, config, _ = load_run_model(out, device="cpu")
    assert config.level == LEVEL
    again = extract_cams(model, tiny_dataset, "test", LEVEL, image_size=32, num_workers=0)
    np.testing.assert_array_equal(again.predictions, CamSet.load(out / "cams" / "test.npz").predictions)


def test_run_config_round_trip_and_errors(tmp_path):
    config = RunConfig(data="synth:tiny", level="order", method="has", method_params={"drop_rate": 0.2}, seed=3)
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(InatlocError, match="unknown run parameter.*epochz"):
        RunConfig.from_dict({"data": "x", "epochz": 3})
    unresolved = RunConfig(data="x", lr=None)  # e.g. a sweep run whose lr is still to be selected
    with pytest.raises(InatlocError, match="needs a learning rate"):
        run_experiment(unresolved, tmp_path / "run")
    assert RunConfig(data="x", method="center", lr=None).lr is None
    with pytest.raises(InatlocError, match="neither a metadata folder"):
        run_experiment(RunConfig(data=str(tmp_path / "nowhere")), tmp_path / "run")


def test_synthetic_data_is_generated_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INATLOC_NB_CACHE", str(tmp_path))
    folder = synth_folder("synth:tiny:5")
    assert folder == tmp_path / "synth" / "tiny-seed5"
    stamp = (folder / "synth_config.json").stat().st_mtime_ns
    assert synth_folder("synth:tiny:5") == folder
    assert (folder / "synth_config.json").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "synth").iterdir()] == ["tiny-seed5"]


@pytest.mark.slow
def test_cli_train_prints_metrics(tmp_path, tiny_dataset_dir, capsys):
    from inatloc_nb.cli import main

    out = tmp_path / "cli-run"
    args = ["train", "--data", str(tiny_dataset_dir), "--level", LEVEL, "--lr", "0.01", "--epochs", "1",
            "--backbone", "tinycnn", "--no-pretrained", "--image-size", "32", "--batch-size", "16",
            "--num-workers", "0", "--per-class", "4", "--seed", "1", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "D_test: MaxBoxAccV2" in printed and "D_f: MaxBoxAccV2" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["per_class"], metrics["seed"]) == (4, 1)
    params = json.loads((out / "params.json").read_text())
    assert len(params["train_image_ids"]) == metrics["n_train_images"]

    bad = ["train", "--data", str(tiny_dataset_dir), "--level", "tribe", "--lr", "0.1",
           "--backbone", "tinycnn", "--no-pretrained", "--out", str(tmp_path / "bad")]
    assert main(bad) == 2
    assert "tribe" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_trains_multihead(tmp_path, tiny_dataset_dir, capsys):
    """The command line offers the method registry's methods: multihead trains end to end."""
    from inatloc_nb.cli import main

    out = tmp_path / "multihead"
    args = ["train", "--data", str(tiny_dataset_dir), "--level", LEVEL, "--method", "multihead", "--lr", "0.01",
            "--epochs", "1", "--backbone", "tinycnn", "--no-pretrained", "--image-size", "32", "--batch-size", "16",
            "--num-workers", "0", "--device", "cpu", "--out", str(out)]
    assert main(args) == 0
    assert "D_test: MaxBoxAccV2" in capsys.readouterr().out
    assert RunConfig.from_json(out / "params.json").method == "multihead"
    assert json.loads((out / "metrics.json").read_text())["method"] == "multihead"


def test_command_line_offers_every_run_parameter_with_its_default():
    import argparse

    from inatloc_nb.cli.run_options import add_run_options, config_fields

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    fields = config_fields(parser.parse_args(["--data", "synth:tiny", "--out", "x"]))
    assert set(fields) == {f.name for f in dataclasses.fields(RunConfig)}
    assert RunConfig(**fields) == RunConfig(data="synth:tiny")
    chosen = config_fields(parser.parse_args(["--data", "synth:tiny", "--out", "x", "--param", "drop_rate=0.2",
                                              "--eval-splits", "test", "--no-pretrained", "--epochs", "3"]))
    config = RunConfig(**chosen)
    assert (config.method_params, config.eval_splits, config.pretrained, config.schedule) == (
        {"drop_rate": 0.2}, ("test",), False, 3)
    with pytest.raises(SystemExit):  # argparse: not a registered method
        parser.parse_args(["--data", "synth:tiny", "--out", "x", "--method", "vgg-cam"])


def test_one_default_learning_rate():
    """The notebook's parameters and the sweep take RunConfig's defaults; none spells its own lr."""
    import nbformat

    from inatloc_nb.sweep import default_notebook

    nb = nbformat.read(default_notebook(), as_version=4)
    (cell,) = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    namespace: dict = {}
    exec(cell.source, namespace)
    assert set(namespace) - {"__builtins__"} == {"config", "out_dir"} and "lr" not in namespace["config"]
    assert RunConfig.from_dict(namespace["config"]).lr == RunConfig(data="x").lr == 1e-3


@pytest.mark.slow
def test_cli_train_logs_one_line_per_epoch_when_not_a_terminal(tmp_path, tiny_dataset_dir, capfd, monkeypatch):
    """Output going to a file or pipe gets lines, not bar redraws (captured at the file descriptors)."""
    import re

    from inatloc_nb.cli import main
    from inatloc_nb.core.env import PROGRESS_ENV

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    args = ["train", "--data", str(tiny_dataset_dir), "--level", LEVEL, "--lr", "0.01", "--epochs", "2",
            "--backbone", "tinycnn", "--no-pretrained", "--image-size", "32", "--batch-size", "16",
            "--num-workers", "0", "--device", "cpu", "--select-epoch", "best", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    captured = capfd.readouterr()
    both = captured.out + captured.err
    assert "\r" not in both and "█" not in both and "|" not in both
    number = r"\d+\.\d+"
    epoch_line = re.compile(
        rf"^epoch (\d)/2  train_loss {number}  train_accuracy {number}  valid_loss {number}  "
        rf"valid_accuracy {number}  D_f MaxBoxAccV2 {number}  D_f top-1 {number}  time \d+:\d\d$")
    epochs = [int(m.group(1)) for m in map(epoch_line.match, captured.out.splitlines()) if m]
    assert epochs == [1, 2]
    assert re.search(rf"^epoch 0/2  D_f MaxBoxAccV2 {number}", captured.out, re.M)  # the untrained model
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    scores = [float(s) for s in re.findall(rf"D_f MaxBoxAccV2 ({number})", captured.out)]
    assert scores == pytest.approx(metrics["val_maxboxacc_v2_per_epoch"], abs=0.051)
    # one line for the test split's CAM pass (D_f's passes are reported on the epoch lines)
    assert re.findall(r"^CAMs of (\w+): 16 img in \d+:\d\d", captured.err + captured.out, re.M) == ["test"]


@pytest.mark.slow
def test_cam_extraction_progress_switch(tiny_dataset, fitted, capfd):
    learn = fitted[0]
    extract_cams(learn, tiny_dataset, "val", LEVEL, progress=False)
    assert capfd.readouterr() == ("", "")
    extract_cams(learn, tiny_dataset, "val", LEVEL)  # not a terminal: one line
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and err.startswith("CAMs of val: 16 img in ") and "\r" not in err
