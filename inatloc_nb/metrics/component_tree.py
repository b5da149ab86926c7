"""Every contour box of every binarisation of a quantised score map, in two sweeps.

The protocol binarises a quantised map ``q`` (uint8) as ``q > c`` for up to 1,000 cutoffs
``c`` and boxes every contour OpenCV's ``findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``
returns. Those contours are exactly

- one *outer border* per 8-connected foreground component; its bounding rectangle is the
  component's bounding box;
- one *hole border* per 4-connected background component that does not touch the image
  border (OpenCV pads the image with a zero frame, so background touching the border is
  the outside); the border runs along the foreground pixels around the hole, so its
  rectangle is the hole's bounding box grown by one pixel on each side.

A quantised map has at most 256 grey levels and every cutoff is below its maximum ``top``,
so the 1,000 thresholds fall on at most ``top`` distinct binarisations ``q > c``,
``c = 0 .. top - 1``. Foreground components only merge as ``c`` decreases and background
components only merge as ``c`` increases, so two union-find sweeps over the pixels, one
grey level at a time (pixels sorted by a counting sort, raster order within a level), give
the bounding box of every contour of every binarisation. After each level the best IoU of
the contours against the ground-truth boxes is updated, recomputing it only for the
components whose box changed.

Taking pixels as closed unit squares, the Euler number of the foreground is its number of
8-connected components minus its number of holes, and adding a pixel changes it by an
amount that depends only on which of its 8 neighbours are foreground. The outer sweep
thereby counts the holes of every binarisation, and the hole sweep stops at the last one
that has a hole.

The kernels are compiled with numba (cached on disk next to this file, so a process pays
the compilation only once per installation) and release the GIL, so a thread pool runs
several maps at once.
"""
from __future__ import annotations

import numpy as np
from numba import njit

#: Number of grey levels of a quantised map.
N_LEVELS = 256


def _join_table(eight_connected: bool) -> np.ndarray:
    """Which neighbours a new pixel joins, for each ``added`` pattern of its 8 neighbours.

    Bit ``j`` of the pattern is neighbour ``j`` in ring order N, NE, E, SE, S, SW, W, NW.
    Row ``mask`` holds the number of joins, then the ring positions to join (columns 1-4),
    then, for the 8-connected foreground, the change of its Euler number V - E + F
    (column 5; 0 in the 4-connected table). Neighbours that are already connected through
    the ring need one join only:

    - 8-connected: ring-adjacent neighbours touch, so one join per run of added ones;
    - 4-connected: only N, E, S, W count, and one of them is connected to the previous
      one when the diagonal pixel between them is added too.
    """
    table = np.zeros((256, 6), np.int8)
    for mask in range(256):
        on = [bool(mask >> j & 1) for j in range(8)]
        if eight_connected:
            joins = [j for j in range(8) if on[j] and not on[j - 1]]
            if not joins and all(on):  # one run all around, without a start
                joins = [0]
            # the new square adds its corners and edges not shared with a neighbour
            new_corners = sum(not (on[j] or on[j + 1] or on[(j + 2) % 8]) for j in (0, 2, 4, 6))
            new_edges = 4 - sum(on[j] for j in (0, 2, 4, 6))
            table[mask, 5] = new_corners - new_edges + 1
        else:
            joins = [j for j in (0, 2, 4, 6) if on[j] and not (on[j - 2] and on[j - 1])]
            if not joins and all(on[j] for j in (0, 2, 4, 6)):  # all four chained
                joins = [0]
        table[mask, 0] = len(joins)
        table[mask, 1 : 1 + len(joins)] = joins
    return table


_JOIN_8 = _join_table(eight_connected=True)
_JOIN_4 = _join_table(eight_connected=False)


@njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, x: np.uint64) -> np.uint64:
    """Root of ``x``'s set, halving the path; the usual one-step path is only read."""
    r = np.uint64(parent[x])
    if parent[r] == r:
        return r
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = np.uint64(parent[x])
    return x


@njit(cache=True, nogil=True)
def box_iou(ax0, ay0, ax1, ay1, bx0, by0, bx1, by1) -> float:
    """IoU of two inclusive-pixel boxes; a non-positive denominator gives 0 (as the protocol)."""
    iw = max(0, min(ax1, bx1) - max(ax0, bx0) + 1)
    ih = max(0, min(ay1, by1) - max(ay0, by0) + 1)
    inter = iw * ih
    denom = (ax1 - ax0 + 1) * (ay1 - ay0 + 1) + (bx1 - bx0 + 1) * (by1 - by0 + 1) - inter
    if denom <= 0:
        return 0.0
    return inter / denom


