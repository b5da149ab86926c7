"""The native-resolution CAM store: bicubic evaluation maps, float32 CAMs, streaming scoring."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from inatloc_nb.core.errors import ScoreMapError
from inatloc_nb.metrics import BoxAccuracy
from inatloc_nb.metrics.scoremaps import upsample_cams
from inatloc_nb.training.cam import (
    CAM_FORMAT_VERSION, CamSet, accumulate, evaluation_maps, extract_cams, score_cams,
)
from inatloc_nb.training.models import CAMNet, build_backbone

LEVEL = "genus"

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cam_like(n: int, side: int = 28, seed: int = 0) -> np.ndarray:
    """(n, side, side) float32 smooth maps with a blob each, like a network's CAMs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    maps = np.stack([cv2.GaussianBlur(rng.normal(0, 1, (side, side)).astype(np.float32), (0, 0), 1.5)
                     for _ in range(n)])
    cx, cy = rng.uniform(4, side - 4, (2, n, 1, 1)).astype(np.float32)
    return maps + 5 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 18).astype(np.float32)


def random_boxes(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    x0, y0 = rng.integers(0, 150, (2, n))
    x1, y1 = x0 + rng.integers(10, 70, n), y0 + rng.integers(10, 70, n)
    return [np.array([[a, b, c, d]]) for a, b, c, d in zip(x0, y0, x1, y1)]


def camset(raw: np.ndarray, split: str = "test") -> CamSet:
    n = len(raw)
    zeros = np.zeros(n, dtype=np.int64)
    return CamSet(split, "species", [f"inat/{i // 100:03d}/photo_{i:07d}.jpg" for i in range(n)], raw,
                  zeros, zeros, zeros, np.zeros(n, np.float32))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    features, channels = build_backbone("tinycnn", pretrained=False)
    return CAMNet(features, channels, 4).eval()


def test_evaluation_maps_are_the_reference_path_bit_for_bit():
    raw = np.random.default_rng(0).normal(size=(16, 28, 28)).astype(np.float32)
    # the reference: t2n widens the float32 CAM to float64, cv2.resize(INTER_CUBIC), then
    # normalize_scoremap (cam -= cam.min(); cam /= cam.max()) in float64
    reference = []
    for cam in raw.astype(np.float64):
        resized = cv2.resize(cam, (224, 224), interpolation=cv2.INTER_CUBIC)
        resized -= resized.min()
        resized /= resized.max()
        reference.append(resized)
    reference = np.stack(reference)
    np.testing.assert_array_equal(upsample_cams(raw), np.stack(
        [cv2.resize(m, (224, 224), interpolation=cv2.INTER_CUBIC) for m in raw.astype(np.float64)]))
    maps = evaluation_maps(raw)
    assert maps.dtype == np.float64
    np.testing.assert_array_equal(maps, reference)
    np.testing.assert_array_equal((maps * 255).astype(np.uint8), (reference * 255).astype(np.uint8))
    np.testing.assert_array_equal(evaluation_maps(torch.from_numpy(raw)), maps)
    assert not evaluation_maps(np.full((1, 28, 28), 3.0, np.float32)).any()  # constant map -> zeros
    with pytest.raises(ScoreMapError, match="shape"):
        evaluation_maps(raw[0])
    buffer = np.full((16, 224, 224), np.nan)
    assert evaluation_maps(raw, out=buffer) is buffer
    np.testing.assert_array_equal(buffer, reference)
    with pytest.raises(ScoreMapError, match="C-contiguous float64"):
        evaluation_maps(raw, out=np.empty((16, 224, 224), np.float32))
    # chunks come in two buffers used in turn: each equals its rows while it is the current one
    chunks = [(start, maps.copy()) for start, maps in camset(raw).iter_maps(chunk=5)]
    assert [(start, len(maps)) for start, maps in chunks] == [(0, 5), (5, 5), (10, 5), (15, 1)]
    np.testing.assert_array_equal(np.concatenate([maps for _, maps in chunks]), reference)


def test_cams_are_float32_reference_formula_without_autocast(model, tiny_dataset, monkeypatch):
    seen = []
    original = model.class_activation_maps

    def spy(feats, class_idx):
        seen.append((feats.dtype, torch.is_autocast_enabled("cpu")))
        return original(feats, class_idx)

    monkeypatch.setattr(model, "class_activation_maps", spy)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a caller's mixed precision does not reach the CAMs
        cams = extract_cams(model, tiny_dataset, "test", LEVEL, image_size=32, num_workers=0, device="cpu")
    assert seen and all(s == (torch.float32, False) for s in seen)
    assert cams.raw.dtype == np.float32 and cams.raw.shape == (len(cams), 8, 8)

    # the reference formula in float64: weighted feature maps averaged over channels
    from inatloc_nb.training.learner import build_dataloaders, labelled_items

    dls = build_dataloaders(tiny_dataset, LEVEL, 32, 64, device="cpu", num_workers=0)
    xb, yb = dls.test_dl(labelled_items(tiny_dataset, "test", LEVEL), with_labels=True).one_batch()
    with torch.no_grad():
        feats = model.feature_maps(xb.as_subclass(torch.Tensor)).double()
        weights = model.classifier.weight.double()[yb.as_subclass(torch.Tensor)]
        reference = (weights[:, :, None, None] * feats).mean(1).numpy()
    np.testing.assert_allclose(cams.raw[: len(reference)], reference, rtol=1e-4, atol=1e-6)


def test_round_trip_scores_identically(model, tiny_dataset, tmp_path):
    cams = extract_cams(model, tiny_dataset, "test", LEVEL, image_size=32, num_workers=0, device="cpu")
    fresh = score_cams(cams, tiny_dataset)
    loaded = CamSet.load(cams.save(tmp_path / "cams" / "test.npz"))
    again = score_cams(loaded, tiny_dataset)
    assert again.per_iou == fresh.per_iou and again.optimal_threshold == fresh.optimal_threshold
    for d in fresh.correct:
        np.testing.assert_array_equal(again.correct[d], fresh.correct[d])
        np.testing.assert_array_equal(again.image_correct[d], fresh.image_correct[d])
    np.testing.assert_array_equal(loaded.maps(), cams.maps())
    assert (loaded.split, loaded.level, loaded.image_ids) == (cams.split, cams.level, cams.image_ids)
    np.testing.assert_array_equal(loaded.predictions, cams.predictions)


def test_chunked_scoring_equals_one_shot(tmp_path):
    raw, boxes = cam_like(70), random_boxes(70)
    one_shot = BoxAccuracy()
    one_shot.update(evaluation_maps(raw), boxes)
    expected = one_shot.compute()
    stored = CamSet.load(camset(raw).save(tmp_path / "test.npz", chunk=16))  # reads cross stored chunks
    for cams, chunk in ((camset(raw), 7), (stored, 9), (stored, 70)):
        result = accumulate(cams, boxes, chunk=chunk).compute()
        for d in expected.correct:
            np.testing.assert_array_equal(result.correct[d], expected.correct[d])
            np.testing.assert_array_equal(result.image_correct[d], expected.image_correct[d])
        assert result.per_iou == expected.per_iou
        assert all(v.shape == (70,) and v.dtype == bool for v in result.image_correct.values())  # one bool per image
    np.testing.assert_array_equal(stored.raw[10:40], raw[10:40])
    np.testing.assert_array_equal(stored.raw[-1], raw[-1])
    with pytest.raises(ScoreMapError, match="box arrays"):
        accumulate(stored, boxes[:-1])


def test_old_format_names_how_to_regenerate(tmp_path):
    old = tmp_path / "cams" / "val.npz"
    old.parent.mkdir()
    np.savez(old, split=np.array("val"), level=np.array("species"), image_ids=np.array(["a.jpg"]),
             maps=np.zeros((1, 224, 224), np.float16), labels=np.zeros(1, int), cam_classes=np.zeros(1, int),
             predictions=np.zeros(1, int), top1_logits=np.zeros(1, np.float32))
    with pytest.raises(ScoreMapError, match=r"val\.npz: CAM file in the old format.*inatloc-nb train"):
        CamSet.load(old)
    newer = tmp_path / "newer.npz"
    np.savez(newer, format_version=np.array(CAM_FORMAT_VERSION + 1))
    with pytest.raises(ScoreMapError, match="newer.npz: CAM format version"):
        CamSet.load(newer)


def test_bytes_per_image_under_4kb_for_28x28(tmp_path):
    n = 1000
    path = camset(cam_like(n)).save(tmp_path / "test.npz")
    assert path.stat().st_size / n < 4096


def test_evaluate_upsamples_native_maps_like_stored_cams(tiny_dataset_dir, tiny_dataset, tmp_path, capsys):
    from inatloc_nb.cli import main

    ids = tiny_dataset.images("test")["image_id"].to_list()
    raw = cam_like(len(ids))
    folder = tmp_path / "maps"
    for image_id, cam in zip(ids, raw):
        path = folder / (image_id.rsplit(".", 1)[0] + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, cam)
    assert main(["evaluate", "--scoremaps", str(folder), "--metadata", str(tiny_dataset_dir), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = accumulate(camset(raw), tiny_dataset.gt_boxes("test")).compute()
    assert printed["maxboxacc_v2"] == expected.mean
