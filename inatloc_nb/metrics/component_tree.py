"""Every contour box of every binarisation of a quantised score map, in one pass.

The protocol binarises a quantised map ``q`` (uint8) as ``q > c`` for up to 1,000 cutoffs
``c`` and boxes every contour OpenCV's ``findContours(RETR_TREE, CHAIN_APPROX_SIMPLE)``
returns. Those contours are exactly

- one *outer border* per 8-connected foreground component; its bounding rectangle is the
  component's bounding box;
- one *hole border* per 4-connected background component that does not touch the image
  border (OpenCV pads the image with a zero frame, so background touching the border is
  the outside); the border runs along the foreground pixels around the hole, so its
  rectangle is the hole's bounding box grown by one pixel on each side.

Foreground components only merge as ``c`` decreases and background components only merge
as ``c`` increases, so two union-find sweeps over the pixels (a component tree each way)
give the bounding box of every contour at every cutoff. The best IoU against the
ground-truth boxes is computed once per distinct cutoff and spread to every threshold that
uses it. The kernels are compiled with numba and release the GIL, so a thread pool runs
several maps at once.
"""
from __future__ import annotations

import numpy as np
from numba import njit

#: Number of grey levels of a quantised map.
N_LEVELS = 256


@njit(cache=True, nogil=True, inline="always")
def _find(parent: np.ndarray, x: int) -> int:
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
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


@njit(cache=True, nogil=True, inline="always")
def _deactivate(r, active, pos, n_active):
    if pos[r] < 0:
        return n_active
    last = active[n_active - 1]
    active[pos[r]] = last
    pos[last] = pos[r]
    pos[r] = -1
    return n_active - 1


@njit(cache=True, nogil=True, inline="always")
def _join(root, other, x, y, parent, size, box, active, pos, n_active):
    """Join new pixel ``(x, y)`` (already under ``root``, or -1 while on its own) with ``other``'s set.

    Returns the new root and active count. The larger set wins (the outside set is the
    largest of all, so it never enters the active list); the losing root leaves it.
    """
    rb = _find(parent, other)
    if root < 0:
        size[rb] += 1
        box[rb, 0] = min(box[rb, 0], x)
        box[rb, 1] = min(box[rb, 1], y)
        box[rb, 2] = max(box[rb, 2], x)
        box[rb, 3] = max(box[rb, 3], y)
        return rb, n_active
    if rb == root:
        return root, n_active
    ra = root
    if size[ra] < size[rb]:
        ra, rb = rb, ra
    parent[rb] = ra
    size[ra] += size[rb]
    box[ra, 0] = min(box[ra, 0], box[rb, 0])
    box[ra, 1] = min(box[ra, 1], box[rb, 1])
    box[ra, 2] = max(box[ra, 2], box[rb, 2])
    box[ra, 3] = max(box[ra, 3], box[rb, 3])
    return ra, _deactivate(rb, active, pos, n_active)


