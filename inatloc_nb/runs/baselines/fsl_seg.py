"""FSL-Seg (App. F.4): a box-supervised segmentation baseline trained on D_f only.

The backbone (28 x 28 maps at 224 input for the ResNets) ends in a 1 x 1 convolution and a
sigmoid, giving a score map S in [0, 1]^{h x w}. Each training image's boxes become a binary
mask Y (1 inside any box) that follows the image through the usual augmentation (resize,
random crop, flip) and is reduced to h x w by area averaging (a cell is positive when at least
half of it lies in a box). The loss is class-balanced per-pixel BCE, positives weighted
1 / |Y|_0 and negatives 1 / |1 - Y|_0, averaged over the batch. Training uses the ``val``
split (D_f), the SGD protocol of ``inatloc_nb.training.learner`` (10x-LR groups per
``config.lr_groups``) and ``config.schedule`` ("10epoch" in the paper: 10 epochs, LR / 10
every 3, timed per ``config.lr_decay``). Score maps are evaluated like CAMs on
``config.eval_splits``.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from inatloc_nb.core import progress
from inatloc_nb.runs.runfolder import RunFolder, analysis_frame, metrics_block, run_identity

if TYPE_CHECKING:
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.run_config import RunConfig


class SegNet(nn.Module):
    """``features`` followed by a 1 x 1 convolution (``classifier``) and a sigmoid: (B, h, w)."""

    def __init__(self, features: nn.Module, n_channels: int) -> None:
        super().__init__()
        self.features = features
        self.classifier = nn.Conv2d(n_channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.classifier(self.features(x)))[:, 0]


def box_mask(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """uint8 (height, width) mask, 1 inside any inclusive ``(x0, y0, x1, y1)`` box."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=np.int64).reshape(-1, 4):
        mask[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = 1
    return mask


def class_balance_weights(target: Tensor) -> Tensor:
    """Per-pixel weights of binary ``target`` (B, h, w): 1/|Y|_0 on positives, 1/|1-Y|_0 on negatives."""
    positives = target.flatten(1).sum(1).view(-1, 1, 1)
    negatives = target[0].numel() - positives
    return torch.where(target > 0.5, 1 / positives.clamp_min(1), 1 / negatives.clamp_min(1))


def balanced_bce(scores: Tensor, masks: Tensor) -> Tensor:
    """Class-balanced BCE of score maps (B, h, w) in [0, 1] against full-resolution masks (B, H, W)."""
    target = (F.adaptive_avg_pool2d(masks[:, None].float(), scores.shape[-2:])[:, 0] >= 0.5).float()
    loss = F.binary_cross_entropy(scores.float().clamp(1e-6, 1 - 1e-6), target, reduction="none")
    return (class_balance_weights(target) * loss).flatten(1).sum(1).mean()


def image_rows(dataset: WSOLDataset, split: str) -> list[list]:
    """``[image_id, width, height]`` per image of ``split``, in ``images(split)`` order (lists,
    since fastai maps transforms over tuples element-wise)."""
    return [list(row) for row in dataset.images(split).select("image_id", "width", "height").iter_rows()]


def _dataloaders(dataset: WSOLDataset, config: RunConfig, device: torch.device):
    """Loaders of (image, box mask) pairs: train and valid both on D_f (``val``)."""
    from fastai.data.block import DataBlock
    from fastai.data.transforms import IndexSplitter, Normalize
    from fastai.vision.core import PILMask, imagenet_stats
    from fastai.vision.data import MaskBlock

    from inatloc_nb.datasets.images import fastai_image_block
    from inatloc_nb.training.pipeline import protocol_item_tfms

    rows = image_rows(dataset, "val")
    grouped = dataset.boxes("val").group_by("image_id", maintain_order=True).agg("x0", "y0", "x1", "y1")
    boxes = {image_id: np.array(coords).T for image_id, *coords in grouped.iter_rows()}

    def get_y(row):  # un-annotated: fastai evaluates annotations of item functions
        image_id, width, height = row
        return PILMask.create(box_mask(boxes.get(image_id, np.zeros((0, 4))), width, height))

    block = DataBlock(
        blocks=(fastai_image_block(dataset.image_root), MaskBlock(codes=["background", "object"])),
        get_x=lambda row: dataset.image_path(row[0]),
        get_y=get_y,
        splitter=IndexSplitter(range(len(rows), 2 * len(rows))),
        item_tfms=protocol_item_tfms(config.image_size),
        batch_tfms=[Normalize.from_stats(*imagenet_stats)],
    )
    return block.dataloaders(rows + rows, bs=config.batch_size, device=device,
                             num_workers=0 if config.num_workers is None else config.num_workers)


def run_fsl_seg(config: RunConfig, dataset: WSOLDataset, out: str | Path,
                say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train FSL-Seg on D_f, score its maps on ``config.eval_splits``; write the run folder."""
    from fastai.learner import Learner
    from fastai.torch_core import set_seed

    from inatloc_nb.training.cam import CamSet, score_cams
    from inatloc_nb.training.device import default_device
    from inatloc_nb.training.learner import Reseed, Schedule, StepLR, param_groups, sgd_nesterov
    from inatloc_nb.training.models import build_backbone, prepare_for_device

    device = default_device() if config.device is None else torch.device(config.device)
    set_seed(config.seed, reproducible=True)
    schedule = Schedule.parse(config.schedule, config.lr_decay)
    dls = _dataloaders(dataset, config, device)
    features, n_channels = build_backbone(config.backbone, config.pretrained)
    model = prepare_for_device(SegNet(features, n_channels), device)
    base_lrs = [config.lr, 10 * config.lr]
    learn = Learner(dls, model, loss_func=balanced_bce, opt_func=sgd_nesterov, lr=config.lr,
                    splitter=partial(param_groups, lr_groups=config.lr_groups), wd_bn_bias=True,
                    cbs=[Reseed(config.seed), StepLR(base_lrs, schedule)])
    progress.install(learn)
    n_train = len(dls.train_ds)
    folder = RunFolder(out)
    folder.write_params(config, dataset.name, n_train_images=n_train, train_split="val")
    say(f"training FSL-Seg on D_f ({n_train} images, {schedule.epochs} epochs, lr {config.lr:g})")
    learn.fit(schedule.epochs)
    folder.save_model(learn.model)

    per_split, frames = {}, []
    model.eval()
    for split in config.eval_splits:
        say(f"scoring FSL-Seg maps on {split}")
        ids, boxes = dataset.images(split)["image_id"].to_list(), dataset.gt_boxes(split)
        dl = dls.test_dl(image_rows(dataset, split), shuffle=False, drop_last=False)
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            raw = [model(xb.as_subclass(Tensor).float()).float().cpu().numpy() for (xb,) in dl]
        cams = CamSet(split=split, level=dataset.levels[0], image_ids=ids, raw=np.concatenate(raw),
                      labels=dataset.labels(split, 0), cam_classes=np.full(len(ids), -1),
                      predictions=np.full(len(ids), -1), top1_logits=np.full(len(ids), np.nan, np.float32))
        folder.save_cams(cams)
        result = score_cams(cams, dataset)
        per_split[split] = metrics_block(result)
        frames.append(analysis_frame(cams.iter_maps(), boxes, ids, result, split))
    folder.write_analysis(frames)
    return folder.write_metrics(per_split, **run_identity(config, n_train))
