"""Localization and classification metrics: MaxBoxAcc(V2), PxAP, analysis measures, accuracy.

MaxBoxAccV2 follows the Choe et al. (CVPR 2020) protocol exactly (see
:mod:`inatloc_nb.metrics.boxacc`) and runs on component-tree kernels
(:mod:`inatloc_nb.metrics.component_tree`) instead of one ``cv2.findContours`` per threshold.
"""
from inatloc_nb.metrics.analysis import analysis_table, image_analysis
from inatloc_nb.metrics.boxacc import BoxAccuracy, BoxAccuracyResult, best_iou_curves, contour_boxes, multiple_iou
from inatloc_nb.metrics.classification import localization_accuracy, topk_accuracy
from inatloc_nb.metrics.pxap import PxAP, PxAPResult
from inatloc_nb.metrics.scoremaps import (
    EVAL_SIZE,
    cam_thresholds,
    center_map,
    check_gt_boxes,
    check_score_maps,
    evaluation_maps,
    iter_score_maps,
    load_score_maps,
    normalize_scoremap,
    quantize,
    rescale_boxes,
    upsample_cams,
)

__all__ = [
    "EVAL_SIZE",
    "BoxAccuracy",
    "BoxAccuracyResult",
    "PxAP",
    "PxAPResult",
    "analysis_table",
    "best_iou_curves",
    "cam_thresholds",
    "center_map",
    "check_gt_boxes",
    "check_score_maps",
    "contour_boxes",
    "evaluation_maps",
    "image_analysis",
    "iter_score_maps",
    "load_score_maps",
    "localization_accuracy",
    "multiple_iou",
    "normalize_scoremap",
    "quantize",
    "rescale_boxes",
    "upsample_cams",
    "topk_accuracy",
]