@njit(cache=True, nogil=True)
def _sweep(order, level_start, height, width, ascending, need, gt, result, work):
    """One component-tree sweep; writes the best contour IoU per needed cutoff into ``result``.

    Pixels live on a grid padded by a one-pixel frame (``pid = (y + 1) * (width + 2) + x + 1``).
    Descending (foreground, 8-connected): after adding level ``v`` the foreground is
    ``q > v - 1``; the frame is never added. Ascending (background, 4-connected): after
    adding level ``v`` the background is ``q <= v``; the frame belongs from the start to
    the outside set, so components reaching the image border leave the active list.
    ``result[c]`` stays -1 when the binarisation at cutoff ``c`` has no contour of this kind.
    """
    parent, size, box, active, pos, added = work
    stride = width + 2
    n_pad = (height + 2) * stride
    outside = n_pad
    pos[:] = -1
    added[:] = False
    parent[outside] = outside
    size[outside] = n_pad
    if ascending:
        for py in range(height + 2):
            for px in (0, width + 1):
                added[py * stride + px] = True
                parent[py * stride + px] = outside
        for px in range(width + 2):
            for py in (0, height + 1):
                added[py * stride + px] = True
                parent[py * stride + px] = outside
        levels = range(N_LEVELS)
        offset = 0
        grow = 1
    else:
        levels = range(N_LEVELS - 1, 0, -1)
        offset = -1
        grow = 0
    # 8-neighbours in ring order (N, NE, E, SE, S, SW, W, NW): ring-adjacent ones touch,
    # so one union per run of added neighbours joins all 8-connected foreground around p.
    ring = np.array((-stride, -stride + 1, 1, stride + 1, stride, stride - 1, -1, -stride - 1))
    cross = np.array((-stride, 1, stride, -1))
    diag = np.array((-stride - 1, -stride + 1, stride + 1, stride - 1))  # between cross[j - 1] and cross[j]
    n_active = 0
    changed = True
    best = -1.0
    for v in levels:
        for k in range(level_start[v], level_start[v + 1]):
            p = order[k]
            y = p // width
            x = p - y * width
            pid = (y + 1) * stride + x + 1
            added[pid] = True
            changed = True
            root = -1
            if ascending:
                # 4-neighbours N, E, S, W; one already joins its predecessor when the
                # diagonal pixel between them is background too.
                for j in range(4):
                    if added[pid + cross[j]] and not (added[pid + cross[j - 1]] and added[pid + diag[j]]):
                        root, n_active = _join(root, pid + cross[j], x, y, parent, size, box, active, pos, n_active)
                if root < 0 and added[pid + cross[0]]:  # all four chained: join any of them
                    root, n_active = _join(root, pid + cross[0], x, y, parent, size, box, active, pos, n_active)
            else:
                prev = added[pid + ring[7]]
                for j in range(8):
                    cur = added[pid + ring[j]]
                    if cur and not prev:
                        root, n_active = _join(root, pid + ring[j], x, y, parent, size, box, active, pos, n_active)
                    prev = cur
                if root < 0 and prev:  # every neighbour added: one run without a start
                    root, n_active = _join(root, pid + ring[0], x, y, parent, size, box, active, pos, n_active)
            if root < 0:  # a new component
                root = pid
                size[pid] = 1
                box[pid, 0] = x
                box[pid, 1] = y
                box[pid, 2] = x
                box[pid, 3] = y
                pos[pid] = n_active
                active[n_active] = pid
                n_active += 1
            parent[pid] = root
        c = v + offset
        if not need[c]:
            continue
        if changed:
            best = -1.0
            for a in range(n_active):
                r = active[a]
                x0 = box[r, 0] - grow
                y0 = box[r, 1] - grow
                x1 = min(box[r, 2] + grow + 1, width - 1)
                y1 = min(box[r, 3] + grow + 1, height - 1)
                iou = _best_iou_with_gt(x0, y0, x1, y1, gt)
                if iou > best:
                    best = iou
            changed = False
        result[c] = best


@njit(cache=True, nogil=True)
def _map_best_iou(q, cutoffs, gt, out, work):
    """Best IoU over all contour boxes x all GT boxes at each cutoff of one map."""
    height, width = q.shape
    n = height * width
    flat = q.ravel()
    counts = np.zeros(N_LEVELS + 1, np.int64)
    for p in range(n):
        counts[flat[p] + 1] += 1
    level_start = np.cumsum(counts)
    fill = level_start[:-1].copy()
    order = np.empty(n, np.int64)
    for p in range(n):
        v = flat[p]
        order[fill[v]] = p
        fill[v] += 1
    need = np.zeros(N_LEVELS, np.bool_)
    for c in cutoffs:
        need[c] = True
    outer = np.full(N_LEVELS, -1.0)
    holes = np.full(N_LEVELS, -1.0)
    _sweep(order, level_start, height, width, False, need, gt, outer, work)
    _sweep(order, level_start, height, width, True, need, gt, holes, work)
    no_contour = _best_iou_with_gt(0, 0, 0, 0, gt)
    for i in range(cutoffs.shape[0]):
        c = cutoffs[i]
        if outer[c] < 0:
            out[i] = no_contour
        else:
            out[i] = max(outer[c], holes[c])


@njit(cache=True, nogil=True)
def batch_best_iou(q, cutoffs, gt, gt_start, out):
    """Best contour IoU per threshold for a batch of quantised maps.

    Args:
        q: (B, H, W) uint8 quantised maps.
        cutoffs: (B, T) int64 cutoffs ``int(t * q.max())``, each below 256.
        gt: (M, 4) int64 ground-truth boxes of all images, concatenated.
        gt_start: (B + 1,) int64 offsets of each image's boxes in ``gt``.
        out: (B, T) float64, filled with the best IoU at each threshold.
    """
    n_maps, height, width = q.shape
    n_nodes = (height + 2) * (width + 2) + 1
    work = (
        np.empty(n_nodes, np.int32),  # parent
        np.empty(n_nodes, np.int32),  # size
        np.empty((n_nodes, 4), np.int32),  # bounding box x0, y0, x1, y1
        np.empty(n_nodes, np.int32),  # active roots
        np.empty(n_nodes, np.int32),  # position in the active list, -1 if absent
        np.empty(n_nodes, np.bool_),  # added
    )
    for b in range(n_maps):
        _map_best_iou(q[b], cutoffs[b], gt[gt_start[b]:gt_start[b + 1]], out[b], work)
