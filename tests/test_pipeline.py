"""The data pipeline (transforms against a direct PIL/torchvision reference, loader sizing,
the prepared copy) and the device switches reaching the learner."""
from __future__ import annotations

import argparse
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from inatloc_nb.training import pipeline
from inatloc_nb.training.device import (
    ChannelsLastInputs, DeviceSettings, apply_precision, apply_settings, resolve_settings, tf32_enabled,
)
from inatloc_nb.core.env import LOADER_WORKERS_ENV
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.learner import build_dataloaders, build_learner
from inatloc_nb.training.prepared import PreparedImages, prepare_dataset, prepared_folder, split_side
from inatloc_nb.training.run_config import RunConfig

SIZE = 32
LEVEL = "genus"
FAST = dict(backbone="tinycnn", pretrained=False, image_size=SIZE, batch_size=8, num_workers=0, device="cpu")
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 75 x 50 JPEG with structure in both directions (so a wrong crop or flip shows)."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:50, 0:75]
    pixels = np.stack([x * 3, y * 5, (x * y) % 256], axis=-1) + rng.integers(0, 20, (50, 75, 3))
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def _reference_resize(path: Path, side: int) -> torch.Tensor:
    """torchvision's ``Resize((side, side))`` on the PIL image, as the reference code does."""
    image = TF.resize(Image.open(path).convert("RGB"), [side, side])
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _item(dl) -> tuple:
    """One item through ``dl``'s item transforms for its split (as iteration applies them)."""
    dl.before_iter()
    return dl.after_item(dl.create_item(0))


def _loaders(photo: Path):
    items = [[photo, "a"]] * 4
    return pipeline.protocol_dataloaders(items, items[:1], ["a", "b"], SIZE, 2, "cpu", num_workers=0)


def test_eval_transform_is_the_reference_squish_resize(photo):
    dls = _loaders(photo)
    image, label = _item(dls.valid)
    assert int(label) == 0
    assert torch.equal(image.as_subclass(torch.Tensor), _reference_resize(photo, SIZE))
    xb, _ = dls.valid.one_batch()
    expected = (_reference_resize(photo, SIZE).float() / 255 - MEAN[:, None, None]) / STD[:, None, None]
    torch.testing.assert_close(xb[0].as_subclass(torch.Tensor), expected, atol=1e-5, rtol=0)


def test_train_transform_is_a_crop_of_the_reference_resize_flipped_half_the_time(photo):
    dls = _loaders(photo)
    side = pipeline.train_side(SIZE)
    assert side == round(256 / 224 * SIZE)
    resized = _reference_resize(photo, side)
    seen = set()
    for _ in range(40):
        image, _ = _item(dls.train)
        image = image.as_subclass(torch.Tensor)
        assert image.shape == (3, SIZE, SIZE)
        matches = [(top, left, flip)
                   for top in range(side - SIZE + 1) for left in range(side - SIZE + 1) for flip in (False, True)
                   if torch.equal(image, (lambda c: c.flip(-1) if flip else c)(
                       resized[:, top:top + SIZE, left:left + SIZE]))]
        assert matches, "a training image is not a crop (or flipped crop) of the squish-resized image"
        seen.update(matches)
    assert {m[2] for m in seen} == {False, True}
    assert len({m[:2] for m in seen}) > 5


def test_worker_sizing(monkeypatch):
    assert pipeline.workers_per_run(16, 1) == 16
    assert pipeline.workers_per_run(16, 4) == 4
    assert pipeline.workers_per_run(2, 8) == 1
    assert pipeline.workers_per_run(64, 1) == pipeline.MAX_WORKERS
    with pytest.raises(InatlocError, match="at least 1"):
        pipeline.workers_per_run(8, 0)
    assert pipeline.available_cores() == len(os.sched_getaffinity(0))
    monkeypatch.delenv(LOADER_WORKERS_ENV, raising=False)
    assert pipeline.default_num_workers("cpu") == 0
    monkeypatch.setenv(LOADER_WORKERS_ENV, "3")
    assert pipeline.default_num_workers("cpu") == 3
    monkeypatch.setenv(LOADER_WORKERS_ENV, "many")
    with pytest.raises(InatlocError, match=LOADER_WORKERS_ENV):
        pipeline.default_num_workers("cpu")
    assert pipeline.loader_options(0, "cpu") == {"num_workers": 0, "pin_memory": False}
    assert pipeline.loader_options(4, "cuda")["pin_memory"] is True


