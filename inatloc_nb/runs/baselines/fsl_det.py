"""FSL-Det (App. F.5): a Faster R-CNN ResNet-50 detector trained on D_f boxes.

The paper trained the TensorFlow Object Detection API's ``faster_rcnn_resnet50_v1_640x640``
configuration. This is torchvision's ``FasterRCNN`` class set up like that configuration
(docs/protocol.md lists what differs):

- no FPN: one feature map, the ResNet-50 ``conv1``-``layer3`` trunk (stride 16, 1024
  channels); anchors of 64-512 px (scales 0.25-2 of 256) x aspect ratios 0.5, 1, 2;
- second stage: 14 x 14 RoI crops, 2 x 2 max-pooled, through ``layer4`` (stride 1) and
  global average pooling (the "C4" head); 300 proposals (RPN NMS 0.7; ``method_params``
  ``{"proposals": N}`` changes it), 64 sampled RoIs per image in training, up to 300
  detections (NMS 0.6), no score threshold;
- images resized keeping their aspect ratio so the longer side is ``detector_size(config)``
  (640 px at the protocol's 224), padded in the batch; random horizontal flips in training;
- momentum SGD (0.9, no weight decay) with the configuration's LR schedule: linear warmup
  from a third of the peak LR over the first 8 % of the steps (2000 of 25000), then cosine
  decay to 0 (``warmup_cosine``). The peak LR is ``config.lr`` (the configuration's 0.04 is
  for batch 64; configs/paper.yaml scales it to batch 32). The number of steps is
  ``Schedule.parse(config.schedule).epochs`` passes over D_f (the configuration's 25000
  steps of 64 COCO images are about 13.5 epochs of COCO).

One foreground class ("object") is trained on the ``val`` split (D_f) with every
ground-truth box of each image. ``pretrained=True`` starts from ImageNet ResNet-50 weights
(offline: a clear error naming the file to place in the torch cache).

Evaluation: the top-scoring detection per test image, mapped to the 224 x 224 evaluation grid
(pixel-inclusive, truncated), is scored with ``BoxAccuracy.update_boxes``, i.e. the same IoU
rules as MaxBoxAccV2 with the same box at every threshold; an image with no detection is
scored with the box (0, 0, 0, 0).

Training is a plain PyTorch loop with a progress bar rather than a fastai Learner: the
detector's forward takes images *and* targets and returns a dict of losses in training mode,
which does not fit the Learner's ``loss_func(model(x), y)`` contract.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.datasets.images import open_image
from inatloc_nb.runs.runfolder import RunFolder, metrics_block, run_identity

if TYPE_CHECKING:
    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.training.run_config import RunConfig

#: Side of the evaluation grid.
EVAL_SIZE = 224
#: The detector's input size (longer side) relative to the protocol's ``image_size``: 640 / 224.
DETECTOR_SIZE_RATIO = 640 / 224
#: Anchor sizes (px) and aspect ratios: the configuration's scales 0.25-2 of a 256 px anchor.
ANCHOR_SIZES = (64, 128, 256, 512)
ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: Warmup: the share of the steps and the starting LR relative to the peak (2000 / 25000 steps,
#: 0.013333 / 0.04).
WARMUP_FRACTION = 2000 / 25000
WARMUP_START = 0.013333 / 0.04
#: Momentum of the configuration's optimiser.
MOMENTUM = 0.9
#: Settable hyperparameters (``RunConfig.method_params``) and their defaults: ``proposals``,
#: the RPN proposals per image kept for the second stage (the configuration's 300).
DEFAULTS: dict[str, Any] = {"proposals": 300}


def detector_size(config: RunConfig) -> int:
    """The longer image side the detector trains and predicts at (640 at ``image_size`` 224)."""
    return round(config.image_size * DETECTOR_SIZE_RATIO)


def detector_hparams(config: RunConfig) -> dict[str, Any]:
    """``DEFAULTS`` updated by ``config.method_params``, checked."""
    unknown = sorted(set(config.method_params) - set(DEFAULTS))
    if unknown:
        raise InatlocError(f"method 'fsl-det': unknown hyperparameter(s) {', '.join(unknown)}; "
                           f"valid: {', '.join(DEFAULTS)}")
    hparams = {**DEFAULTS, **config.method_params}
    proposals = hparams["proposals"]
    if isinstance(proposals, bool) or not isinstance(proposals, int) or proposals < 1:
        raise InatlocError(f"method 'fsl-det': proposals must be an integer >= 1, got {proposals!r}")
    return hparams


def build_detector(size: int, pretrained: bool, proposals: int = DEFAULTS["proposals"]) -> nn.Module:
    """Faster R-CNN with a single-feature-map ResNet-50 C4 backbone and 2 classes
    (background, object) for images whose longer side is ``size``, keeping ``proposals``
    RPN proposals per image."""
    from torchvision.models import ResNet50_Weights, resnet50
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.ops import MultiScaleRoIAlign

    from inatloc_nb.training.models import load_pretrained
    from inatloc_nb.training.surgery import unit_stride

    net = resnet50(weights=None)
    if pretrained:
        net.load_state_dict(load_pretrained(ResNet50_Weights.IMAGENET1K_V1))
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
    trunk.out_channels = 1024
    unit_stride(net.layer4)
    box_head = nn.Sequential(nn.MaxPool2d(2, 2), net.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return FasterRCNN(
        trunk, num_classes=None, min_size=size, max_size=size,
        rpn_anchor_generator=AnchorGenerator((ANCHOR_SIZES,), (ASPECT_RATIOS,)),
        rpn_pre_nms_top_n_train=2000, rpn_pre_nms_top_n_test=2000,
        rpn_post_nms_top_n_train=proposals, rpn_post_nms_top_n_test=proposals, rpn_nms_thresh=0.7,
        box_roi_pool=MultiScaleRoIAlign(["0"], output_size=14, sampling_ratio=2),
        box_head=box_head, box_predictor=FastRCNNPredictor(2048, 2),
        box_batch_size_per_image=64, box_score_thresh=0.0, box_nms_thresh=0.6, box_detections_per_img=300,
    )


def warmup_cosine(step: int, total: int) -> float:
    """LR factor at ``step`` of ``total``: linear warmup from ``WARMUP_START`` to 1 over the
    first ``WARMUP_FRACTION`` of the steps, then cosine decay to 0."""
    warmup = max(1, round(WARMUP_FRACTION * total))
    if step < warmup:
        return WARMUP_START + (1 - WARMUP_START) * step / warmup
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


class DetectionImages(torch.utils.data.Dataset):
    """(image tensor in [0, 1], target dict) of one split; each image is resized keeping its
    aspect ratio so that its longer side is ``size``, its boxes with it."""

    def __init__(self, dataset: WSOLDataset, split: str, size: int, flip: bool) -> None:
        self.dataset, self.size, self.flip = dataset, size, flip
        self.rows = list(dataset.images(split).select("image_id", "width", "height").iter_rows())
        grouped = dataset.boxes(split).group_by("image_id", maintain_order=True).agg("x0", "y0", "x1", "y1")
        self.boxes = {image_id: np.array(coords, dtype=np.float32).T for image_id, *coords in grouped.iter_rows()}

    def __len__(self) -> int:
        return len(self.rows)

    def resized_shape(self, i: int) -> tuple[int, int]:
        """(width, height) of image ``i`` as the detector sees it."""
        _, width, height = self.rows[i]
        scale = self.size / max(width, height)
        return max(1, round(width * scale)), max(1, round(height * scale))

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image

        image_id, width, height = self.rows[i]
        new_w, new_h = self.resized_shape(i)
        im = open_image(self.dataset.image_path(image_id), image_id)
        pixels = np.asarray(im.resize((new_w, new_h), Image.BILINEAR))
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
        boxes = self.boxes.get(image_id, np.zeros((0, 4), np.float32)).copy()
        boxes[:, 2:] += 1  # inclusive pixel boxes -> continuous coordinates
        boxes *= np.array([new_w / width, new_h / height] * 2, dtype=np.float32)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = new_w - boxes[:, [2, 0]]
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return image, target


def _collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


def top_box(detections: dict[str, Tensor], shape: tuple[int, int]) -> np.ndarray:
    """The highest-scoring detection, made on an image of ``shape`` (width, height), as an
    inclusive (1, 4) box on the 224 x 224 evaluation grid, or (0, 4) without detections."""
    if len(detections["boxes"]) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    box = detections["boxes"][detections["scores"].argmax()].detach().cpu().double().numpy()
    box = box * np.array([EVAL_SIZE / shape[0], EVAL_SIZE / shape[1]] * 2)
    x0, y0 = np.trunc(box[:2])
    x1, y1 = np.maximum(np.ceil(box[2:]) - 1, [x0, y0])
    return np.clip([[x0, y0, x1, y1]], 0, EVAL_SIZE - 1).astype(np.int64)


def train_detector(model: nn.Module, loader, config: RunConfig, device: torch.device,
                   say: Callable[[str], None] = print, max_iters: int | None = None) -> list[float]:
    """Fit on ``loader`` for ``config.schedule``'s epochs with the warmup + cosine schedule
    (``warmup_cosine``) peaking at ``config.lr``; returns the mean loss per epoch.
    ``max_iters`` caps the iterations (the schedule then spans them)."""
    from inatloc_nb.core.progress import track
    from inatloc_nb.training.learner import Schedule

    epochs = Schedule.parse(config.schedule).epochs
    total = epochs * len(loader) if max_iters is None else min(max_iters, epochs * len(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=MOMENTUM, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: warmup_cosine(step, total))
    model.train()
    history, done = [], 0
    for epoch in range(epochs):
        losses = []
        for images, targets in track(loader, desc=f"epoch {epoch + 1}/{epochs}", unit="batch", show="bars"):
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            scheduler.step()
            losses.append(loss.item())
            done += 1
            if done >= total:
                break
        history.append(float(np.mean(losses)))
        say(f"epoch {epoch + 1}/{epochs}: loss {history[-1]:.4f}")
        if done >= total:
            break
    return history


def run_fsl_det(config: RunConfig, dataset: WSOLDataset, out: str | Path,
                say: Callable[[str], None] = print, max_iters: int | None = None) -> dict[str, Any]:
    """Train FSL-Det on D_f, score its top boxes on ``config.eval_splits``; write the run folder."""
    from fastai.torch_core import set_seed

    from inatloc_nb.core.progress import track
    from inatloc_nb.metrics.boxacc import BoxAccuracy
    from inatloc_nb.training.device import default_device

    device = default_device() if config.device is None else torch.device(config.device)
    set_seed(config.seed, reproducible=True)
    size = detector_size(config)
    model = build_detector(size, config.pretrained, detector_hparams(config)["proposals"]).to(device)
    workers = 0 if config.num_workers is None else config.num_workers
    train_set = DetectionImages(dataset, "val", size, flip=True)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                                         collate_fn=_collate, num_workers=workers)
    folder = RunFolder(out)
    folder.write_params(config, dataset.name, n_train_images=len(train_set), train_split="val")
    say(f"training FSL-Det on D_f ({len(train_set)} images at {size} px, peak lr {config.lr:g})")
    history = train_detector(model, loader, config, device, say, max_iters)
    folder.save_model(model)

    per_split = {}
    model.eval()
    for split in config.eval_splits:
        say(f"detecting on {split}")
        data = DetectionImages(dataset, split, size, flip=False)
        predicted = []
        with torch.no_grad():
            for images, _ in track(torch.utils.data.DataLoader(
                    data, batch_size=config.batch_size, collate_fn=_collate, num_workers=workers),
                    desc=f"detecting on {split}", unit="batch"):
                predicted += [top_box(d, data.resized_shape(len(predicted) + i))
                              for i, d in enumerate(model([im.to(device) for im in images]))]
        accuracy = BoxAccuracy()
        accuracy.update_boxes(predicted, dataset.gt_boxes(split))
        per_split[split] = metrics_block(accuracy.compute())
    return folder.write_metrics(per_split, **run_identity(config, len(train_set)), train_loss=history)
