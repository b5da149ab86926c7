"""CAM-Agg (Sec. 5.1): species-level CAMs averaged over a coarser class.

For level k, the CAM-Agg map of an image is the mean of the CAMs of every species sharing
the image's level-k ancestor. A CAM is linear in the classifier weights
(``CAM_s = w_s . F``), so the mean of the group's CAMs is the CAM of the group's mean weight
vector: with the (n_species x n_level_classes) averaging matrix ``A_k``
(``A[s, c] = 1 / |c|`` for the species s of class c), ``W_k = A_k^T W``. One forward pass per
batch gives the feature maps; every level's maps follow from a matrix product. Top-1 at level k
sums the species probabilities of each class (``softmax(logits) @ 1[A_k > 0]``).

Needs a finished species-level run of a CAM model (``--model RUN_DIR``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs.run_model import load_run_model
from inatloc_nb.runs.runfolder import RunFolder, analysis_frame, metrics_block, run_identity

if TYPE_CHECKING:
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.hierarchies.taxonomy import Hierarchy
    from inatloc_nb.training.run_config import RunConfig


def averaging_matrix(hierarchy: Hierarchy, level: str) -> np.ndarray:
    """``A_k`` (n_species, n_classes at ``level``): 1 / class size where the species is in the class."""
    index = hierarchy.level_index(level)
    member = np.zeros((len(index), len(hierarchy.level_names(level))), dtype=np.float64)
    member[np.arange(len(index)), index] = 1.0
    return member / member.sum(0, keepdims=True)


def aggregated_cams(weights: Tensor, feats: Tensor, averaging: Tensor, class_idx: Tensor) -> Tensor:
    """CAM-Agg maps (B, h, w), float32: the CAMs of ``class_idx``'s species averaged
    (``weights`` (S, C)); each CAM as ``CAMNet.class_activation_maps`` computes it."""
    class_weights = averaging.T.to(torch.float32) @ weights.float()  # (n_classes, C)
    return (class_weights[class_idx][:, :, None, None] * feats.float()).mean(1)


def _species_model(config: RunConfig, dataset: WSOLDataset):
    from inatloc_nb.training.models import CAMNet

    if not config.model_run:
        raise InatlocError("cam-agg needs a finished species-level training run (--model RUN_DIR)")
    model, run_config, _ = load_run_model(config.model_run, device=config.device)
    finest = dataset.levels[0]
    if run_config.level != finest:
        raise InatlocError(f"{config.model_run}: cam-agg needs a model trained at {finest!r}, "
                           f"this one was trained at {run_config.level!r}")
    if not isinstance(model, CAMNet):
        raise InatlocError(f"{config.model_run}: cam-agg needs a CAM classifier, got {type(model).__name__}")
    return model, run_config


def run_cam_agg(config: RunConfig, dataset: WSOLDataset, out: str | Path,
                say: Callable[[str], None] = print, levels: Sequence[str] | None = None) -> dict[str, Any]:
    """Score CAM-Agg at every level (``dataset.levels`` by default); write the run folder.

    ``metrics.json`` holds one block per level under ``"per_level"`` and, at the top level,
    the keys of ``config.level``; ``cams/<split>.npz`` holds the raw maps at ``config.level``.
    """
    from inatloc_nb.core.progress import track
    from inatloc_nb.metrics.boxacc import BoxAccuracy
    from inatloc_nb.training.cam import CamSet, evaluation_maps
    from inatloc_nb.training.learner import build_dataloaders, labelled_items

    folder = RunFolder(out)

    levels = list(levels or dataset.levels)
    if config.level not in levels:
        levels.append(config.level)
    model, run_config = _species_model(config, dataset)
    device = next(model.parameters()).device
    finest = dataset.levels[0]
    folder.write_params(config, dataset.name, species_run=str(config.model_run), levels=levels)
    averaging = {lv: torch.as_tensor(averaging_matrix(dataset.hierarchy, lv), device=device) for lv in levels}
    dls = build_dataloaders(dataset, finest, run_config.image_size, config.batch_size,
                            device=device, num_workers=config.num_workers)
    per_level: dict[str, dict[str, Any]] = {lv: {} for lv in levels}
    frames = []
    weights = model.classifier.weight.detach()
    for split in config.eval_splits:
        say(f"CAM-Agg on {split} at {', '.join(levels)}")
        boxes, ids = dataset.gt_boxes(split), dataset.images(split)["image_id"].to_list()
        labels = {lv: dataset.labels(split, lv) for lv in levels}
        accuracy = {lv: BoxAccuracy() for lv in levels}
        correct = dict.fromkeys(levels, 0)
        kept: list[np.ndarray] = []
        dl = dls.test_dl(labelled_items(dataset, split, finest), with_labels=True, shuffle=False)
        start = 0
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            for xb, _ in track(dl, desc=f"CAM-Agg on {split}", unit="batch"):
                feats = model.feature_maps(xb.as_subclass(Tensor).float())
                probs = model.classifier(torch.flatten(model.pool(feats), 1)).softmax(1)
                stop = start + len(xb)
                for lv in levels:
                    target = torch.as_tensor(labels[lv][start:stop], device=device)
                    raw = aggregated_cams(weights, feats, averaging[lv], target)
                    raw = raw.cpu().numpy()
                    accuracy[lv].update(evaluation_maps(raw), boxes[start:stop])
                    coarse = probs @ (averaging[lv] > 0).to(probs)
                    correct[lv] += int((coarse.argmax(1) == target).sum())
                    if lv == config.level:
                        kept.append(raw)
                start = stop
        main = labels[config.level]
        cams = CamSet(split=split, level=config.level, image_ids=ids, raw=np.concatenate(kept), labels=main,
                      cam_classes=main, predictions=np.full(len(ids), -1),
                      top1_logits=np.full(len(ids), np.nan, np.float32))
        folder.save_cams(cams)
        for lv in levels:
            result = accuracy[lv].compute()
            per_level[lv][split] = metrics_block(result, top1=100.0 * correct[lv] / len(ids))
            if lv == config.level:
                frames.append(analysis_frame(cams.iter_maps(), boxes, ids, result, split))
    folder.write_analysis(frames)
    blocks = {lv: {**d.get("test", {}), **{k: v for k, v in d.items() if k != "test"}}
              for lv, d in per_level.items()}
    species_params = RunFolder(config.model_run).read_params()
    return folder.write_metrics(per_level[config.level],
                                **run_identity(config, species_params.get("n_train_images", 0)), per_level=blocks)
