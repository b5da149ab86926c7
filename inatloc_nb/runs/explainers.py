"""Post-hoc explainers (pytorch-grad-cam) scored like CAMs on a finished run's model.

The six explainers of the ``grad-cam`` package named in :data:`EXPLAINERS` are applied to
``model.features`` (the final feature maps, whose pooled values the classifier reads) for
each image's class at the run's training level; no retraining. ``eigencam`` is
class-agnostic (the first principal component of the feature maps).

Maps are taken at the target layer's own resolution (28 x 28 for the protocol's ResNet-50,
14 x 14 for DeiT-Small): the package normally resizes them to the input size, which
:class:`NativeResolution` switches off. What the package returns is each map after its
ReLU, min-max normalised. :class:`Explainer` hands these raw maps to
:func:`inatloc_nb.training.cam.extract_cams` as a method's ``cams``, so they are stored, upsampled
(bicubic) and normalised exactly as CAMs are.

:func:`explain_run` scores one finished run folder and writes, beside the run's own files::

    explain/<name>/cams/<split>.npz   the maps of every evaluated split (``CamSet``)
    explain/<name>/timings.json       seconds and images/s per split
    explain/<name>/metrics.json       written last: the run's ``metrics.json`` layout
                                      (D_test at the top, D_f under "val") plus ``explainer``

Cost: Grad-CAM, Grad-CAM++, XGrad-CAM and LayerCAM need one forward and one backward pass
per batch; EigenCAM one forward pass and an SVD per image; Score-CAM one extra forward pass
per feature channel per image (2048 for ResNet-50, 768 for ConvNeXt-Tiny), batched
``score_batch`` masked images at a time. ``benchmarks/bench_explainers.py`` measures them.
"""
from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs.runfolder import IDENTITY_KEYS, RunFolder, metrics_block

if TYPE_CHECKING:
    from torch import Tensor, nn

    from inatloc_nb.training.cam import CamSet

#: Explainer name -> pytorch-grad-cam class name.
EXPLAINERS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "xgradcam": "XGradCAM",
    "scorecam": "ScoreCAM",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
}
#: The name of a run's own maps (its method's class activation maps) in results and sweeps.
OWN_MAPS = "cam"


def check_explainer(name: str) -> str:
    """``name`` if it is an explainer of :data:`EXPLAINERS`, else an ``InatlocError``."""
    if name not in EXPLAINERS:
        raise InatlocError(f"unknown explainer {name!r}; choose one of {', '.join(EXPLAINERS)}")
    return name


class NativeResolution:
    """Mixin for a pytorch-grad-cam class: no resizing of the maps to the input size."""

    def get_target_width_height(self, input_tensor: Tensor) -> None:
        return None


class Explainer:
    """The explainer ``name`` as a source of raw maps for ``extract_cams``.

    ``cams(model, images, class_idx)`` returns (B, h, w) float32 maps at the resolution of
    ``model.features``. The pytorch-grad-cam object (and its hooks) is created for the first
    model seen and released by :meth:`close` (or on leaving a ``with`` block).
    """

    def __init__(self, name: str, score_batch: int = 64) -> None:
        import pytorch_grad_cam

        self.name = check_explainer(name)
        base = getattr(pytorch_grad_cam, EXPLAINERS[name])
        self._cls = type(f"Native{base.__name__}", (NativeResolution, base), {})
        self.score_batch = score_batch
        self._cam: Any = None
        self._model: nn.Module | None = None

    def _explainer_for(self, model: nn.Module) -> Any:
        from torch import nn

        if self._model is not model:
            self.close()
            features = getattr(model, "features", None)
            if not isinstance(features, nn.Module):
                raise InatlocError(f"explainer {self.name!r}: {type(model).__name__} has no 'features' module")
            self._cam = self._cls(model=model, target_layers=[features])
            self._cam.batch_size = self.score_batch  # Score-CAM's masked-image batch size
            self._model = model
        return self._cam

    def cams(self, model: nn.Module, images: Tensor, class_idx: Tensor) -> Tensor:
        """Raw maps (B, h, w) of ``images`` for the classes ``class_idx``."""
        import torch
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cam = self._explainer_for(model)
        targets = [ClassifierOutputTarget(int(c)) for c in class_idx]
        quiet = contextlib.redirect_stderr(io.StringIO()) if self.name == "scorecam" else contextlib.nullcontext()
        grad = torch.enable_grad() if cam.uses_gradients else torch.no_grad()
        with grad, quiet:  # Score-CAM draws one progress bar per image
            maps = cam(input_tensor=images, targets=targets)
        if maps.ndim != 3 or len(maps) != len(images):
            raise InatlocError(f"explainer {self.name!r}: expected (B, h, w) maps, got shape {maps.shape}")
        return torch.from_numpy(maps)

    def close(self) -> None:
        """Remove the hooks from the model."""
        if self._cam is not None:
            self._cam.activations_and_grads.release()
        self._cam, self._model = None, None

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def explain_dir(run_dir: str | Path, name: str) -> Path:
    """``run_dir/explain/<name>``."""
    return RunFolder(run_dir).explain(check_explainer(name)).path


def is_explained(run_dir: str | Path, name: str) -> bool:
    """Whether ``explain_run(run_dir, name)`` has finished (its ``metrics.json`` exists)."""
    return RunFolder(explain_dir(run_dir, name)).is_finished()


def explain_run(
    run_dir: str | Path,
    name: str,
    batch_size: int | None = None,
    device: str | None = None,
    score_batch: int = 64,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score explainer ``name`` on the finished run ``run_dir``; write ``explain/<name>/``.

    Every split the run evaluated is explained for the ground-truth class at the run's
    training level, with the run's image size and (unless ``batch_size``) batch size, then
    scored with MaxBoxAccV2 as the run's CAMs were. Returns the metrics written.
    """
    from inatloc_nb.runs.run_model import load_run_model
    from inatloc_nb.training.cam import extract_cams, score_cams
    from inatloc_nb.training.run_config import load_dataset

    run = RunFolder(run_dir)
    out = run.explain(check_explainer(name))
    if not run.is_finished():
        raise InatlocError(f"{run.metrics_path}: missing; {run.path} is not a finished training run")
    run_metrics = run.read_metrics()
    model, config, _ = load_run_model(run.path, device)
    dataset = load_dataset(config.data, config.image_root)
    metrics: dict[str, Any] = {}
    timings: dict[str, Any] = {}
    with Explainer(name, score_batch=score_batch) as explainer:
        for split in config.eval_splits:
            say(f"{name}: explaining {split} of {run.path.name}")
            start = time.perf_counter()
            cams: CamSet = extract_cams(
                model, dataset, split, config.level, method=explainer, image_size=config.image_size,
                batch_size=batch_size or config.batch_size, num_workers=config.num_workers,
            )
            seconds = time.perf_counter() - start
            out.save_cams(cams)
            metrics[split] = metrics_block(score_cams(cams, dataset), cams.top1)
            timings[f"{split}_seconds"] = seconds
            timings[f"{split}_images_per_s"] = len(cams) / seconds
    timings["device"] = str(next(model.parameters()).device)
    out.write_timings(timings)
    summary = out.write_metrics(metrics, **{k: run_metrics.get(k) for k in IDENTITY_KEYS}, explainer=name)
    say(f"{name}: done: {out.path}")
    return summary


__all__ = ["EXPLAINERS", "OWN_MAPS", "Explainer", "NativeResolution", "check_explainer",
           "explain_dir", "explain_run", "is_explained"]