def test_loaders_get_the_sized_workers_and_prefetch(tiny_dataset, monkeypatch):
    monkeypatch.setenv(LOADER_WORKERS_ENV, "2")
    dls = build_dataloaders(tiny_dataset, LEVEL, SIZE, 8, device="cpu")
    for dl in dls.loaders:
        assert dl.fake_l.num_workers == 2
        assert dl.fake_l.prefetch_factor == pipeline.PREFETCH_FACTOR
    assert not dls.train.drop_last


def test_prepared_copy_round_trip(tiny_dataset, tmp_path):
    folder = prepare_dataset(tiny_dataset, tmp_path, SIZE, workers=1, progress=False)
    assert folder == prepared_folder(tmp_path, tiny_dataset, SIZE)
    index = json.loads((folder / "prepared.json").read_text())
    for split in tiny_dataset.splits:
        array = np.load(folder / f"{split}.npy", mmap_mode="r")
        side = split_side(split, SIZE)
        assert array.shape == (len(tiny_dataset.images(split)), side, side, 3)
        assert index["splits"][split]["image_ids"] == tiny_dataset.images(split)["image_id"].to_list()
        first = tiny_dataset.image_path(index["splits"][split]["image_ids"][0])
        assert np.array_equal(array[0], _reference_resize(first, side).permute(1, 2, 0).numpy())
    stamp = (folder / "prepared.json").stat().st_mtime_ns
    assert prepare_dataset(tiny_dataset, tmp_path, SIZE, workers=1, progress=False) == folder
    assert (folder / "prepared.json").stat().st_mtime_ns == stamp  # reused, not rewritten

    # the same pixels as decoding the originals: evaluation and (same seed) training batches
    from fastai.torch_core import set_seed

    batches = []
    for prepared in (None, tmp_path):
        set_seed(3)  # the loaders' shuffling generator is drawn when they are built
        dls = build_dataloaders(tiny_dataset, LEVEL, SIZE, 8, device="cpu", num_workers=0, prepared=prepared)
        set_seed(3)
        batches.append((dls.train.one_batch(), dls.valid.one_batch(),
                        dls.test_dl([[p, n] for p, n in zip(*_test_items(tiny_dataset))], with_labels=True).one_batch()))
    for got, want in zip(batches[1], batches[0]):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])

    with pytest.raises(InatlocError, match="inatloc-nb prepare"):
        build_dataloaders(tiny_dataset, LEVEL, 48, 8, device="cpu", num_workers=0, prepared=tmp_path)


def _test_items(dataset):
    names = dataset.hierarchy.level_names(LEVEL)
    items = dataset.items("test", LEVEL)
    return [p for p, _ in items], [names[y] for _, y in items]


def test_prepare_command(tiny_dataset_dir, tmp_path):
    from inatloc_nb.cli import main

    assert main(["prepare", str(tiny_dataset_dir), "--out", str(tmp_path), "--image-size", str(SIZE),
                 "--splits", "val", "--workers", "1"]) == 0
    (folder,) = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert sorted(json.loads((folder / "prepared.json").read_text())["splits"]) == ["val"]


