"""Score maps and boxes on the evaluation grid: validation, normalisation, quantisation.

The rules follow the Choe et al. (CVPR 2020) protocol: maps are evaluated at 224 x 224,
min-max normalised to [0, 1], quantised as ``uint8(map * 255)`` and binarised at
``q > int(t * q.max())`` for ``t`` in ``np.arange(0, 1, 1 / n_thresholds)``.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inatloc_nb.core.errors import ScoreMapError

if TYPE_CHECKING:
    from torch import Tensor

#: Side of the square evaluation grid.
EVAL_SIZE = 224
#: Missing score-map files named in an error before the rest are only counted.
_MISSING_SHOWN = 20


def as_numpy(array: Any) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (detached, on the CPU)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def cam_thresholds(n_thresholds: int = 1000) -> np.ndarray:
    """The score-map thresholds ``np.arange(0, 1, 1 / n)`` exactly as the protocol builds them."""
    if n_thresholds < 1:
        raise ValueError(f"n_thresholds must be positive, got {n_thresholds}")
    thresholds = np.arange(0, 1, 1.0 / n_thresholds)
    if len(thresholds) != n_thresholds:
        raise ValueError(f"np.arange(0, 1, 1/{n_thresholds}) gives {len(thresholds)} thresholds")
    return thresholds


def normalize_scoremap(score_map: np.ndarray) -> np.ndarray:
    """Min-max normalise a map (or each map of a (B, H, W) stack) to [0, 1].

    Computed in the map's own float precision, as the reference does; a constant map
    becomes all zeros.
    """
    maps = np.array(as_numpy(score_map), copy=True)
    if maps.dtype.kind != "f":
        maps = maps.astype(np.float32)
    return _normalize_in_place(maps)


def _normalize_in_place(maps: np.ndarray) -> np.ndarray:
    """:func:`normalize_scoremap` of a float array, written over it (no temporary maps)."""
    axes = tuple(range(maps.ndim - 2, maps.ndim))
    maps -= maps.min(axis=axes, keepdims=True)
    high = maps.max(axis=axes, keepdims=True)
    flat = high == 0
    if flat.any():
        np.divide(maps, np.where(flat, 1, high), out=maps)
        maps[np.broadcast_to(flat, maps.shape)] = 0
    else:
        np.divide(maps, high, out=maps)
    return maps


def read_score_map(path: str | Path, image_id: str | None = None) -> np.ndarray:
    """One 2-D score map from a ``.npy`` file as native-byte-order float32 or float64.

    Any byte order is accepted, float16 becomes float32, integer and boolean maps become
    float32, and singleton axes are dropped ((1, H, W) or (H, W, 1) become (H, W)). Raises
    ScoreMapError naming the file and ``image_id`` when the file is empty, unreadable, not a
    numeric 2-D array, empty, or holds NaN or infinite values.
    """
    path = Path(path)
    what = f"{path} (image {image_id!r})" if image_id is not None else str(path)
    if path.is_dir():
        raise ScoreMapError(f"{what}: is a folder, not a .npy score map")
    if path.is_file() and path.stat().st_size == 0:
        raise ScoreMapError(f"{what}: empty file (0 bytes); write the map again with numpy.save")
    try:
        smap = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ScoreMapError(f"{what}: not a readable .npy array ({exc}); write it with numpy.save") from None
    if not isinstance(smap, np.ndarray):
        raise ScoreMapError(f"{what}: holds several arrays (.npz); save one 2-D map per .npy file")
    if smap.dtype.kind not in "fiub":
        raise ScoreMapError(f"{what}: score map must be numeric, got dtype {smap.dtype}")
    if smap.size == 0:
        raise ScoreMapError(f"{what}: empty array of shape {smap.shape}")
    if smap.ndim > 2:
        smap = smap.squeeze()
    if smap.ndim != 2:
        raise ScoreMapError(f"{what}: score map must be a 2-D (H, W) array, got shape {smap.shape}")
    native = smap.dtype.newbyteorder("=")
    if smap.dtype.kind != "f" or native.itemsize < 4:
        native = np.dtype(np.float32)
    smap = smap.astype(native, copy=False)
    if not np.isfinite(smap).all():
        raise ScoreMapError(f"{what}: contains NaN or infinite values")
    return smap


def check_score_map_range(smap: np.ndarray, what: str) -> None:
    """ScoreMapError naming ``what`` when a map that is not normalised leaves [0, 1]."""
    low, high = float(smap.min()), float(smap.max())
    if low < 0 or high > 1:
        raise ScoreMapError(f"{what}: values outside [0, 1] (min {low:.4g}, max {high:.4g}); "
                            "min-max normalise the maps (inatloc-nb evaluate --normalize)")


def iter_score_maps(folder: Path, image_ids: list[str], size: int,
                    original_sizes: list[tuple[int, int]] | None = None, normalize: bool = True,
                    chunk: int = 256) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, maps)``: (n, size, size) chunks of the maps read from
    ``folder/<id without extension>.npy``, resized when needed, so a whole split never sits in
    memory at once.

    Maps keep their float precision (float16 becomes float32; a chunk mixing float32 and
    float64 is read as float64), since quantisation depends on it.

    A map of ``size`` x ``size`` is used as is; one at the image's original size
    (``original_sizes``: (width, height) per image) or any other size not smaller than
    ``size`` on both sides is resized with ``cv2.resize`` (bilinear); one smaller than
    ``size`` on both sides is a native-resolution CAM and goes through
    :func:`evaluation_maps` (bicubic upsampling, min-max normalisation), like
    stored CAMs. Every missing file is reported in one ScoreMapError before anything is read;
    a damaged or invalid one (:func:`read_score_map`), or with
    ``normalize=False`` a map outside [0, 1], is named with its image id.
    """
    import cv2

    from inatloc_nb.core.progress import track

    paths = [folder / (str(Path(image_id).with_suffix("")) + ".npy") for image_id in image_ids]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise ScoreMapError(f"{len(missing)} score map files missing under {folder}: {shown}{more}")
    with track(total=len(paths), desc="scoring score maps", unit="map") as bar:
        for start in range(0, len(paths), chunk):
            maps = []
            for i in range(start, min(start + chunk, len(paths))):
                smap = read_score_map(paths[i], image_ids[i])
                original = original_sizes is not None and smap.shape == original_sizes[i][::-1]
                if smap.shape[0] < size and smap.shape[1] < size and not original:
                    smap = evaluation_maps(smap[None], size)[0]
                elif smap.shape != (size, size):
                    smap = cv2.resize(smap, (size, size))
                if not normalize:
                    check_score_map_range(smap, f"{paths[i]} (image {image_ids[i]!r})")
                maps.append(smap)
            yield start, np.stack(maps)
            bar.update(len(maps))


