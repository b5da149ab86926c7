"""The fast MaxBoxAcc(V2) path against a literal implementation of the protocol.

The literal path below calls ``cv2.findContours`` at each of the 1,000 thresholds, exactly as
the Choe et al. (CVPR 2020) evaluation does; the fast path must give the same best IoU, hence
the same per-threshold correct counts, on every generated map.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import cv2
import numpy as np
import pytest

from inatloc_nb.metrics import BoxAccuracy, best_iou_curves, cam_thresholds

SIZE = 224
MAPS_PER_KIND = 39
DELTAS = (30, 50, 70)
V1_EVERY = 4  # the largest-contour (V1) check runs on every 4th map


# --------------------------------------------------------------------------- literal protocol
def literal_iou(boxes: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """calculate_multiple_iou of the reference: (n, m) inclusive-pixel IoU, 0 for degenerate pairs."""
    a, b = boxes[:, None, :], gt[None, :, :]
    inter = np.maximum(0, np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1) * np.maximum(
        0, np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    )
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    denominator = area_a + area_b - inter
    degenerate = denominator <= 0
    denominator[degenerate] = 1
    ious = inter / denominator
    ious[degenerate] = 0
    return ious


def literal_boxes(scoremap_image: np.ndarray, threshold: float, largest_only: bool) -> np.ndarray:
    """Boxes of every contour (or the largest by contourArea) at one threshold, as the reference."""
    height, width = scoremap_image.shape
    _, binary = cv2.threshold(scoremap_image, int(threshold * np.max(scoremap_image)), 255, cv2.THRESH_BINARY)
    contours = cv2.findContours(binary, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
    if len(contours) == 0:
        return np.array([[0, 0, 0, 0]])
    if largest_only:
        contours = [max(contours, key=cv2.contourArea)]
    # cv2.boundingRect of each contour, for all contours at once: (min x, min y, w, h)
    points = np.concatenate(contours).reshape(-1, 2)
    starts = np.cumsum([0] + [len(c) for c in contours[:-1]])
    x, y = np.minimum.reduceat(points, starts).T
    w, h = (np.maximum.reduceat(points, starts) + 1).T - (x, y)
    return np.stack([x, y, np.minimum(x + w, width - 1), np.minimum(y + h, height - 1)], axis=1)


def literal_best_iou(scoremap: np.ndarray, gt: np.ndarray, largest_only: bool = False) -> np.ndarray:
    """Best IoU per threshold over every contour (V2) or the largest one (V1).

    As the reference: boxes at each threshold, one IoU matrix for all of them, then the best
    per threshold.
    """
    scoremap_image = (scoremap * 255).astype(np.uint8)
    boxes = [literal_boxes(scoremap_image, t, largest_only) for t in list(np.arange(0, 1, 0.001))]
    ious = literal_iou(np.concatenate(boxes), gt).max(axis=1)
    return np.maximum.reduceat(ious, np.cumsum([0] + [len(b) for b in boxes[:-1]]))


# --------------------------------------------------------------------------- generated maps
def _norm(m: np.ndarray) -> np.ndarray:
    m = m - m.min()
    return m / m.max() if m.max() > 0 else m


def cam_like(rng):
    return _norm(cv2.resize(rng.random((28, 28)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))


def cam_bicubic(rng):
    """A 28 x 28 map upsampled as CAMs are evaluated (cv2 INTER_CUBIC), then min-max normalised."""
    return _norm(cv2.resize(rng.random((28, 28)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC))


def peaked(rng):
    small = rng.random((14, 14)) ** 4
    return _norm(np.clip(cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC), 0, None))


def rings(rng):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    d = np.hypot(yy - rng.integers(0, SIZE), xx - rng.integers(0, SIZE))
    return (np.sin(d / rng.uniform(3, 15)) + 1) / 2 * np.exp(-d / rng.uniform(60, 300))


def nested_rings(rng):
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.integers(40, SIZE - 40, 2)
    band = (np.maximum(abs(yy - cy), abs(xx - cx)) // rng.integers(2, 9)).astype(int)
    values = rng.random(band.max() + 1)
    values[::2] *= 0.3  # alternate low bands: holes inside holes
    return values[band]


def blobs(rng):
    m = np.zeros((SIZE, SIZE))
    for _ in range(rng.integers(20, 120)):
        y, x = rng.integers(0, SIZE, 2)
        r = rng.integers(0, 6)
        m[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] = rng.random()
    return m


def border(rng):
    m = cam_like(rng).astype(np.float64) * 0.6
    for side in rng.choice(4, rng.integers(1, 4), replace=False):
        width = rng.integers(1, 30)
        index = [slice(None), slice(None)]
        index[side % 2] = slice(0, width) if side < 2 else slice(SIZE - width, SIZE)
        m[tuple(index)] += rng.uniform(0.2, 0.4)
    return m


def plateaus(rng):
    levels = rng.integers(2, 7)
    return np.floor(cam_like(rng) * levels) / levels


def near_constant(rng):
    kind = rng.integers(0, 5)
    m = np.full((SIZE, SIZE), 0.5 if kind < 3 else 1.0)
    if kind == 0:
        m[:] = 0
    elif kind == 1:
        m[tuple(rng.integers(0, SIZE, 2))] = 1.0
    elif kind == 2:
        m = rng.random((SIZE, SIZE)) * 0.003  # quantises to all zeros or a few ones
    elif kind == 3:
        for _ in range(rng.integers(1, 10)):
            m[tuple(rng.integers(0, SIZE, 2))] = rng.uniform(0.9, 1.0)
    return m


def thin(rng):
    m = np.zeros((SIZE, SIZE))
    for _ in range(rng.integers(3, 15)):
        y, x = rng.integers(0, SIZE, 2)
        length = rng.integers(5, 120)
        dy, dx = [(0, 1), (1, 0), (1, 1), (1, -1)][rng.integers(0, 4)]
        for s in range(length):
            if 0 <= y + s * dy < SIZE and 0 <= x + s * dx < SIZE:
                m[y + s * dy, x + s * dx] = max(m[y + s * dy, x + s * dx], rng.uniform(0.3, 1))
    y, x = rng.integers(0, SIZE - 20, 2)
    checker = (np.add.outer(np.arange(20), np.arange(20)) % 2).astype(float)
    m[y : y + 20, x : x + 20] = np.maximum(m[y : y + 20, x : x + 20], checker * rng.uniform(0.2, 1))
    return m


def blocky(rng):
    small = rng.random((rng.integers(4, 57),) * 2)
    return cv2.resize(small, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST)


def salt(rng):
    m = cam_like(rng).astype(np.float64) * 0.8
    ys, xs = rng.integers(0, SIZE, (2, rng.integers(50, 400)))
    m[ys, xs] = rng.choice([0.0, 1.0], len(ys))
    return m


def frames(rng):
    m = np.zeros((SIZE, SIZE))
    for _ in range(rng.integers(2, 8)):
        x0, y0 = rng.integers(0, SIZE - 10, 2)
        x1, y1 = x0 + rng.integers(3, SIZE - x0), y0 + rng.integers(3, SIZE - y0)
        value, t = rng.random(), rng.integers(1, 4)
        m[y0:y1, x0:x1] = np.maximum(m[y0:y1, x0:x1], value)
        m[y0 + t : y1 - t, x0 + t : x1 - t] = m[y0 + t : y1 - t, x0 + t : x1 - t] * 0.2
    return m


KINDS = (cam_like, cam_bicubic, peaked, rings, nested_rings, blobs, border, plateaus, near_constant, thin, blocky, salt, frames)


def gt_for(scoremap: np.ndarray, rng) -> np.ndarray:
    """1-3 GT boxes near contour boxes of the map (IoUs land around the deltas), sometimes random."""
    q = (scoremap * 255).astype(np.uint8)
    boxes = []
    for _ in range(rng.integers(1, 4)):
        candidates = literal_boxes(q, rng.uniform(0, 1), largest_only=False)
        if rng.random() < 0.2:
            x0, y0 = rng.integers(0, SIZE - 1, 2)
            box = [x0, y0, rng.integers(x0, SIZE), rng.integers(y0, SIZE)]
        else:
            box = candidates[rng.integers(len(candidates))] + rng.integers(-8, 9, 4)
        x0, y0, x1, y1 = np.clip(box, 0, SIZE - 1)
        boxes.append([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
    return np.array(boxes, dtype=np.int64)


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(2020)
    maps, gts, kinds = [], [], []
    for kind in KINDS:
        for _ in range(MAPS_PER_KIND):
            m = np.clip(kind(rng), 0, None)
            maps.append((m / m.max() if m.max() > 1 else m).astype(rng.choice([np.float32, np.float64])))
            gts.append(gt_for(maps[-1], rng))
            kinds.append(kind.__name__)
    # The literal reference is slow (1,000 findContours per map): spread it over the cores.
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        v2 = list(pool.map(literal_best_iou, maps, gts, chunksize=16))
        v1 = list(pool.map(partial(literal_best_iou, largest_only=True), maps[::V1_EVERY], gts[::V1_EVERY]))
    return maps, gts, np.array(v2), np.array(v1), kinds


def _check_same(fast: np.ndarray, literal: np.ndarray, kinds: list[str]) -> None:
    for d in DELTAS:
        differs = ((fast >= d / 100) != (literal >= d / 100)).any(axis=1)
        assert not differs.any(), f"delta {d}: maps {np.flatnonzero(differs)[:10]} ({[kinds[i] for i in np.flatnonzero(differs)[:10]]}) differ"


def test_enough_maps_and_varied_outcomes(cases):
    maps, _, v2, _, _ = cases
    assert len(maps) >= 500
    # the GT boxes make the decisions non-trivial: every delta has both outcomes
    for d in DELTAS:
        hits = (v2 >= d / 100).any(axis=1)
        assert 0.2 < hits.mean() < 1.0


def test_every_contour_matches_literal_per_threshold(cases):
    maps, gts, v2, _, kinds = cases
    fast = np.concatenate([best_iou_curves(m[None], [g], cam_thresholds(), n_jobs=1) for m, g in zip(maps, gts)])
    np.testing.assert_array_equal(fast, v2)
    _check_same(fast, v2, kinds)


def test_accumulator_counts_match_literal(cases):
    maps, gts, v2, _, _ = cases
    for dtype in (np.float32, np.float64):
        same_dtype = [i for i, m in enumerate(maps) if m.dtype == dtype]
        acc = BoxAccuracy(iou_thresholds=DELTAS, n_jobs=2)
        acc.update(np.stack([maps[i] for i in same_dtype]), [gts[i] for i in same_dtype])
        for d in DELTAS:
            np.testing.assert_array_equal(acc.correct[d], (v2[same_dtype] >= d / 100).sum(axis=0))


def test_largest_contour_matches_literal(cases):
    maps, gts, _, v1, kinds = cases
    subset = range(0, len(maps), V1_EVERY)
    fast = np.concatenate(
        [best_iou_curves(maps[i][None], [gts[i]], cam_thresholds(), largest_only=True, n_jobs=1) for i in subset]
    )
    _check_same(fast, v1, [kinds[i] for i in subset])
    # the accumulator on a batch of the float32 maps gives the literal counts too
    rows = [j for j, i in enumerate(subset) if maps[i].dtype == np.float32][:30]
    acc = BoxAccuracy(iou_thresholds=(50,), largest_only=True)
    acc.update(np.stack([maps[subset[j]] for j in rows]), [gts[subset[j]] for j in rows])
    np.testing.assert_array_equal(acc.correct[50], (v1[rows] >= 0.5).sum(axis=0))


def test_ground_truth_boxes_on_the_grid_border_match_literal(cases):
    """Boxes that end on the image border (x1 == width, as the iNatLoc500 release writes them)
    rescale to 224, one past the last pixel of the grid; they are scored as they are."""
    maps, gts, _, _, kinds = cases
    picked = range(0, len(maps), 12)
    border = []
    for k, i in enumerate(picked):
        gt = gts[i].copy()
        gt[:, 2 if k % 2 else 3] = SIZE  # right or bottom edge on the border
        if k % 3 == 0:
            gt[:, 2:] = SIZE
        border.append(gt)
    chosen = [maps[i] for i in picked]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        literal = np.array(list(pool.map(literal_best_iou, chosen, border, chunksize=4)))
    fast = np.concatenate([best_iou_curves(m[None], [g], cam_thresholds(), n_jobs=1) for m, g in zip(chosen, border)])
    np.testing.assert_array_equal(fast, literal)
    _check_same(fast, literal, [kinds[i] for i in picked])
    accuracy = BoxAccuracy()
    accuracy.update(np.stack(chosen), border)
    assert accuracy.compute().n_images == len(chosen)
