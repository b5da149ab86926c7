"""Bad input of every kind ends in one clear error naming the file (and line or id), never a traceback.

Each class of bad input is generated here: damaged images, out-of-range options, damaged run
files and results tables, bad sweep configurations, bad score-map files, leakage between
splits, whitespace around ids, and side effects (folders left behind, folder modes).
"""
from __future__ import annotations

import io as stdio
import json
import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from test_results import make_run

from inatloc_nb.cli import main
from inatloc_nb.core import atomic, validate
from inatloc_nb.core.errors import InatlocError, MetadataError, ScoreMapError
from inatloc_nb.datasets.images import ImageError, clear_worker_errors, open_image
from inatloc_nb.datasets.metadata import SplitMetadata, read_split
from inatloc_nb.runs import results
from inatloc_nb.runs.results import ResultsError

# --------------------------------------------------------------------------- images


def _jpeg_bytes() -> bytes:
    buf = stdio.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes() -> bytes:
    buf = stdio.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


BAD_IMAGES = {
    "missing": (None, "file not found"),
    "folder": ("dir", "is a folder"),
    "empty.jpg": (b"", "empty file"),
    "truncated.jpg": (_jpeg_bytes()[:300], "damaged or truncated"),
    "truncated.png": (_png_bytes()[:200], "damaged or truncated"),
    "text.jpg": (b"this is not an image\n", "not an image"),
    "loop.jpg": ("loop", "cannot access the file"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_open_image_names_id_and_path(tmp_path: Path, name: str) -> None:
    content, problem = BAD_IMAGES[name]
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content == "loop":  # a symbolic link to itself
        path.symlink_to(path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=problem) as info:
        open_image(path, f"train/{name}")
    assert f"'train/{name}'" in str(info.value) and str(path) in str(info.value)
    assert "inatloc-nb check" in str(info.value)


def test_open_image_reads_good_images(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(_png_bytes())
    im = open_image(tmp_path / "a.png", "a.png")
    assert im.mode == "RGB" and im.size == (40, 40)


class _Images:
    """A map-style dataset reading images with ``open_image`` (as the training loaders do)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(open_image(self.paths[i], self.paths[i].name))


def test_worker_process_errors_come_back_as_one_line(tmp_path: Path) -> None:
    import torch

    (tmp_path / "good.png").write_bytes(_png_bytes())
    (tmp_path / "bad.jpg").write_bytes(b"")
    loader = torch.utils.data.DataLoader(_Images([tmp_path / "good.png", tmp_path / "bad.jpg"]),
                                         batch_size=1, num_workers=1)
    with pytest.raises(ImageError) as info, clear_worker_errors():
        list(loader)
    message = str(info.value)
    assert message.startswith("image 'bad.jpg'") and "Traceback" not in message and "\n" not in message


def test_training_loader_names_the_damaged_image(tiny_dataset_dir: Path, tmp_path: Path) -> None:
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.learner import build_dataloaders

    images = tmp_path / "images"
    images.symlink_to(tiny_dataset_dir / "images")
    dataset = WSOLDataset.from_folder(tiny_dataset_dir, image_root=images)
    bad_id = dataset.images("val")["image_id"][3]
    shadow = tmp_path / "shadow"  # the same images with one val image truncated
    for image_id in dataset.images("val")["image_id"].to_list() + dataset.images("train")["image_id"].to_list():
        target = shadow / image_id
        target.parent.mkdir(parents=True, exist_ok=True)
        if image_id == bad_id:
            target.write_bytes((images / image_id).read_bytes()[:120])
        else:
            target.symlink_to(images / image_id)
    dataset.image_root = shadow
    dls = build_dataloaders(dataset, "genus", image_size=32, batch_size=8, device="cpu", num_workers=0)
    with pytest.raises(ImageError, match=f"image '{bad_id}' \\({shadow / bad_id}\\)"):
        for _ in dls.valid:
            pass


# --------------------------------------------------------------------------- numeric options

BAD_OPTIONS = [
    (["--lr", "0"], "--lr: expected a finite number > 0"),
    (["--lr=-1e-3"], "--lr: expected a finite number > 0"),
    (["--lr", "nan"], "--lr: expected a finite number > 0"),
    (["--lr", "inf"], "--lr: expected a finite number > 0"),
    (["--lr", "1", "--batch-size", "0"], "--batch-size: expected an integer in 1..65536"),
    (["--lr", "1", "--image-size", "0"], "--image-size: expected an integer in 16..4096"),
    (["--lr", "1", "--epochs", "0"], "--epochs: expected an integer >= 1"),
    (["--lr", "1", "--epochs=-2"], "--epochs: expected an integer >= 1"),
    (["--lr", "1", "--num-workers=-1"], "--num-workers: expected an integer in 0..1024"),
    (["--lr", "1", "--seed=-5"], "--seed: expected an integer in 0..4294967295"),
    (["--lr", "1", "--per-class", "0"], "--per-class: expected an integer >= 1"),
    (["--lr", "1", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["--lr", "1", "--batch-size", "many"], "--batch-size: expected an integer, got 'many'"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_OPTIONS)
def test_cli_refuses_out_of_range_options(extra: list[str], message: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--data", "synth:tiny", "--level", "genus", "--out", str(tmp_path / "run"), *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


BAD_FIELDS = [
    ({"lr": 0.0}, "RunConfig.lr: expected a finite number > 0"),
    ({"lr": float("nan")}, "RunConfig.lr"),
    ({"lr": True}, "RunConfig.lr"),
    ({"batch_size": 0}, "RunConfig.batch_size: expected an integer in 1..65536"),
    ({"batch_size": 2.5}, "RunConfig.batch_size: expected an integer"),
    ({"image_size": 0}, "RunConfig.image_size: expected an integer in 16..4096"),
    ({"schedule": 0}, "RunConfig.schedule (epochs): expected an integer >= 1"),
    ({"schedule": "weekly"}, "RunConfig.schedule: expected 2epoch, paper, 10epoch"),
    ({"seed": -1}, "RunConfig.seed"),
    ({"num_workers": -1}, "RunConfig.num_workers"),
    ({"per_class": 0}, "RunConfig.per_class: expected an integer >= 1"),
    ({"device": "gpu0"}, "RunConfig.device: unknown device 'gpu0'"),
    ({"pretrained": "yes"}, "RunConfig.pretrained: expected true or false"),
    ({"level": ""}, "RunConfig.level: expected a non-empty string"),
]


@pytest.mark.parametrize(("change", "message"), BAD_FIELDS)
def test_run_config_checks_every_field(change: dict, message: str) -> None:
    from inatloc_nb.training.run_config import RunConfig

    with pytest.raises(InatlocError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        RunConfig(data="synth:tiny", **change)


def test_run_config_keeps_valid_values() -> None:
    from inatloc_nb.training.run_config import RunConfig

    config = RunConfig(data="synth:tiny", lr="1e-2", schedule="3", device=" cpu ")
    assert (config.lr, config.schedule, config.device) == (0.01, "3", "cpu")


def test_unavailable_cuda_device_is_refused(monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(InatlocError, match="'cuda:1' requested but this machine has no CUDA device"):
        validate.device_available("cuda:1", "--device")


def test_debug_flag_shows_the_traceback(tmp_path: Path, capsys) -> None:
    args = ["report", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no such results folder" in err and "Traceback" not in err
    with pytest.raises(ResultsError):
        main(["--debug", *args])
    with pytest.raises(ResultsError):
        main([*args, "--debug"])
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- damaged run files


@pytest.fixture
def trained_run(tmp_path: Path) -> Path:
    """A run folder as ``run_experiment`` writes it for a tinycnn CAM model (untrained weights)."""
    import torch

    from inatloc_nb.runs.run_model import build_model_for
    from inatloc_nb.training.run_config import RunConfig

    run = tmp_path / "run"
    run.mkdir()
    config = RunConfig(data="synth:tiny", backbone="tinycnn", pretrained=False, image_size=32)
    model, _ = build_model_for(config, 4)
    torch.save(model.state_dict(), run / "model.pth")
    (run / "params.json").write_text(json.dumps({"config": config.to_dict(), "n_classes": 4}))
    return run


def test_finished_run_loads(trained_run: Path) -> None:
    from inatloc_nb.runs.run_model import load_run_model

    model, config, _ = load_run_model(trained_run, device="cpu")
    assert config.backbone == "tinycnn" and not model.training


@pytest.mark.parametrize("damage", ["truncate", "empty", "text", "missing"])
@pytest.mark.parametrize("name", ["model.pth", "params.json"])
def test_damaged_run_files_are_named_with_the_fix(trained_run: Path, name: str, damage: str) -> None:
    from inatloc_nb.runs.run_model import load_run_model

    path = trained_run / name
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes({"truncate": data[: len(data) // 2], "empty": b"", "text": b"[1, 2"}[damage])
    with pytest.raises(InatlocError, match=f"{path}:") as info:
        load_run_model(trained_run, device="cpu")
    if damage != "missing":
        assert f"delete the run folder {trained_run}" in str(info.value)


def test_params_of_another_kind_are_refused(trained_run: Path) -> None:
    from inatloc_nb.runs.run_model import load_run_model

    (trained_run / "params.json").write_text(json.dumps({"config": {"data": "x"}, "n_classes": 0}))
    with pytest.raises(InatlocError, match="params.json: not the parameters of a training run"):
        load_run_model(trained_run, device="cpu")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"not a zip at all"])
def test_damaged_cams_file_is_named(tmp_path: Path, content: bytes) -> None:
    from inatloc_nb.training.cam import CamSet

    path = tmp_path / "val.npz"
    path.write_bytes(content)
    with pytest.raises(InatlocError, match=str(path)):
        CamSet.load(path)


# --------------------------------------------------------------------------- results tables

DAMAGED_TABLES = {"empty": b"", "text": b"run_id,level\nx,y\n", "truncated": None}


@pytest.mark.parametrize("damage", sorted(DAMAGED_TABLES))
def test_damaged_run_table_is_named_or_skipped(tmp_path: Path, damage: str) -> None:
    make_run(tmp_path, "good")
    bad = make_run(tmp_path, "bad")
    table = results.write_run_results(bad)
    path = bad / results.RUN_TABLE
    content = DAMAGED_TABLES[damage]
    if content is None:
        buf = stdio.BytesIO()
        table.write_parquet(buf)
        content = buf.getvalue()[:-40]
    path.write_bytes(content)
    with pytest.raises(ResultsError, match=f"{path}: .*delete the run folder"):
        results.collect(tmp_path)
    problems: list[str] = []
    store = results.collect(tmp_path, problems)
    assert store["run_id"].unique().to_list() == ["good"]
    assert len(problems) == 1 and str(path) in problems[0]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_metrics_are_refused(tmp_path: Path, value: str) -> None:
    folder = make_run(tmp_path, "nan")
    text = (folder / "metrics.json").read_text()
    (folder / "metrics.json").write_text(text.replace('"maxboxacc_v2": 40.0', f'"maxboxacc_v2": {value}', 1))
    with pytest.raises(ResultsError, match="metrics.json: maxboxacc_v2: .* is not a finite number"):
        results.run_results(folder)


def test_non_finite_metrics_in_a_run_table_are_refused(tmp_path: Path) -> None:
    folder = make_run(tmp_path, "nan")
    table = results.run_results(folder).with_columns(maxboxacc_v2=pl.lit(float("nan")))
    table.write_parquet(folder / results.RUN_TABLE)
    with pytest.raises(ResultsError, match="results.parquet: run nan has NaN or infinite metrics"):
        results.collect(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe{", b"{\"run_id\": "])
def test_damaged_run_record_is_named(tmp_path: Path, content: bytes) -> None:
    folder = make_run(tmp_path, "r")
    (folder / results.RUN_RECORD).write_bytes(content)
    with pytest.raises(ResultsError, match=f"{folder / results.RUN_RECORD}"):
        results.run_results(folder)


def test_damaged_store_is_named(tmp_path: Path) -> None:
    (tmp_path / results.STORE_NAME).write_bytes(b"PAR1")
    with pytest.raises(ResultsError, match=f"{tmp_path / results.STORE_NAME}: not a readable parquet"):
        results.load(tmp_path)


def test_report_lists_skipped_runs_and_uses_the_sweep_name(tmp_path: Path, monkeypatch) -> None:
    from inatloc_nb.reports import report
    from inatloc_nb.reports.report import build_report

    monkeypatch.setattr(report, "FIGURES", ())  # tables only: figures are tested in test_plots

    results_dir = tmp_path / "results"
    for lr, val in ((0.01, 50.0), (0.1, 60.0)):
        make_run(results_dir, f"cam-{lr}", lr=lr, val=val)
    bad = make_run(results_dir, "broken")
    (bad / "metrics.json").write_text('{"maxboxacc_v2": NaN')
    (results_dir / results.SWEEP_RECORD).write_text(json.dumps({"name": "paper"}))
    page = build_report(results_dir, tmp_path / "out", progress=False).read_text()
    assert "<title>inatloc-nb results: paper</title>" in page
    assert "Skipped: 1 damaged run file(s)" in page and "broken" in page


@pytest.mark.parametrize("strict", [False, True])
def test_quiet_report_still_names_skipped_files_on_stderr(tmp_path: Path, monkeypatch, capsys, strict: bool) -> None:
    from inatloc_nb.reports import report

    monkeypatch.setattr(report, "FIGURES", ())
    results_dir = tmp_path / "results"
    for lr, val in ((0.01, 50.0), (0.1, 60.0)):
        make_run(results_dir, f"cam-{lr}", lr=lr, val=val)
    truncated = make_run(results_dir, "truncated")
    (truncated / "metrics.json").write_text('{"maxboxacc_v2": 4')
    nan = make_run(results_dir, "nan")
    text = (nan / "metrics.json").read_text()
    (nan / "metrics.json").write_text(text.replace('"maxboxacc_v2": 40.0', '"maxboxacc_v2": NaN', 1))
    args = ["report", str(results_dir), "--out", str(tmp_path / "out"), "--quiet", *(["--strict"] if strict else [])]
    assert main(args) == (1 if strict else 0)
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "out" / "report.html")  # quiet: only the path
    skipped = [line for line in err.splitlines() if line.startswith("warning: skipped")]
    assert len(skipped) == 2
    assert any(str(truncated / "metrics.json") in line for line in skipped)
    assert any(str(nan / "metrics.json") in line and "not a finite number" in line for line in skipped)
    assert ("--strict" in err) == strict
    assert (tmp_path / "out" / "report.html").is_file()


def test_strict_report_of_sound_results_exits_zero(tmp_path: Path, monkeypatch, capsys) -> None:
    from inatloc_nb.reports import report

    monkeypatch.setattr(report, "FIGURES", ())
    results_dir = tmp_path / "results"
    for lr, val in ((0.01, 50.0), (0.1, 60.0)):
        make_run(results_dir, f"cam-{lr}", lr=lr, val=val)
    assert main(["report", str(results_dir), "--out", str(tmp_path / "out"), "--quiet", "--strict"]) == 0
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- sweep configurations

GOOD = "datasets:\n  tiny: synth:tiny\nlevels: [species, genus]\nlrs: [1e-3, 1e-2]\nbackbone: tinycnn\npretrained: false\n"


def _sweep_error(tmp_path: Path, text: str | bytes) -> str:
    from inatloc_nb.sweep import ConfigError, SweepConfig, check_data

    path = tmp_path / "x.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError) as info:
        check_data(SweepConfig.from_yaml(path))
    return str(info.value)


@pytest.mark.parametrize(("text", "message"), [
    (GOOD.replace("lrs: [1e-3, 1e-2]", "lrs: [1e-3, 1e-2, -1]"), r"x.yaml: lrs\[2\]: expected a finite number > 0"),
    (GOOD.replace("lrs: [1e-3, 1e-2]", "lrs: [1e-3, .nan]"), r"x.yaml: lrs\[1\]: expected a finite number > 0"),
    (GOOD + "lrs: [1]\n", "x.yaml:7: duplicate key 'lrs' \\(first on line 4\\)"),
    (GOOD + "datasets:\n  other: synth:demo\n", "x.yaml:7: duplicate key 'datasets' \\(first on line 1\\)"),
    (GOOD.replace("species, genus", "species, genera"), "levels: 'genera' not in dataset 'tiny'"),
    (GOOD.replace("backbone: tinycnn", "backbone: resnet5"), "x.yaml: backbone: unknown backbone 'resnet5'"),
    (GOOD.replace("pretrained: false", "pretrained: true"), "x.yaml: pretrained: backbone 'tinycnn' has no pretrained"),
    (GOOD.replace("backbone: tinycnn", "backbone: deit_small") + "methods: [cam, adl]\n",
     "x.yaml: methods: method 'adl' does not run on backbone 'deit_small': .*vision transformer"),
    (GOOD + "schedule: 0\n", r"x.yaml: schedule: .*expected an integer >= 1"),
    (GOOD + "schedule: fortnight\n", "x.yaml: schedule: expected 2epoch, paper, 10epoch"),
    (GOOD + "batch_size: 0\n", "x.yaml: batch_size: expected an integer in 1..65536"),
    (GOOD + "extra:\n  - lrs: [1, 0]\n", r"x.yaml: extra\[0\].lrs\[1\]: expected a finite number > 0"),
    (GOOD.encode() + b"name: caf\xe9\n", "x.yaml:7: not UTF-8 text"),
])
def test_sweep_config_is_validated_up_front(tmp_path: Path, text: str, message: str) -> None:
    assert pytest.importorskip("re").search(message, _sweep_error(tmp_path, text))


def test_sweep_config_folder_and_dry_run(tmp_path: Path, capsys) -> None:
    from inatloc_nb.sweep import ConfigError, SweepConfig

    with pytest.raises(ConfigError, match="is a folder"):
        SweepConfig.from_yaml(tmp_path)
    path = tmp_path / "x.yaml"
    path.write_text(GOOD.replace("species, genus", "species, genera"))
    assert main(["sweep", str(path), "--dry-run", "--results", str(tmp_path / "res")]) == 2
    assert "'genera' not in dataset 'tiny'" in capsys.readouterr().err
    path.write_text(GOOD)
    assert main(["sweep", str(path), "--dry-run", "--results", str(tmp_path / "res")]) == 0
    assert "4 runs: 0 finished, 4 to run" in capsys.readouterr().out
    path.write_text(GOOD.replace("species, genus", "species, c2")  # K steps above the leaves
                    + "extra:\n  - {name: stability, levels: [species], lrs: selected, seeds: [0, 1]}\n")
    assert main(["sweep", str(path), "--dry-run", "--results", str(tmp_path / "res")]) == 0
    out = capsys.readouterr().out
    assert "tiny-c2-cam" in out and "6 runs: 0 finished, 6 to run, 1 of them without training" in out
    assert len([line for line in out.splitlines() if line.endswith("at the selected lr)")]) == 1


# --------------------------------------------------------------------------- score-map files


@pytest.mark.parametrize("array", [
    np.full((8, 8), 0.5, dtype=">f4"), np.full((8, 8), 0.5, dtype="<f8"), np.full((8, 8), 0.5, dtype=">f8"),
    np.full((8, 8), 0.5, dtype=np.float16), np.ones((8, 8), dtype=np.uint8), np.ones((8, 8), dtype=">i4"),
    np.ones((8, 8), dtype=bool), np.full((1, 8, 8), 0.5, dtype=np.float32), np.full((8, 8, 1), 0.5),
])
def test_every_valid_numpy_map_is_read(tmp_path: Path, array: np.ndarray) -> None:
    from inatloc_nb.metrics.scoremaps import read_score_map

    np.save(tmp_path / "m.npy", array)
    smap = read_score_map(tmp_path / "m.npy", "m.jpg")
    assert smap.shape == (8, 8) and smap.dtype in (np.float32, np.float64) and smap.dtype.isnative
    np.testing.assert_allclose(smap, array.reshape(8, 8).astype(np.float64))


@pytest.mark.parametrize(("make", "problem"), [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a readable .npy"),
    (lambda p: np.save(p, np.zeros((0, 8))), "empty array"),
    (lambda p: np.save(p, np.array(["a", "b"])), "must be numeric"),
    (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "not a readable .npy"),
    (lambda p: np.save(p, np.zeros((2, 8, 8))), "must be a 2-D"),
    (lambda p: np.save(p, np.full((8, 8), np.nan)), "NaN or infinite"),
])
def test_bad_map_files_are_named_with_their_image(tmp_path: Path, make, problem: str) -> None:
    from inatloc_nb.metrics.scoremaps import read_score_map

    path = tmp_path / "m.npy"
    make(path)
    with pytest.raises(ScoreMapError, match=problem) as info:
        read_score_map(path, "birds/m.jpg")
    assert str(info.value).startswith(f"{path} (image 'birds/m.jpg')")


def test_out_of_range_map_is_named_not_a_batch_position(tmp_path: Path) -> None:
    from inatloc_nb.metrics import load_score_maps

    np.save(tmp_path / "a.npy", np.full((224, 224), 0.5))
    np.save(tmp_path / "b.npy", np.full((224, 224), 3.0))
    assert load_score_maps(tmp_path, ["a.jpg", "b.jpg"], 224).shape == (2, 224, 224)
    with pytest.raises(ScoreMapError, match=r"b.npy \(image 'b.jpg'\): values outside \[0, 1\]"):
        load_score_maps(tmp_path, ["a.jpg", "b.jpg"], 224, normalize=False)


# --------------------------------------------------------------------------- silent data problems


def _split(name: str, ids: list[str]) -> SplitMetadata:
    return SplitMetadata(name, pl.DataFrame({"image_id": ids, "width": [10] * len(ids),
                                             "height": [10] * len(ids), "label": [0] * len(ids)}))


@pytest.mark.parametrize("other", ["val", "test"])
def test_train_test_leakage_is_refused_unless_allowed(other: str) -> None:
    from inatloc_nb.datasets.dataset import WSOLDataset, flat_hierarchy

    splits = {"train": _split("train", ["a.jpg", "b.jpg"]), other: _split(other, ["c.jpg", "b.jpg"])}
    with pytest.raises(MetadataError, match=f"1 image id\\(s\\) are in both train and {other}.*'b.jpg'.*allow_overlap"):
        WSOLDataset("toy", splits, ["x"], flat_hierarchy(["x"]))
    assert WSOLDataset("toy", splits, ["x"], flat_hierarchy(["x"]), allow_overlap=True).splits[other].images.height == 2


@pytest.mark.parametrize("pad", [" ", "\t", "  \t"])
def test_whitespace_after_ids_is_stripped_consistently(tmp_path: Path, pad: str) -> None:
    split = tmp_path / "train"
    split.mkdir()
    (split / "image_ids.txt").write_text(f"a.jpg{pad}\nb.jpg\r\n")
    (split / "class_labels.txt").write_text(f"a.jpg,0\nb.jpg{pad},1{pad}\n")
    (split / "image_sizes.txt").write_text(f"a.jpg , 10 ,10\nb.jpg,12,12{pad}")
    meta = read_split(split)
    assert meta.images["image_id"].to_list() == ["a.jpg", "b.jpg"] and meta.images["label"].to_list() == [0, 1]


# --------------------------------------------------------------------------- side effects


def test_temporary_run_folders_respect_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    folder = atomic.make_temp_dir(".run.tmp-", tmp_path / "runs")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    if not umask & 0o055:  # e.g. umask 022: colleagues can read the published run
        assert stat.S_IMODE(folder.stat().st_mode) & 0o055 == 0o055
