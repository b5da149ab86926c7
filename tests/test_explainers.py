"""Post-hoc explainers: native-resolution maps, explain_run / `inatloc-nb explain`, results rows,
the sweep's ``explainers:`` key and the report figure."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from inatloc_nb.cli import main as cli_main
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.metrics.scoremaps import normalize_scoremap
from inatloc_nb.runs import results
from inatloc_nb.runs.explainers import EXPLAINERS, Explainer, explain_dir, explain_run, is_explained
from inatloc_nb.runs.run import run_experiment
from inatloc_nb.sweep import SweepConfig, expand, explain_runs, runs_dir
from inatloc_nb.training.cam import CamSet, evaluation_maps, score_cams
from inatloc_nb.training.models import CAMNet, build_backbone
from inatloc_nb.training.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FAST = dict(backbone="tinycnn", pretrained=False, image_size=32, batch_size=16, num_workers=0)


def tiny_model(n_classes: int = 4) -> CAMNet:
    torch.manual_seed(0)
    features, channels = build_backbone("tinycnn", pretrained=False)
    return CAMNet(features, channels, n_classes).eval()


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_every_explainer_gives_native_resolution_maps(name):
    model = tiny_model()
    images, classes = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 3])
    with Explainer(name, score_batch=16) as explainer, torch.no_grad():  # as inside extract_cams
        maps = explainer.cams(model, images, classes)
    assert maps.shape == (3, 8, 8) and maps.dtype == torch.float32  # tinycnn: input / 4
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert not model.features._forward_hooks  # hooks released on leaving the block


def test_gradcam_of_a_gap_linear_model_is_the_rectified_cam():
    """With global average pooling and a linear classifier the logit's gradient is w_c / hw at
    every pixel, so Grad-CAM (and XGrad-CAM, whose weights are proportional) is ReLU(CAM)."""
    model = tiny_model()
    images, classes = torch.randn(4, 3, 32, 32), torch.tensor([1, 0, 3, 2])
    with torch.no_grad():
        cam = model.class_activation_maps(model.feature_maps(images), classes).numpy()
    expected = normalize_scoremap(np.maximum(cam, 0))
    for name in ("gradcam", "xgradcam"):
        with Explainer(name) as explainer:
            maps = explainer.cams(model, images, classes).numpy()
        np.testing.assert_allclose(normalize_scoremap(maps), expected, atol=1e-4)


def test_unknown_explainer_and_missing_run_are_clear_errors(tmp_path):
    with pytest.raises(InatlocError, match="unknown explainer 'gradcam\\+'; choose one of gradcam, gradcam\\+\\+"):
        Explainer("gradcam+")
    with pytest.raises(InatlocError, match="metrics.json: missing"):
        explain_run(tmp_path, "gradcam")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_dataset_dir):
    """A one-epoch tinycnn run at genus level (read-only for the tests below)."""
    out = tmp_path_factory.mktemp("explain") / "run"
    config = RunConfig(data=str(tiny_dataset_dir), level="genus", lr=0.01, schedule=1, **FAST)
    run_experiment(config, out, say=lambda _: None)
    return out


@pytest.mark.slow
def test_explain_run_writes_maps_through_the_cam_store_and_scores_them(trained_run, tiny_dataset, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    metrics = explain_run(run, "gradcam++", say=lambda _: None)
    out = explain_dir(run, "gradcam++")
    assert is_explained(run, "gradcam++") and (out / "timings.json").is_file()
    assert metrics["explainer"] == "gradcam++" and metrics["level"] == "genus" and "val" in metrics
    assert json.loads((out / "metrics.json").read_text()) == metrics
    own = json.loads((run / "metrics.json").read_text())
    assert metrics["top1"] == own["top1"]  # same model, same predictions
    for split in ("val", "test"):
        cams = CamSet.load(out / "cams" / f"{split}.npz")
        raw = np.asarray(cams.raw)
        assert raw.shape == (16, 8, 8) and raw.dtype == np.float32  # stored at native resolution
        np.testing.assert_array_equal(cams.maps(), evaluation_maps(raw))
        block = metrics if split == "test" else metrics["val"]
        assert score_cams(cams, tiny_dataset).mean == pytest.approx(block["maxboxacc_v2"])
    assert not list(run.rglob("*.tmp*"))


@pytest.mark.slow
def test_cli_explain_and_resume(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    assert cli_main(["explain", str(run), "--explainer", "eigencam", "--batch-size", "8"]) == 0
    assert "D_test: MaxBoxAccV2" in capsys.readouterr().out
    written = (explain_dir(run, "eigencam") / "metrics.json").stat().st_mtime_ns
    assert cli_main(["explain", str(run), "--explainer", "eigencam"]) == 0
    assert "already explained" in capsys.readouterr().out
    assert (explain_dir(run, "eigencam") / "metrics.json").stat().st_mtime_ns == written
    assert cli_main(["explain", str(tmp_path / "nowhere"), "--explainer", "gradcam"]) == 2
    assert "not a finished training run" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_explainers_key_scores_finished_runs_once(trained_run, tiny_dataset_dir, tmp_path):
    import shutil

    config = SweepConfig.from_dict({
        "datasets": {"tiny": str(tiny_dataset_dir)}, "levels": ["genus"], "lrs": [0.01], "schedule": 1,
        "backbone": "tinycnn", "pretrained": False, "image_size": 32, "batch_size": 16,
        "explainers": ["cam", "layercam", "scorecam"],
    })
    assert config.explainers == ("layercam", "scorecam")
    specs = expand(config)
    folder = runs_dir(tmp_path) / specs[0].run_id
    shutil.copytree(trained_run, folder)
    (folder / results.RUN_RECORD).write_text(json.dumps({
        "run_id": specs[0].run_id, "params": specs[0].params(), "data": specs[0].data, "status": "ok"}))
    results.write_run_results(folder)
    assert explain_runs(config, specs, tmp_path, say=lambda _: None) == []
    table = results.collect(tmp_path)
    assert sorted(set(table["explainer"])) == ["cam", "layercam", "scorecam"]
    assert table.filter(pl.col("explainer") == "cam").height == 2  # val and test rows of the run
    best = results.select_learning_rate(table)
    assert sorted(best["explainer"]) == ["cam", "layercam", "scorecam"]
    before = (explain_dir(folder, "scorecam") / "metrics.json").stat().st_mtime_ns
    assert explain_runs(config, specs, tmp_path, say=lambda _: None) == []  # nothing left to do
    assert (explain_dir(folder, "scorecam") / "metrics.json").stat().st_mtime_ns == before
    shutil.rmtree(explain_dir(folder, "layercam"))
    (folder / "model.pth").write_bytes(b"damaged")
    failures = explain_runs(config, specs, tmp_path, say=lambda _: None)
    assert len(failures) == 1 and failures[0].startswith(f"{specs[0].run_id}: layercam: ") and "model.pth" in failures[0]
    assert sorted(set(results.collect(tmp_path)["explainer"])) == ["cam", "scorecam"]


def test_sweep_rejects_unknown_explainers():
    from inatloc_nb.sweep import ConfigError

    with pytest.raises(ConfigError, match="explainers: unknown explainer 'gradcam3'"):
        SweepConfig.from_dict({"datasets": {"t": "synth:tiny"}, "levels": ["genus"], "lrs": [0.01],
                               "explainers": ["gradcam3"]})


def test_explainer_figure_draws_one_line_per_explainer():
    from inatloc_nb.reports import plots

    rows = [{"dataset": "t", "level": lv, "method": "cam", "explainer": ex, "per_class": None,
             "maxboxacc_v2": float(i + j)} for i, lv in enumerate(("species", "genus"))
            for j, ex in enumerate(("cam", "gradcam"))]
    chart = plots.explainers_by_level(pl.DataFrame(rows))
    spec = chart.to_dict()
    assert spec["spec"]["encoding"]["color"]["field"] == "explainer"
    with pytest.raises(plots.PlotError, match="no explainer results"):
        plots.explainers_by_level(pl.DataFrame(rows).filter(pl.col("explainer") == "cam"))
