"""One experiment run: train at a label granularity, extract CAMs, score them, write a folder.

``run_experiment(config, out_dir)`` writes (each file atomically, ``metrics.json`` last so
that its presence means the run finished)::

    params.json        the RunConfig, the number of classes, the training image ids when
                       subsampled, library versions and the device
    model.pth          the scored model's state dict (``load_run_model`` rebuilds it): with
                       ``select_epoch="best"`` that of the epoch with the best D_f MaxBoxAccV2
                       (``inatloc_nb.training.epoch_select``), else the last epoch's
    history.csv        per-epoch train/valid loss and accuracy (valid = D_f at the
                       training level): the learning curve
    cams/<split>.npz   ``CamSet`` of every evaluated split (raw float32 CAMs at the network's
                       resolution; ``inatloc_nb.training.cam``)
    analysis.parquet   per image: ``image_id, split, box_area_ratio, gt_activation_ratio,
                       n_components`` at the split's optimal threshold for IoU 0.5
    timings.json       training and CAM-extraction images/s and seconds; of the training
                       seconds, those of fastai's validation passes over D_f
                       (``validate_seconds``, ``validate_images_per_s``); the seconds spent
                       scoring D_f between epochs (``select_epoch_seconds``, not in the
                       training seconds); per split, the seconds of saving, scoring and
                       analysing its CAMs (``score_<split>_seconds``, beside the GPU's work)
    metrics.json       D_test: ``maxboxacc_v2``, ``per_iou``, ``optimal_threshold``, ``top1``,
                       ``n_images``; run identity: ``level``, ``method``, ``lr``, ``seed``,
                       ``per_class``, ``n_train_images``; ``select_epoch``, ``selected_epoch``
                       and, with ``"best"``, ``val_maxboxacc_v2_per_epoch`` /
                       ``val_top1_per_epoch``; the same metric keys for every
                       other evaluated split under its name (``"val"`` = D_f)

The file names and their reading and writing are :mod:`inatloc_nb.runs.runfolder`'s. Baseline
methods (``BASELINES``) are delegated to ``inatloc_nb.runs.baselines.run_baseline``. What
defines a run is :mod:`inatloc_nb.training.run_config`; a finished run's model is read back with
:func:`inatloc_nb.runs.run_model.load_run_model`.
"""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inatloc_nb.core import validate
from inatloc_nb.core.env import PREPARED_ENV
from inatloc_nb.hierarchies.labelling import store_run_labelling
from inatloc_nb.runs.baselines import run_baseline
from inatloc_nb.runs.runfolder import RunFolder, analysis_frame, metrics_block, run_identity
from inatloc_nb.training.run_config import BASELINES, RunConfig, load_dataset

if TYPE_CHECKING:
    import polars as pl

    from inatloc_nb.datasets.dataset import WSOLDataset
    from inatloc_nb.metrics.boxacc import BoxAccuracyResult
    from inatloc_nb.training.cam import CamSet


