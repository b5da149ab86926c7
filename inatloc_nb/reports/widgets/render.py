"""Drawing for the explorers: binarised maps, coloured components, boxes, IoUs (OpenCV, no widgets).

Everything follows the evaluation protocol of :mod:`inatloc_nb.metrics`: maps on the
224 x 224 grid are quantised to uint8, binarised at ``q > int(t * q.max())``, and every
contour of the binary map gives a box.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from inatloc_nb.metrics.boxacc import contour_boxes, multiple_iou
from inatloc_nb.metrics.scoremaps import binarize

GT_COLOR = (40, 200, 40)        # RGB
BOX_COLOR = (230, 40, 40)
BEST_BOX_COLOR = (255, 215, 0)
_HEADER = 34                    # pixels of text above each panel


@dataclass(frozen=True)
class PanelState:
    """What one level's map shows at one threshold."""

    level: str
    threshold: float
    optimal_threshold: float
    n_components: int
    boxes: np.ndarray           # (n, 4) every contour box, protocol convention
    best_iou: float             # best IoU of any box with any GT box
    labels: np.ndarray          # (224, 224) int32 component labels, 0 = background


def analyse(level: str, score_map: np.ndarray, gt_boxes: np.ndarray, threshold: float,
            optimal_threshold: float) -> PanelState:
    """Components (8-connected), contour boxes and best IoU of ``score_map`` at ``threshold``."""
    binary = binarize(score_map, threshold)
    n_labels, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    boxes = contour_boxes(binary)
    best = float(multiple_iou(boxes, np.asarray(gt_boxes, dtype=np.int64)).max())
    return PanelState(level, float(threshold), float(optimal_threshold), n_labels - 1, boxes, best, labels)


def _palette(n: int) -> np.ndarray:
    """n + 1 RGB colours: black background, then distinct hues."""
    hues = (np.arange(n) * 0.618033988749895 % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hues, np.full(n, 200, np.uint8), np.full(n, 255, np.uint8)], axis=1)[None]
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]
    return np.vstack([np.zeros((1, 3), np.uint8), rgb])


def _boxes(canvas: np.ndarray, state: PanelState, gt_boxes: np.ndarray) -> None:
    for x0, y0, x1, y1 in np.asarray(gt_boxes):
        cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), GT_COLOR, 2)
    ious = multiple_iou(state.boxes, np.asarray(gt_boxes, dtype=np.int64)).max(axis=1)
    best = int(np.argmax(ious))
    for i, (x0, y0, x1, y1) in enumerate(state.boxes):
        color, width = (BEST_BOX_COLOR, 2) if i == best else (BOX_COLOR, 1)
        cv2.rectangle(canvas, (int(x0), int(y0)), (int(x1), int(y1)), color, width)


def _header(width: int, lines: list[str]) -> np.ndarray:
    header = np.full((_HEADER, width, 3), 255, np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(header, line, (4, 14 + 15 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return header


def overlay(state: PanelState, score_map: np.ndarray, gt_boxes: np.ndarray,
            image: np.ndarray | None = None) -> np.ndarray:
    """The CAM (jet colours) over the image, with GT (green), contour (red) and best (gold) boxes.

    ``image``: (224, 224, 3) RGB uint8 or None (the CAM alone is shown).
    """
    heat = cv2.applyColorMap((np.asarray(score_map) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    top = np.ascontiguousarray(heat if image is None else cv2.addWeighted(image, 0.5, heat, 0.5, 0))
    _boxes(top, state, gt_boxes)
    return top


def render_panel(state: PanelState, score_map: np.ndarray, gt_boxes: np.ndarray,
                 image: np.ndarray | None = None) -> np.ndarray:
    """One column: :func:`overlay` on top, the coloured components below, a caption above."""
    top = overlay(state, score_map, gt_boxes, image)
    bottom = np.ascontiguousarray(_palette(state.n_components)[state.labels])
    _boxes(bottom, state, gt_boxes)
    mark = "  (optimal)" if abs(state.threshold - state.optimal_threshold) < 5e-4 else ""
    header = _header(top.shape[1], [
        f"{state.level}: t={state.threshold:.3f}{mark}",
        f"t*={state.optimal_threshold:.3f}  comps={state.n_components}  IoU={state.best_iou:.2f}",
    ])
    return np.vstack([header, top, np.full((4, top.shape[1], 3), 255, np.uint8), bottom])


def compose(panels: list[np.ndarray], gap: int = 6) -> np.ndarray:
    """Panels side by side on a white background."""
    height = max(p.shape[0] for p in panels)
    spacer = np.full((height, gap, 3), 255, np.uint8)
    padded = [np.vstack([p, np.full((height - p.shape[0], p.shape[1], 3), 255, np.uint8)]) for p in panels]
    parts = [x for p in padded for x in (p, spacer)][:-1]
    return np.hstack(parts)


def to_png(rgb: np.ndarray) -> bytes:
    """PNG bytes of an RGB uint8 image."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
        raise ValueError("could not encode PNG")
    return buf.tobytes()
