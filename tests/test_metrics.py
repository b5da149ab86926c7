"""Metrics: accumulators, PxAP, analysis measures, the Center baseline on real metadata, the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
import torch

from inatloc_nb.cli import main
from inatloc_nb.core.errors import ScoreMapError
from inatloc_nb.datasets.metadata import SplitMetadata, write_class_names, write_split
from inatloc_nb.metrics import (
    BoxAccuracy,
    PxAP,
    analysis_table,
    best_iou_curves,
    cam_thresholds,
    center_map,
    image_analysis,
    localization_accuracy,
    normalize_scoremap,
    rescale_boxes,
    topk_accuracy,
)


def cam_maps(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.random((n, 28, 28)).astype(np.float32)
    return normalize_scoremap(np.stack([cv2.resize(s, (224, 224)) for s in small]))


def boxes_for(n: int, seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = rng.integers(1, 3)
        x0, y0 = rng.integers(0, 150, (2, k))
        out.append(np.stack([x0, y0, x0 + rng.integers(20, 74, k), y0 + rng.integers(20, 74, k)], axis=1))
    return out


# --------------------------------------------------------------------------- accumulators
def test_merge_of_two_halves_equals_one_pass():
    maps, gts = cam_maps(20), boxes_for(20)
    whole = BoxAccuracy()
    whole.update(maps, gts)
    first, second = BoxAccuracy(), BoxAccuracy()
    first.update(maps[:12], gts[:12])
    second.update(torch.from_numpy(maps[12:]), gts[12:])
    merged = first.merge(second).compute()
    expected = whole.compute()
    assert merged.n_images == expected.n_images == 20
    assert merged.per_iou == expected.per_iou and merged.optimal_threshold == expected.optimal_threshold
    for d in (30, 50, 70):
        np.testing.assert_array_equal(merged.curves[d], expected.curves[d])
        np.testing.assert_array_equal(merged.image_correct[d], expected.image_correct[d])
        assert expected.image_correct[d].mean() * 100 == pytest.approx(expected.per_iou[d])
    assert expected.mean == pytest.approx(np.mean(list(expected.per_iou.values())))
    assert json.loads(json.dumps(expected.to_dict()))["per_iou"]["50"] == expected.per_iou[50]
    with pytest.raises(ScoreMapError, match="cannot merge"):
        BoxAccuracy(iou_thresholds=(50,)).merge(BoxAccuracy())


def test_thread_pool_gives_the_sequential_result():
    maps, gts = cam_maps(40, seed=3), boxes_for(40, seed=4)
    one = best_iou_curves(maps, gts, cam_thresholds(), n_jobs=1)
    np.testing.assert_array_equal(one, best_iou_curves(maps, gts, cam_thresholds(), n_jobs=4))
    assert one.shape == (40, 1000) and (one >= 0).all() and (one <= 1).all()


def test_predicted_boxes_count_at_every_threshold():
    acc = BoxAccuracy()
    gt = [np.array([[10, 10, 59, 59]]), np.array([[0, 0, 9, 9]]), np.array([[100, 100, 120, 120]])]
    # exact box; a box of IoU 0.36 (30 only); no prediction -> box (0,0,0,0), IoU 0.01
    acc.update_boxes([np.array([10, 10, 59, 59]), np.array([[0, 0, 9, 9], [0, 0, 15, 15]])[1:], np.zeros((0, 4))], gt)
    result = acc.compute()
    assert result.per_iou == {30: pytest.approx(200 / 3), 50: pytest.approx(100 / 3), 70: pytest.approx(100 / 3)}
    assert all((c == c[0]).all() for c in result.curves.values())


def test_center_map_definition():
    m = center_map()
    assert m.shape == (224, 224) and m.min() == 0 and m.max() == 1
    assert np.allclose(m, m.T) and np.allclose(m, m[::-1])
    i, j, sigma = 10, 40, 56.0
    raw = np.exp(-((i - 111.5) ** 2 + (j - 111.5) ** 2) / (2 * sigma**2))
    corner = np.exp(-2 * 111.5**2 / (2 * sigma**2))
    peak = np.exp(-2 * 0.5**2 / (2 * sigma**2))  # the centre falls between pixels
    assert m[i, j] == pytest.approx((raw - corner) / (peak - corner))


@pytest.mark.parametrize("name, expected", [("cub", 56.8), ("ilsvrc", 53.4)])
def test_center_baseline_on_shipped_metadata(name, expected):
    from inatloc_nb.datasets.dataset import load_shipped

    dataset = load_shipped(name, with_hierarchy=False)
    acc = BoxAccuracy()
    acc.update_shared(center_map(), dataset.gt_boxes("test"))
    result = acc.compute()
    assert result.n_images == dataset.images("test").height
    assert result.mean == pytest.approx(expected, abs=0.05)


def test_shared_map_equals_per_image_update():
    gts = boxes_for(30, seed=7)
    shared, per_image = BoxAccuracy(), BoxAccuracy()
    shared.update_shared(center_map(), gts)
    per_image.update(np.broadcast_to(center_map(), (30, 224, 224)), gts)
    for d in (30, 50, 70):
        np.testing.assert_array_equal(shared.correct[d], per_image.correct[d])


# --------------------------------------------------------------------------- bad input
def test_bad_score_maps_are_rejected():
    acc = BoxAccuracy()
    gts = boxes_for(3)
    maps = cam_maps(3)
    with pytest.raises(ScoreMapError, match="shape"):
        acc.update(maps[0], gts[:1])
    bad = maps.copy()
    bad[1, 5, 5] = np.nan
    with pytest.raises(ScoreMapError, match="positions 1 contain NaN"):
        acc.update(bad, gts)
    bad[1, 5, 5] = np.inf
    with pytest.raises(ScoreMapError, match="NaN or infinite"):
        acc.update(bad, gts)
    bad[1, 5, 5], bad[2, 0, 0] = 0.5, -np.inf
    with pytest.raises(ScoreMapError, match="positions 2 contain NaN or infinite"):
        acc.update(bad, gts)
    with pytest.raises(ScoreMapError, match="outside \\[0, 1\\]"):
        acc.update(maps * 3, gts)
    with pytest.raises(ScoreMapError, match="3 score maps"):
        acc.update(maps, gts[:2])
    with pytest.raises(ScoreMapError, match="positions 2 are not"):
        acc.update(maps, gts[:2] + [np.array([[50, 10, 40, 60]])])
    with pytest.raises(ScoreMapError, match="shape \\(n>=1, 4\\)"):
        acc.update(maps, gts[:2] + [np.zeros((0, 4))])
    with pytest.raises(ScoreMapError, match="floating point"):
        acc.update((maps * 255).astype(np.uint8), gts)
    with pytest.raises(ScoreMapError, match="before any image"):
        acc.compute()
    with pytest.raises(ScoreMapError, match="before any image"):
        PxAP().compute()
    scaled = BoxAccuracy(normalize=True)
    scaled.update(maps * 3 - 1, gts)
    plain = BoxAccuracy()
    plain.update(maps, gts)
    for d in (30, 50, 70):
        np.testing.assert_array_equal(scaled.correct[d], plain.correct[d])


def test_normalize_and_rescale():
    np.testing.assert_array_equal(normalize_scoremap(np.full((1, 4, 4), 7.0)), np.zeros((1, 4, 4)))
    m = normalize_scoremap(np.array([[2.0, 4.0], [6.0, 10.0]], dtype=np.float32))
    assert m.dtype == np.float32 and m.tolist() == [[0.0, 0.25], [0.5, 1.0]]
    # int(x * 224 / w) per coordinate: 499 * 224 / 500 = 223.55 -> 223
    np.testing.assert_array_equal(rescale_boxes([[0, 1, 499, 334]], 500, 335), [[0, 0, 223, 223]])
    np.testing.assert_array_equal(rescale_boxes([[60, 27, 385, 331]], 500, 335), [[26, 18, 172, 221]])


# --------------------------------------------------------------------------- PxAP
def test_pxap_by_hand():
    scores = np.array([[[0.9, 0.8, 0.3, 0.1]]])
    mask = np.array([[[1, 0, 1, 0]]])
    # ranked: P (prec 1, rec 1/2), N, P (prec 2/3, rec 1), N -> AP = 1/2 + 2/3 * 1/2
    acc = PxAP()
    acc.update(scores, mask)
    assert acc.compute().pxap == pytest.approx(100 * (0.5 + 1 / 3))
    ignored = PxAP()
    ignored.update(scores, mask, ignore=np.array([[[False, True, False, False]]]))
    assert ignored.compute().pxap == pytest.approx(100.0)
    halves = PxAP()
    halves.update(scores[:, :, :2], mask[:, :, :2])
    other = PxAP()
    other.update(scores[:, :, 2:], mask[:, :, 2:])
    assert halves.merge(other).compute().pxap == pytest.approx(acc.compute().pxap)
    with pytest.raises(ScoreMapError, match="0/1"):
        PxAP().update(scores, mask * 2)
    empty = PxAP()
    empty.update(scores, np.zeros_like(mask))
    with pytest.raises(ScoreMapError, match="no foreground"):
        empty.compute()


# --------------------------------------------------------------------------- analysis
def _two_blocks() -> np.ndarray:
    m = np.full((224, 224), 0.1)
    m[50:100, 40:120] = 1.0  # 80 x 50 block, the object
    m[150:160, 150:160] = 0.8  # a distractor
    m[70:75, 60:65] = 0.1  # a hole in the object: no extra component
    return m


def test_image_analysis_by_hand():
    gt = np.array([[40, 50, 119, 99]])
    out = image_analysis(_two_blocks(), gt, threshold=0.5)
    # the best-IoU box is the block's contour box (40, 50, 120, 100): 81 x 51 pixels
    assert out["box_area_ratio"] == pytest.approx(81 * 51 / (80 * 50))
    inside = 4000 - 25 + 25 * 0.1
    outside = 0.1 * (224 * 224 - 4000 - 100) + 0.8 * 100
    assert out["gt_activation"] == pytest.approx(inside / outside)
    assert out["n_components"] == 2
    assert image_analysis(_two_blocks(), gt, threshold=0.9)["n_components"] == 1
    ones = image_analysis(np.ones((224, 224)), np.array([[0, 0, 223, 223]]), 0.5)
    assert ones["gt_activation"] == float("inf") and ones["n_components"] == 1
    table = analysis_table(np.stack([_two_blocks(), np.ones((224, 224))]), [gt, gt], ["a.jpg", "b.jpg"], 0.5)
    assert table.columns == ["image_id", "box_area_ratio", "gt_activation", "n_components"]
    assert table["n_components"].to_list() == [2, 1]
    assert table["box_area_ratio"][1] == pytest.approx(224 * 224 / 4000)


def test_classification_and_localization_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    targets = np.array([1, 1, 2, 1])
    assert topk_accuracy(logits, targets) == 50.0
    assert topk_accuracy(logits, targets, k=2) == 100.0
    loc = localization_accuracy([True, True, False, True], logits.argmax(1), targets)
    assert loc == {"gt_known": 75.0, "top1_loc": 25.0}
    with pytest.raises(ScoreMapError):
        topk_accuracy(logits, targets[:3])


# --------------------------------------------------------------------------- command line
@pytest.fixture
def metadata_folder(tmp_path: Path) -> Path:
    images = pl.DataFrame({
        "image_id": ["a/one.jpg", "a/two.jpg", "b/three.jpg"],
        "width": [224, 448, 300], "height": [224, 224, 200], "label": [0, 0, 1],
    })
    boxes = pl.DataFrame({
        "image_id": ["a/one.jpg", "a/two.jpg", "a/two.jpg", "b/three.jpg"],
        "x0": [30, 0, 200, 100], "y0": [40, 0, 50, 40], "x1": [150, 100, 400, 250], "y1": [170, 100, 200, 180],
    })
    write_split(tmp_path / "meta" / "test", SplitMetadata("test", images, boxes))
    write_class_names(tmp_path / "meta" / "class_names.txt", ["A", "B"])
    return tmp_path / "meta"


def test_evaluate_command(metadata_folder: Path, tmp_path: Path, capsys):
    from inatloc_nb.datasets.dataset import WSOLDataset

    maps_dir = tmp_path / "maps"
    maps = cam_maps(3, seed=9)
    (maps_dir / "a").mkdir(parents=True)
    (maps_dir / "b").mkdir()
    np.save(maps_dir / "a" / "one.npy", maps[0])
    np.save(maps_dir / "a" / "two.npy", maps[1])
    original = cv2.resize(maps[2], (300, 200))  # a map at the original image size
    np.save(maps_dir / "b" / "three.npy", original)
    code = main(["evaluate", "--scoremaps", str(maps_dir), "--metadata", str(metadata_folder), "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = BoxAccuracy()
    expected.update(np.stack([maps[0], maps[1], cv2.resize(original, (224, 224))]),
                    WSOLDataset.from_folder(metadata_folder).gt_boxes("test"))
    result = expected.compute()
    assert out["maxboxacc_v2"] == pytest.approx(result.mean)
    assert out["per_iou"] == {str(d): pytest.approx(v) for d, v in result.per_iou.items()}
    assert out["optimal_threshold"] == {str(d): v for d, v in result.optimal_threshold.items()}
    assert out["n_images"] == 3

    assert main(["evaluate", "--scoremaps", str(maps_dir), "--metadata", str(metadata_folder),
                 "--metric", "maxboxacc"]) == 0
    assert "IoU 50: MaxBoxAcc" in capsys.readouterr().out

    (maps_dir / "a" / "two.npy").unlink()
    (maps_dir / "b" / "three.npy").unlink()
    assert main(["evaluate", "--scoremaps", str(maps_dir), "--metadata", str(metadata_folder)]) == 2
    err = capsys.readouterr().err
    assert "2 score map files missing" in err and "a/two.npy" in err and "b/three.npy" in err


def test_center_command(metadata_folder: Path, capsys):
    from inatloc_nb.datasets.dataset import WSOLDataset

    assert main(["center", "--metadata", str(metadata_folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = BoxAccuracy()
    expected.update(np.broadcast_to(center_map(), (3, 224, 224)),
                    WSOLDataset.from_folder(metadata_folder).gt_boxes("test"))
    assert out["maxboxacc_v2"] == pytest.approx(expected.compute().mean)
    assert out["n_images"] == 3