def run_experiment(config: RunConfig, out_dir: str | Path, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, extract and score CAMs per ``config``; write the run folder; return metrics.json.

    A bad image stops the run with an ``ImageError`` naming it, also when it is read by a
    data-loading worker process. A folder already holding a finished run of this same
    configuration (``params.json`` and ``metrics.json``) is not trained again: its metrics are
    returned (a sweep's fused runs are trained first, then shown by their notebooks).
    """
    from inatloc_nb.datasets.images import clear_worker_errors

    validate.device_available(config.device, "RunConfig.device")
    with clear_worker_errors():
        return _run_experiment(config, out_dir, say)


def _run_experiment(config: RunConfig, out_dir: str | Path, say: Callable[[str], None]) -> dict[str, Any]:
    if config.method in BASELINES:
        return run_baseline(config, out_dir, say=say)

    from inatloc_nb.training.lockstep import shared, step_aside

    finished = _finished(config, out_dir)
    if finished is not None:
        say(f"already finished: {out_dir}")
        return finished
    config.require_lr()
    say(f"loading data {config.data}")
    dataset = shared("dataset", lambda: load_dataset(config.data, config.image_root, config.allow_split_overlap))

    from inatloc_nb.training.cam import extract_cams
    from inatloc_nb.training.epoch_select import SELECT_SPLIT, EpochSelect
    from inatloc_nb.training.learner import ValidationTimer, build_learner, history_rows, train

    out = RunFolder(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    prepared = config.prepared or os.environ.get(PREPARED_ENV) or None
    learn = build_learner(dataset, dataclasses.replace(config, prepared=prepared))
    n_train = len(learn.dls.train_ds)
    labels = learn.label_set  # the level as trained: a mixed run keeps the labelling read then
    n_classes = len(labels)
    labelling = None if labels.labelling is None else store_run_labelling(labels.labelling, out.path)
    out.write_params(
        config, dataset.name, n_classes=n_classes, n_train_images=n_train, train_image_ids=learn.train_ids,
        method_hparams=learn.method.hparams, device=str(learn.dls.device),
        device_settings=learn.device_settings.to_dict(), num_workers=learn.dls.train.fake_l.num_workers,
        prepared=prepared, **({"labelling": labelling} if labelling else {}),
    )

    say(f"training {config.method} at {config.level} ({n_classes} classes, {n_train} images, "
        f"{learn.schedule.epochs} epochs, lr {config.lr:g})")
    selector = EpochSelect(dataset, config.level) if config.select_epoch == "best" else None
    validation = ValidationTimer()
    start = time.perf_counter()
    with learn.added_cbs([validation, *([] if selector is None else [selector])]):
        train(learn)
    if selector is not None:
        say(f"selected epoch {selector.selected_epoch} of {learn.schedule.epochs} "
            f"(D_f MaxBoxAccV2 per epoch: {', '.join(f'{v:.1f}' for v in selector.scores)})")
    select_s = 0.0 if selector is None else selector.seconds
    train_s = time.perf_counter() - start - select_s
    out.save_model(learn.model)
    out.write_history(history_rows(learn))

    timings: dict[str, Any] = {
        "train_seconds": train_s,
        "train_images_per_s": n_train * learn.schedule.epochs / train_s,
        "select_epoch_seconds": select_s,
        "validate_seconds": validation.seconds,
        "validate_images_per_s": validation.images / validation.seconds if validation.seconds else None,
    }
    # A split's CPU work (save, score, analyse) runs on a thread of its own while the GPU
    # extracts the next split's CAMs; it draws no random numbers, so nothing changes.
    scored: dict[str, tuple[CamSet, Future]] = {}
    with ThreadPoolExecutor(1, thread_name_prefix="score") as scorer:
        for split in config.eval_splits:
            if selector is not None and split == SELECT_SPLIT:  # the selected epoch's, already scored
                cams, result, cam_s = selector.best_cams, selector.best_result, selector.best_cam_seconds
            else:
                say(f"extracting CAMs of {split}")
                start = time.perf_counter()
                cams, result = extract_cams(learn, dataset, split, config.level), None
                cam_s = time.perf_counter() - start
            scored[split] = cams, scorer.submit(_score_split, out, cams, dataset, result, say)
            timings[f"cam_{split}_seconds"] = cam_s
            timings[f"cam_{split}_images_per_s"] = len(cams) / cam_s
        with step_aside():  # CPU work: in a fused group, the other runs use the GPU meanwhile
            done = {split: future.result() for split, (_, future) in scored.items()}
    metrics = {split: metrics_block(done[split][0], cams.top1) for split, (cams, _) in scored.items()}
    analyses = [done[split][1] for split in scored]
    timings.update({f"score_{split}_seconds": done[split][2] for split in scored})
    out.write_analysis(analyses)
    out.write_timings(timings)

    selected = {"selected_epoch": learn.schedule.epochs} if selector is None else selector.summary()
    summary = out.write_metrics(metrics, **run_identity(config, n_train), select_epoch=config.select_epoch,
                                **selected)
    say(f"done: {out.path}")
    return summary


def _score_split(out: RunFolder, cams: CamSet, dataset: WSOLDataset, result: BoxAccuracyResult | None,
                 say: Callable[[str], None]) -> tuple[BoxAccuracyResult, pl.DataFrame, float]:
    """Save ``cams``, score them (unless ``result`` is given) and analyse them per image:
    the result, the ``analysis.parquet`` rows and the seconds it took."""
    from inatloc_nb.training.cam import score_cams

    start = time.perf_counter()
    out.save_cams(cams)
    if result is None:
        say(f"scoring {cams.split}")
        result = score_cams(cams, dataset)
    analysis = analysis_frame(cams.iter_maps(), dataset.gt_boxes(cams.split), cams.image_ids, result, cams.split)
    return result, analysis, time.perf_counter() - start


def _finished(config: RunConfig, out_dir: str | Path) -> dict[str, Any] | None:
    """``metrics.json`` of ``out_dir`` when it holds a finished run of this very ``config``
    (e.g. trained by a fused group, ``inatloc_nb.runs.fused``), else None."""
    import json

    out = RunFolder(out_dir)
    if not out.is_finished() or not out.params_path.is_file():
        return None
    if out.read_params().get("config") != json.loads(json.dumps(config.to_dict())):
        return None
    return out.read_metrics()