def test_device_switches_reach_the_learner(tiny_dataset, monkeypatch):
    defaults = resolve_settings("cpu")
    assert (defaults.amp, defaults.channels_last, defaults.compile) == (False, False, False)
    with pytest.raises(InatlocError, match="needs a CUDA device"):
        resolve_settings("cpu", amp=True)

    plain = build_learner(tiny_dataset, RunConfig(data="synth:tiny", level=LEVEL, lr=0.01, **FAST))
    assert not any(isinstance(cb, ChannelsLastInputs) for cb in plain.cbs)
    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level=LEVEL, lr=0.01, channels_last=True, compile=True, **FAST))
    assert learn.device_settings == DeviceSettings("cpu", amp=False, channels_last=True, compile=True)
    conv = next(m for m in learn.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert any(isinstance(cb, ChannelsLastInputs) for cb in learn.cbs)
    stages = list(learn.model.features.children())
    assert all(stage._compiled_call_impl is not None for stage in stages)
    assert learn.model.features._compiled_call_impl is None  # the CAM hook's module stays eager
    assert set(learn.model.state_dict()) == set(plain.model.state_dict())

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    apply_settings(plain, DeviceSettings("cpu", amp=True, channels_last=False, compile=False))
    assert type(plain.mixed_precision).__name__ == "MixedPrecision"
    assert plain.mixed_precision.amp_mode.value == "bf16"


def test_float32_on_cuda_switches_tf32_off():
    # --no-amp on CUDA is the reference's float32: no TF32 in matmuls or cuDNN convolutions
    before = tf32_enabled()
    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    try:
        mixed = DeviceSettings("cuda", amp=True, channels_last=True, compile=False)
        apply_precision(mixed)  # with mixed precision PyTorch's defaults stay
        assert mixed.tf32 is None and tf32_enabled() == before
        full = DeviceSettings("cuda:0", amp=False, channels_last=True, compile=False)
        apply_precision(full)
        assert full.tf32 is False and full.to_dict()["tf32"] is False
        assert tf32_enabled() == (False, False)
        apply_precision(DeviceSettings("cuda", amp=True, channels_last=True, compile=False))
        assert tf32_enabled() == (False, False)  # process-wide: mixed precision does not switch it back
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision = saved
    assert DeviceSettings("cpu", amp=False, channels_last=False, compile=False).tf32 is None


def test_device_switches_from_cli_and_config():
    from inatloc_nb.cli.run_options import add_run_options, config_fields

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    args = parser.parse_args(["--data", "synth:tiny", "--out", "x", "--no-amp", "--channels-last",
                              "--prepared", "/cache"])
    fields = config_fields(args)
    assert (fields["amp"], fields["channels_last"], fields["compile"], fields["prepared"]) == (False, True, None, "/cache")
    config = RunConfig(**{**fields, "level": "genus"})
    assert RunConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InatlocError, match="RunConfig.amp"):
        RunConfig(data="synth:tiny", amp="yes")