def load_score_maps(folder: Path, image_ids: list[str], size: int,
                    original_sizes: list[tuple[int, int]] | None = None, normalize: bool = True) -> np.ndarray:
    """All maps of :func:`iter_score_maps` as one (N, size, size) array (small folders)."""
    return np.concatenate([maps for _, maps in iter_score_maps(folder, image_ids, size, original_sizes, normalize)])


def check_score_maps(score_maps: Any, normalize: bool = False) -> np.ndarray:
    """Validate a (B, H, W) stack of score maps; return it as float32/float64 in [0, 1].

    Raises ScoreMapError for a wrong shape, a non-float dtype, non-finite values (naming
    the maps), or values outside [0, 1] when ``normalize`` is False.
    """
    maps = as_numpy(score_maps)
    if maps.ndim != 3 or 0 in maps.shape[1:]:
        raise ScoreMapError(f"score maps must have shape (B, H, W), got {maps.shape}")
    if maps.dtype.kind != "f":
        raise ScoreMapError(f"score maps must be floating point, got dtype {maps.dtype}")
    if maps.dtype not in (np.float32, np.float64):
        maps = maps.astype(np.float32)
    # one pass of min and max per map: NaN propagates into both, an infinity shows in one
    low, high = maps.min(axis=(1, 2)), maps.max(axis=(1, 2))
    finite = np.isfinite(low) & np.isfinite(high)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ScoreMapError(f"score maps at batch positions {_listing(bad)} contain NaN or infinite values")
    if normalize:
        return normalize_scoremap(maps)
    inside = (low >= 0) & (high <= 1)
    if not inside.all():
        bad = np.flatnonzero(~inside)
        raise ScoreMapError(
            f"score maps at batch positions {_listing(bad)} have values outside [0, 1] "
            f"(min {low.min():.4g}, max {high.max():.4g}); pass normalize=True to min-max normalise"
        )
    return maps


