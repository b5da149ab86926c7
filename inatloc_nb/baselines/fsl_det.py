"""FSL-Det (App. F.5): a Faster R-CNN ResNet-50 FPN detector trained on D_f boxes.

torchvision's Faster R-CNN with one foreground class ("object") is trained on the ``val``
split (D_f) with every ground-truth box of each image. Images are squish-resized to
``config.image_size`` like every other method (random horizontal flip in training), and
the detector's own resizing is disabled (``min_size = max_size = image_size``).
``pretrained=True`` starts from ImageNet ResNet-50 weights (offline: a clear error naming the
file to place in the torch cache); ``pretrained=False`` trains from scratch.

Evaluation: the top-scoring detection per test image, mapped to the 224 x 224 evaluation grid
(pixel-inclusive, truncated), is scored with ``BoxAccuracy.update_boxes``, i.e. the same IoU
rules as MaxBoxAccV2 with the same box at every threshold; an image with no detection is
scored with the box (0, 0, 0, 0).

Training is a plain PyTorch loop with a progress bar rather than a fastai Learner: the
detector's forward takes images *and* targets and returns a dict of losses in training mode,
which does not fit the Learner's ``loss_func(model(x), y)`` contract. It uses the same SGD
(Nesterov, 0.9, wd 1e-5) and step schedule (``config.schedule``) as the other methods.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from inatloc_nb.baselines.runfolder import finish, split_metrics, write_params
from inatloc_nb.images import open_image
from inatloc_nb.io import atomic_path

if TYPE_CHECKING:
    from inatloc_nb.data import WSOLDataset
    from inatloc_nb.run import RunConfig

#: Side of the evaluation grid.
EVAL_SIZE = 224


def build_detector(image_size: int, pretrained: bool) -> nn.Module:
    """Faster R-CNN ResNet-50 FPN with 2 classes (background, object) at ``image_size``."""
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from inatloc_nb.models import load_pretrained

    backbone_weights = ResNet50_Weights.IMAGENET1K_V1 if pretrained else None
    if pretrained:
        load_pretrained(backbone_weights)  # clear error offline; afterwards the file is cached
    return fasterrcnn_resnet50_fpn(weights=None, weights_backbone=backbone_weights, num_classes=2,
                                   min_size=image_size, max_size=image_size)


class DetectionImages(torch.utils.data.Dataset):
    """(image tensor in [0, 1] at ``size`` x ``size``, target dict) of one split."""

    def __init__(self, dataset: WSOLDataset, split: str, size: int, flip: bool) -> None:
        self.dataset, self.size, self.flip = dataset, size, flip
        self.rows = list(dataset.images(split).select("image_id", "width", "height").iter_rows())
        grouped = dataset.boxes(split).group_by("image_id", maintain_order=True).agg("x0", "y0", "x1", "y1")
        self.boxes = {image_id: np.array(coords, dtype=np.float32).T for image_id, *coords in grouped.iter_rows()}

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        from PIL import Image

        image_id, width, height = self.rows[i]
        im = open_image(self.dataset.image_path(image_id), image_id)
        pixels = np.asarray(im.resize((self.size, self.size), Image.BILINEAR))
        image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255
        boxes = self.boxes.get(image_id, np.zeros((0, 4), np.float32)).copy()
        boxes[:, 2:] += 1  # inclusive pixel boxes -> continuous coordinates
        boxes *= np.array([self.size / width, self.size / height] * 2, dtype=np.float32)
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = self.size - boxes[:, [2, 0]]
        target = {"boxes": torch.from_numpy(boxes), "labels": torch.ones(len(boxes), dtype=torch.int64)}
        return image, target


def _collate(batch: list) -> tuple[list, list]:
    return [b[0] for b in batch], [b[1] for b in batch]


def top_box(detections: dict[str, Tensor], image_size: int) -> np.ndarray:
    """The highest-scoring detection as an inclusive (1, 4) box on the 224 grid, or (0, 4)."""
    if len(detections["boxes"]) == 0:
        return np.zeros((0, 4), dtype=np.int64)
    box = detections["boxes"][detections["scores"].argmax()].detach().cpu().double().numpy()
    box = box * EVAL_SIZE / image_size
    x0, y0 = np.trunc(box[:2])
    x1, y1 = np.maximum(np.ceil(box[2:]) - 1, [x0, y0])
    return np.clip([[x0, y0, x1, y1]], 0, EVAL_SIZE - 1).astype(np.int64)


def train_detector(model: nn.Module, loader, config: RunConfig, device: torch.device,
                   say: Callable[[str], None] = print, max_iters: int | None = None) -> list[float]:
    """Fit on ``loader``; returns the mean loss per epoch. ``max_iters`` caps the iterations."""
    from fastprogress.fastprogress import progress_bar

    from inatloc_nb.learner import Schedule

    schedule = Schedule.parse(config.schedule)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=1e-5)
    model.train()
    history, done = [], 0
    for epoch in range(schedule.epochs):
        for group in opt.param_groups:
            group["lr"] = config.lr * schedule.factor(epoch)
        losses = []
        for images, targets in progress_bar(loader, leave=False):
            images = [im.to(device) for im in images]
            targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            loss = sum(model(images, targets).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            done += 1
            if max_iters is not None and done >= max_iters:
                break
        history.append(float(np.mean(losses)))
        say(f"epoch {epoch + 1}/{schedule.epochs}: loss {history[-1]:.4f}")
        if max_iters is not None and done >= max_iters:
            break
    return history


def run_fsl_det(config: RunConfig, dataset: WSOLDataset, out: Path,
                say: Callable[[str], None] = print, max_iters: int | None = None) -> dict[str, Any]:
    """Train FSL-Det on D_f, score its top boxes on ``config.eval_splits``; write the run folder."""
    from fastai.torch_core import set_seed
    from fastprogress.fastprogress import progress_bar

    from inatloc_nb.metrics.boxacc import BoxAccuracy
    from inatloc_nb.models import default_device

    device = default_device() if config.device is None else torch.device(config.device)
    set_seed(config.seed, reproducible=True)
    model = build_detector(config.image_size, config.pretrained).to(device)
    workers = 0 if config.num_workers is None else config.num_workers
    train_set = DetectionImages(dataset, "val", config.image_size, flip=True)
    loader = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                                         collate_fn=_collate, num_workers=workers)
    write_params(out, config, dataset, n_train_images=len(train_set), train_split="val")
    say(f"training FSL-Det on D_f ({len(train_set)} images, lr {config.lr:g})")
    history = train_detector(model, loader, config, device, say, max_iters)
    with atomic_path(out / "model.pth") as tmp:
        torch.save(model.state_dict(), tmp)

    per_split = {}
    model.eval()
    for split in config.eval_splits:
        say(f"detecting on {split}")
        data = DetectionImages(dataset, split, config.image_size, flip=False)
        predicted = []
        with torch.no_grad():
            for images, _ in progress_bar(torch.utils.data.DataLoader(
                    data, batch_size=config.batch_size, collate_fn=_collate, num_workers=workers), leave=False):
                predicted += [top_box(d, config.image_size) for d in model([im.to(device) for im in images])]
        accuracy = BoxAccuracy()
        accuracy.update_boxes(predicted, dataset.gt_boxes(split))
        per_split[split] = split_metrics(accuracy.compute())
    return finish(out, config, per_split, n_train=len(train_set), say=say, train_loss=history)