@njit(cache=True, nogil=True)
def _best_iou_with_gt(x0, y0, x1, y1, gt) -> float:
    best = 0.0
    for g in range(gt.shape[0]):
        iou = box_iou(x0, y0, x1, y1, gt[g, 0], gt[g, 1], gt[g, 2], gt[g, 3])
        if iou > best:
            best = iou
    return best


@njit(cache=True, nogil=True, boundscheck=False)
def _sweep(order, xs, ys, level_start, top, height, width, holes, table, gt, result, hole_count, work):
    """One component-tree sweep; ``result[c]`` = best contour IoU of binarisation ``q > c``.

    Pixels live on a grid padded by a one-pixel frame (``pid = (y + 1) * (width + 2) + x + 1``)
    and are added one grey level at a time; ``active`` lists the roots of the components
    that have a contour:

    - outer borders (``holes=False``): levels ``top .. 1`` (``top = q.max()``), 8-connected;
      after level ``v`` the foreground is ``q > v - 1``. The frame is never added. The
      sweep also writes the number of holes of each binarisation (components minus Euler
      number) into ``hole_count``.
    - hole borders (``holes=True``): levels ``0 .. top - 1``, 4-connected; after level ``v``
      the background is ``q <= v``. The frame belongs from the start to the outside set,
      which is never a hole; components that join it leave the active list.

    ``result[c]`` stays -1 when binarisation ``c`` has no contour of this kind.
    """
    parent, rank, box, active, pos, added, iou, dirty = work
    stride = width + 2
    n_pad = (height + 2) * stride
    outside = n_pad
    added[:] = 0
    parent[outside] = outside
    rank[outside] = 127  # outranks every component, so it stays the root when they join it
    box[outside, 0] = -1  # covers the image: pixels joining the outside change no box
    box[outside, 1] = -1
    box[outside, 2] = width
    box[outside, 3] = height
    if holes:
        for py in range(height + 2):
            for px in (0, width + 1):
                added[py * stride + px] = 1
                parent[py * stride + px] = outside
        for px in range(width + 2):
            for py in (0, height + 1):
                added[py * stride + px] = 1
                parent[py * stride + px] = outside
    grow = 1 if holes else 0
    # Unsigned offsets: indices stay unsigned, so numba emits no negative-index wraparound.
    ring = np.array((-stride, -stride + 1, 1, stride + 1, stride, stride - 1, -1, -stride - 1)).astype(np.uint64)
    n_active = 0
    euler = 0
    best = -1.0
    for i in range(top):
        v = i if holes else top - i
        cutoff = v if holes else v - 1
        for k in range(level_start[v], level_start[v + 1]):
            p = np.uint64(order[k])
            x = xs[k]
            y = ys[k]
            added[p] = 1
            mask = (
                added[p + ring[0]]
                | added[p + ring[1]] << 1
                | added[p + ring[2]] << 2
                | added[p + ring[3]] << 3
                | added[p + ring[4]] << 4
                | added[p + ring[5]] << 5
                | added[p + ring[6]] << 6
                | added[p + ring[7]] << 7
            )
            n_join = table[mask, 0]
            euler += table[mask, 5]
            if n_join == 0:  # a new component
                parent[p] = p
                rank[p] = 0
                box[p, 0] = x
                box[p, 1] = y
                box[p, 2] = x
                box[p, 3] = y
                dirty[p] = True
                pos[p] = n_active
                active[n_active] = p
                n_active += 1
                continue
            root = _find(parent, p + ring[table[mask, 1]])
            for j in range(2, n_join + 1):  # the new pixel connects several components
                other = _find(parent, p + ring[table[mask, j]])
                if other == root:
                    continue
                if rank[root] < rank[other]:
                    root, other = other, root
                elif rank[root] == rank[other]:
                    rank[root] += 1
                parent[other] = root
                for e in range(2):
                    box[root, e] = min(box[root, e], box[other, e])
                    box[root, e + 2] = max(box[root, e + 2], box[other, e + 2])
                dirty[root] = True
                last = active[n_active - 1]  # the absorbed root leaves the active list
                active[pos[other]] = last
                pos[last] = pos[other]
                n_active -= 1
            parent[p] = root
            if x < box[root, 0] or x > box[root, 2] or y < box[root, 1] or y > box[root, 3]:
                box[root, 0] = min(box[root, 0], x)
                box[root, 1] = min(box[root, 1], y)
                box[root, 2] = max(box[root, 2], x)
                box[root, 3] = max(box[root, 3], y)
                dirty[root] = True
        if level_start[v] < level_start[v + 1]:  # an empty level changes nothing
            best = -1.0
            for a in range(n_active):
                r = active[a]
                if dirty[r]:
                    x1 = min(box[r, 2] + grow + 1, width - 1)
                    y1 = min(box[r, 3] + grow + 1, height - 1)
                    iou[r] = _best_iou_with_gt(box[r, 0] - grow, box[r, 1] - grow, x1, y1, gt)
                    dirty[r] = False
                best = max(best, iou[r])
        result[cutoff] = best
        if not holes:
            hole_count[cutoff] = n_active - euler