def quantize(score_maps: np.ndarray) -> np.ndarray:
    """``uint8(map * 255)`` in the map's precision, exactly as the protocol."""
    return (score_maps * 255).astype(np.uint8)


def threshold_cutoffs(quantized: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(B, T) integer cutoffs ``int(t * q.max())`` per map; pixels ``q > cutoff`` are foreground."""
    q_max = quantized.reshape(len(quantized), -1).max(axis=1).astype(np.float64)
    return (thresholds[None, :] * q_max[:, None]).astype(np.int64)


def binarize(score_map: np.ndarray, threshold: float) -> np.ndarray:
    """The protocol's binary map of one score map in [0, 1] at ``threshold``, quantised in the
    map's own float precision (float64 evaluation maps stay float64)."""
    maps = np.asarray(score_map)
    q = quantize((maps if maps.dtype.kind == "f" else maps.astype(np.float32))[None])
    cutoff = threshold_cutoffs(q, np.array([threshold], dtype=np.float64))[0, 0]
    return q[0] > cutoff


def check_gt_boxes(gt_boxes: Sequence[Any], n_images: int) -> list[np.ndarray]:
    """Validate one (n_i, 4) integer box array (x0, y0, x1, y1 inclusive) per image."""
    if len(gt_boxes) != n_images:
        raise ScoreMapError(f"got {len(gt_boxes)} ground-truth box arrays for {n_images} score maps")
    checked = []
    for i, boxes in enumerate(gt_boxes):
        arr = as_numpy(boxes)
        if arr.shape == (4,):
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != 4 or arr.shape[0] == 0:
            raise ScoreMapError(f"ground-truth boxes of batch position {i} must have shape (n>=1, 4), got {arr.shape}")
        checked.append(arr)
    if not checked:
        return checked
    flat = np.concatenate(checked)
    if flat.dtype.kind not in "iu" and not np.array_equal(flat, np.trunc(flat)):
        raise ScoreMapError(f"ground-truth boxes at batch positions {_listing(_owners(checked, flat != np.trunc(flat)))} are not integers")
    flat = flat.astype(np.int64)
    inverted = (flat[:, 2] < flat[:, 0]) | (flat[:, 3] < flat[:, 1])
    if inverted.any():
        raise ScoreMapError(
            f"ground-truth boxes at batch positions {_listing(_owners(checked, inverted))} are not "
            "(x0, y0, x1, y1) with x0 <= x1 and y0 <= y1"
        )
    return np.split(flat, np.cumsum([len(a) for a in checked[:-1]]))


def _owners(arrays: list[np.ndarray], flags: np.ndarray) -> np.ndarray:
    """Indices of the arrays whose rows (in concatenated order) have a flag set."""
    rows = flags.reshape(len(flags), -1).any(axis=1)
    owner = np.repeat(np.arange(len(arrays)), [len(a) for a in arrays])
    return np.unique(owner[rows])


def rescale_boxes(boxes: Any, width: float, height: float, size: int = EVAL_SIZE) -> np.ndarray:
    """Rescale (n, 4) boxes from a ``width`` x ``height`` image to the ``size`` grid.

    Each coordinate is computed as ``coord * size / original`` in float64 and truncated to
    an integer, as the protocol's ``resize_bbox``.
    """
    arr = as_numpy(boxes).astype(np.float64).reshape(-1, 4)
    if width <= 0 or height <= 0:
        raise ScoreMapError(f"image size must be positive, got width={width}, height={height}")
    scale = np.array([size, size, size, size], dtype=np.float64)
    denom = np.array([width, height, width, height], dtype=np.float64)
    return np.trunc(arr * scale / denom).astype(np.int64)


def center_map(size: int = EVAL_SIZE, sigma: float | None = None) -> np.ndarray:
    """The Center baseline map: an isotropic Gaussian at the grid centre, min-max normalised.

    ``C_ij = exp(-((i - (M-1)/2)^2 + (j - (M-1)/2)^2) / (2 sigma^2))`` with ``M = size`` and
    ``sigma = M / 4`` by default; float64 (size, size).
    """
    sigma = size / 4 if sigma is None else sigma
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    dist2 = coords[:, None] ** 2 + coords[None, :] ** 2
    return normalize_scoremap(np.exp(-dist2 / (2 * sigma**2)))


def _listing(indices: np.ndarray, limit: int = 20) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return shown if len(indices) <= limit else f"{shown} and {len(indices) - limit} more"


#: Maps upsampled and normalised together inside ``evaluation_maps``.
_BLOCK = 8


def upsample_cams(raw: np.ndarray, size: int = EVAL_SIZE, out: np.ndarray | None = None) -> np.ndarray:
    """(B, size, size) float64: each (h, w) map, widened to float64 as the reference does,
    resized by ``cv2.resize(..., INTER_CUBIC)``; into ``out`` when given."""
    import cv2

    maps = np.asarray(raw, dtype=np.float64)
    if maps.ndim != 3:
        raise ScoreMapError(f"raw maps must have shape (B, h, w), got {maps.shape}")
    out = _output(out, len(maps), size)
    for i, cam in enumerate(maps):
        cv2.resize(cam, (size, size), dst=out[i], interpolation=cv2.INTER_CUBIC)  # no temporary map
    return out


def evaluation_maps(raw: np.ndarray | Tensor, size: int = EVAL_SIZE, out: np.ndarray | None = None) -> np.ndarray:
    """The evaluation maps of raw (B, h, w) maps: bicubic upsampling to ``size``, then min-max
    normalisation per map, in float64 as the reference's ``t2n`` / ``normalize_scoremap`` path
    (values in [0, 1]; a constant map becomes zeros). Written into ``out`` when given (a
    C-contiguous float64 (B, size, size) array, e.g. reused from chunk to chunk).

    The one path from stored or freshly computed maps to what the metric and every view see.
    """
    raw = np.asarray(as_numpy(raw), dtype=np.float64)
    if raw.ndim != 3:
        raise ScoreMapError(f"raw maps must have shape (B, h, w), got {raw.shape}")
    out = _output(out, len(raw), size)
    for start in range(0, len(raw), _BLOCK):  # a few maps at a time stay in cache
        block = out[start : start + _BLOCK]
        _normalize_in_place(upsample_cams(raw[start : start + _BLOCK], size, out=block))
    return out


def _output(out: np.ndarray | None, n: int, size: int) -> np.ndarray:
    """``out`` checked to be a C-contiguous float64 (n, size, size) array, or a new one."""
    if out is None:
        return np.empty((n, size, size), dtype=np.float64)
    if out.shape != (n, size, size) or out.dtype != np.float64 or not out.flags.c_contiguous:
        raise ScoreMapError(f"out must be a C-contiguous float64 array of shape {(n, size, size)}, "
                            f"got {out.dtype} {out.shape}")
    return out