@pytest.mark.slow
def test_bench_training_smoke(tmp_path, capsys):
    """benchmarks/bench_training.py end to end (generated JPEGs, real Learner, CAMs) at tiny settings."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_training", REPO / "benchmarks" / "bench_training.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--json", "--backbone", "tinycnn", "--image-size", "32", "--batch-size", "8", "--images", "24",
                       "--steps", "2", "--eval-images", "16", "--device", "cpu", "--workdir", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["device"] == "cpu"
    assert result["train"]["images_per_s"] > 0 and result["train"]["images"] == 16
    assert result["cam_extraction"]["images_per_s"] > 0 and result["cam_extraction"]["images"] == 16
    assert result["settings"]["amp"] is False and result["settings"]["runs_packed"] == 1


@pytest.mark.slow
def test_evaluation_passes_read_from_a_prepared_copy_change_nothing(tiny_dataset, tiny_dataset_dir, tmp_path,
                                                                     monkeypatch):
    """CAMs of evaluation splits and fastai's validation passes over D_f read from a prepared
    copy as whole batches (no loader workers, no per-image transforms) equal those read
    through the loader: the same maps and validation losses, and with D_f passes between
    epochs (``select_epoch: best``) the same random numbers afterwards, so the same weights
    and metrics."""
    from fastai.torch_core import set_seed

    from inatloc_nb.runs.run import run_experiment
    from inatloc_nb.runs.runfolder import RunFolder
    from inatloc_nb.training import prepared
    from inatloc_nb.training.cam import extract_cams

    prepare_dataset(tiny_dataset, tmp_path / "cache", SIZE, workers=1, progress=False)
    # a worker process: without one the loader's item transforms draw random numbers here
    with_workers = {**FAST, "num_workers": 1}
    config = RunConfig(data=str(tiny_dataset_dir), level=LEVEL, lr=0.05, schedule=2, select_epoch="best",
                       prepared=str(tmp_path / "cache"), **with_workers)

    runs, batch_reads = {}, []
    real = prepared.prepared_batches

    def reading(dl, copy, split, *a):
        batch_reads.append(split)
        return real(dl, copy, split, *a)

    monkeypatch.setattr(prepared, "prepared_batches", reading)
    for way in ("batches", "loader"):
        if way == "loader":
            monkeypatch.setattr(PreparedImages, "holds", lambda self, split: False)
        batch_reads.clear()
        metrics = run_experiment(config, tmp_path / way, say=lambda _: None)
        history, python_random = RunFolder(tmp_path / way).read_history(), random.getstate()
        set_seed(1)
        learn = build_learner(tiny_dataset, RunConfig(data="synth:tiny", level=LEVEL, lr=0.05,
                                                      prepared=str(tmp_path / "cache"), **FAST))
        cams = extract_cams(learn, tiny_dataset, "test", LEVEL, progress=False)
        runs[way] = (metrics, torch.load(tmp_path / way / "model.pth"), cams, torch.get_rng_state(),
                     np.random.get_state()[1], history, python_random)
        if way == "batches":  # the fast path was taken: 2 validation passes over D_f, 3 D_f CAM
            # passes (before training, after each epoch), D_test's CAMs in the run and below
            assert sorted(batch_reads) == ["test"] * 2 + ["val"] * 5
        else:
            assert batch_reads == []
    (m_fast, w_fast, c_fast, r_fast, n_fast, h_fast, p_fast), (m_slow, w_slow, c_slow, r_slow, n_slow, h_slow, p_slow) = \
        runs["batches"], runs["loader"]
    assert m_fast == m_slow and h_fast.equals(h_slow) and p_fast == p_slow
    assert all(torch.equal(w_fast[k], w_slow[k]) for k in w_slow)
    assert np.array_equal(c_fast.raw, c_slow.raw) and np.array_equal(c_fast.labels, c_slow.labels)
    assert np.array_equal(c_fast.predictions, c_slow.predictions) and np.array_equal(c_fast.top1_logits, c_slow.top1_logits)
    assert torch.equal(r_fast, r_slow) and np.array_equal(n_fast, n_slow)


def test_cuda_graph_steps_where_replaying_cannot_differ(tiny_dataset, monkeypatch):
    """CUDA-graph steps: opt-in, recorded in the settings;
    used only for methods declaring ``cuda_graph_safe`` with no callback acting inside the
    step (bf16 mixed precision is replicated; fp16 loss scaling is not); elsewhere the
    callback says why and training is fastai's eager loop, unchanged."""
    from fastai.callback.core import Callback

    from inatloc_nb.training.cuda_graphs import CudaGraphStep, graph_summary, step_blocker
    from inatloc_nb.training.methods import get_method

    assert resolve_settings("cpu").cuda_graphs is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_settings("cuda").cuda_graphs is False  # opt-in until measured on a GPU
    assert resolve_settings("cuda", cuda_graphs=True).to_dict()["cuda_graphs"] is True
    with pytest.raises(InatlocError, match="do not combine"):
        resolve_settings("cuda", compile=True, cuda_graphs=True)
    monkeypatch.undo()
    with pytest.raises(InatlocError, match="need a CUDA device"):
        resolve_settings("cpu", cuda_graphs=True)

    safe = {name for name in ("cam", "has", "adl", "cutmix", "acol", "spg") if get_method(name).cuda_graph_safe}
    assert safe == {"cam", "has"}  # the others draw random numbers in the step or act inside it
    learn = build_learner(tiny_dataset, RunConfig(data="synth:tiny", level=LEVEL, method="has", lr=0.01, **FAST))
    assert step_blocker(learn) is None
    adl = RunConfig(data="synth:tiny", level=LEVEL, method="adl", lr=0.01, **FAST)
    assert "adl" in step_blocker(build_learner(tiny_dataset, adl))

    class LossHook(Callback):
        def after_loss(self) -> None:
            pass

    learn.add_cb(LossHook())
    assert step_blocker(learn) == "callback LossHook acts inside the step (after_loss)"
    learn.remove_cb(LossHook)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    apply_settings(learn, DeviceSettings("cpu", amp=True, channels_last=False, compile=False))
    assert "float16" in step_blocker(learn)

    # on a CPU the callback stands aside: the same weights as without it
    weights = []
    for graphs in (False, True):
        learn = build_learner(tiny_dataset, RunConfig(data="synth:tiny", level=LEVEL, lr=0.01, schedule=1, **FAST))
        if graphs:
            learn.add_cb(CudaGraphStep())
        learn.fit(1)
        weights.append(learn.model.state_dict())
    assert graph_summary(learn) == {"replays": 0, "eager_steps": 0, "captures": 0,
                                    "reason": "training is not on a CUDA device"}
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