@njit(cache=True, nogil=True, boundscheck=False)
def _map_best_iou(q, cutoffs, gt, out, work, order, xs, ys, join_8, join_4):
    """Best IoU over all contour boxes x all GT boxes at each cutoff of one map."""
    height, width = q.shape
    stride = width + 2
    # counting sort of the pixels by grey level (raster order within a level)
    level_start = np.zeros(N_LEVELS + 1, np.int64)
    top = 0
    for y in range(height):
        for x in range(width):
            level_start[q[y, x] + 1] += 1
            top = max(top, q[y, x])
    for v in range(N_LEVELS):
        level_start[v + 1] += level_start[v]
    fill = level_start[:-1].copy()
    for y in range(height):
        for x in range(width):
            k = fill[q[y, x]]
            fill[q[y, x]] = k + 1
            order[k] = (y + 1) * stride + x + 1
            xs[k] = x
            ys[k] = y
    outer = np.full(N_LEVELS, -1.0)
    holes = np.full(N_LEVELS, -1.0)
    hole_count = np.zeros(N_LEVELS, np.int64)
    _sweep(order, xs, ys, level_start, top, height, width, False, join_8, gt, outer, hole_count, work)
    last_hole = top - 1
    while last_hole >= 0 and hole_count[last_hole] == 0:
        last_hole -= 1
    _sweep(order, xs, ys, level_start, last_hole + 1, height, width, True, join_4, gt, holes, hole_count, work)
    no_contour = _best_iou_with_gt(0, 0, 0, 0, gt)
    for i in range(cutoffs.shape[0]):
        c = cutoffs[i]
        out[i] = no_contour if outer[c] < 0 else max(outer[c], holes[c])


@njit(cache=True, nogil=True)
def _batch_best_iou(q, cutoffs, gt, gt_start, out, join_8, join_4):
    n_maps, height, width = q.shape
    n_nodes = (height + 2) * (width + 2) + 1
    work = (
        np.empty(n_nodes, np.uint32),  # parent
        np.empty(n_nodes, np.int8),  # rank
        np.empty((n_nodes, 4), np.int32),  # bounding box x0, y0, x1, y1 of a root
        np.empty(n_nodes, np.uint32),  # active roots
        np.empty(n_nodes, np.int32),  # position of a root in the active list
        np.empty(n_nodes, np.uint8),  # added
        np.empty(n_nodes, np.float64),  # best IoU of a root's contour box
        np.empty(n_nodes, np.bool_),  # a root's box changed since its IoU was computed
    )
    n_pixels = height * width
    order = np.empty(n_pixels, np.uint32)
    xs = np.empty(n_pixels, np.int32)
    ys = np.empty(n_pixels, np.int32)
    for b in range(n_maps):
        _map_best_iou(q[b], cutoffs[b], gt[gt_start[b] : gt_start[b + 1]], out[b], work, order, xs, ys, join_8, join_4)


def batch_best_iou(q: np.ndarray, cutoffs: np.ndarray, gt: np.ndarray, gt_start: np.ndarray, out: np.ndarray) -> None:
    """Best contour IoU per threshold for a batch of quantised maps (releases the GIL).

    Args:
        q: (B, H, W) uint8 quantised maps.
        cutoffs: (B, T) int64 cutoffs ``int(t * q.max())``, each below 256.
        gt: (M, 4) int64 ground-truth boxes of all images, concatenated.
        gt_start: (B + 1,) int64 offsets of each image's boxes in ``gt``.
        out: (B, T) float64, filled with the best IoU at each threshold.
    """
    _batch_best_iou(q, cutoffs, gt, gt_start, out, _JOIN_8, _JOIN_4)
