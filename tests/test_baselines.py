"""Baselines end to end on the tiny synthetic world, and their defining computations."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from inatloc_nb.cli import main
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs.baselines import run_baseline
from inatloc_nb.runs.baselines.cam_agg import aggregated_cams, averaging_matrix
from inatloc_nb.runs.baselines.fsl_det import run_fsl_det
from inatloc_nb.runs.baselines.fsl_seg import balanced_bce, box_mask, class_balance_weights
from inatloc_nb.runs.run import run_experiment
from inatloc_nb.runs.run_model import load_run_model
from inatloc_nb.training.cam import CamSet
from inatloc_nb.training.run_config import RunConfig

SPLIT_KEYS = {"maxboxacc_v2", "per_iou", "optimal_threshold", "top1", "n_images"}
RUN_KEYS = {"level", "method", "lr", "seed", "per_class", "n_train_images"}
FAST = dict(backbone="tinycnn", pretrained=False, image_size=32, batch_size=8, num_workers=0,
            device="cpu", lr=0.01, schedule=1)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def check_metrics(run_dir, method):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert SPLIT_KEYS | RUN_KEYS <= set(metrics) and SPLIT_KEYS <= set(metrics["val"])
    assert metrics["method"] == method and 0 <= metrics["maxboxacc_v2"] <= 100
    assert set(metrics["per_iou"]) == {"30", "50", "70"}
    assert (run_dir / "params.json").is_file()
    return metrics


def test_center_cli_writes_a_run_folder(tiny_dataset_dir, tmp_path, capsys):
    out = tmp_path / "center"
    assert main(["baseline", "center", "--data", str(tiny_dataset_dir), "--out", str(out)]) == 0
    metrics = check_metrics(out, "center")
    assert metrics["top1"] is None and metrics["n_images"] == 16
    assert "MaxBoxAccV2" in capsys.readouterr().out
    assert main(["baseline", "cam-agg", "--data", str(tiny_dataset_dir), "--out", str(out)]) == 2


def test_fsl_seg_loss_weights_are_class_balanced():
    target = torch.zeros(2, 4, 4)
    target[0, :2, :3] = 1  # 6 positives, 10 negatives
    weights = class_balance_weights(target)
    assert torch.allclose(weights[0][target[0] == 1], torch.full((6,), 1 / 6))
    assert torch.allclose(weights[0][target[0] == 0], torch.full((10,), 1 / 10))
    assert torch.allclose(weights[1], torch.full((4, 4), 1 / 16))  # no positive: negatives only
    # both classes weigh the same in the loss, whatever their areas
    scores = torch.full((1, 4, 4), 0.5)
    assert balanced_bce(scores, target[:1]) == pytest.approx(2 * np.log(2), rel=1e-5)
    mask = box_mask(np.array([[1, 0, 2, 1]]), width=4, height=3)
    assert mask.tolist() == [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]


@pytest.mark.slow
def test_fsl_seg_end_to_end(tiny_dataset_dir, tmp_path):
    out = tmp_path / "fsl-seg"
    config = RunConfig(data=str(tiny_dataset_dir), method="fsl-seg", **FAST)
    metrics = run_baseline(config, out, say=lambda _: None)
    assert check_metrics(out, "fsl-seg") == metrics
    assert metrics["n_train_images"] == 16  # D_f only
    cams = CamSet.load(out / "cams" / "test.npz")  # native-resolution sigmoid maps (8 x 8 for tinycnn at 32)
    assert cams.raw.shape == (16, 8, 8) and 0 <= np.asarray(cams.raw).min() and np.asarray(cams.raw).max() <= 1
    assert cams.maps().shape == (16, 224, 224)


@pytest.mark.slow
def test_fsl_det_end_to_end(tiny_dataset_dir, tmp_path):
    from inatloc_nb.training.run_config import load_dataset

    out = tmp_path / "fsl-det"
    # few proposals: the C4 head runs layer4 on every proposal, slow on CPU
    config = RunConfig(data=str(tiny_dataset_dir), method="fsl-det", method_params={"proposals": 4},
                       **{**FAST, "batch_size": 4, "lr": 1e-3})
    run_fsl_det(config, load_dataset(config.data), out, say=lambda _: None, max_iters=2)
    metrics = check_metrics(out, "fsl-det")
    assert len(metrics["train_loss"]) == 1 and np.isfinite(metrics["train_loss"][0])


@pytest.fixture(scope="module")
def species_run(tiny_dataset_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "species-cam"
    run_experiment(RunConfig(data=str(tiny_dataset_dir), level="species", method="cam", **FAST), out,
                   say=lambda _: None)
    return out


@pytest.mark.slow
def test_cam_agg_species_is_cam_and_root_is_mean(species_run, tiny_dataset):
    model, _, _ = load_run_model(species_run, device="cpu")
    hierarchy = tiny_dataset.hierarchy
    torch.manual_seed(0)
    with torch.no_grad():
        feats = model.feature_maps(torch.randn(5, 3, 32, 32))
        species = torch.tensor([0, 3, 5, 7, 1])
        weights = model.classifier.weight
        own = aggregated_cams(weights, feats, torch.as_tensor(averaging_matrix(hierarchy, "species")), species)
        assert torch.allclose(own, model.class_activation_maps(feats, species), atol=1e-5)
        root = "c6"  # coarsening every leaf six times reaches the root
        assert hierarchy.level_names(root) == (hierarchy.root,)
        agg = aggregated_cams(weights, feats, torch.as_tensor(averaging_matrix(hierarchy, root)),
                              torch.zeros(5, dtype=torch.long))
        every = torch.stack([model.class_activation_maps(feats, torch.full((5,), s)) for s in range(8)])
        assert torch.allclose(agg, every.mean(0), atol=1e-5)


@pytest.mark.slow
def test_cam_agg_end_to_end(species_run, tiny_dataset_dir, tmp_path):
    out = tmp_path / "cam-agg"
    config = RunConfig(data=str(tiny_dataset_dir), method="cam-agg", level="genus", model_run=str(species_run),
                       **{**FAST, "lr": None})
    metrics = run_baseline(config, out, say=lambda _: None)
    assert check_metrics(out, "cam-agg") == metrics
    levels = ["species", "genus", "family", "order", "class", "phylum"]
    assert list(metrics["per_level"]) == levels
    for level in levels:
        assert SPLIT_KEYS <= set(metrics["per_level"][level]) and "val" in metrics["per_level"][level]
    assert metrics["maxboxacc_v2"] == metrics["per_level"]["genus"]["maxboxacc_v2"]
    species = json.loads((species_run / "metrics.json").read_text())
    assert metrics["per_level"]["species"]["maxboxacc_v2"] == pytest.approx(species["maxboxacc_v2"], abs=1e-9)
    genus_run = tmp_path / "genus"
    run_experiment(RunConfig(data=str(tiny_dataset_dir), level="genus", **FAST), genus_run, say=lambda _: None)
    with pytest.raises(InatlocError, match="trained at 'genus'"):
        run_baseline(RunConfig(data=str(tiny_dataset_dir), method="cam-agg", model_run=str(genus_run)),
                     tmp_path / "bad", say=lambda _: None)
