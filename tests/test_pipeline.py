"""The data pipeline (transforms against a direct PIL/torchvision reference, loader sizing,
the prepared copy) and the device switches reaching the learner."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from inatloc_nb import pipeline
from inatloc_nb.device import (
    ChannelsLastInputs, DeviceSettings, apply_precision, apply_settings, resolve_settings, tf32_enabled,
)
from inatloc_nb.errors import InatlocError
from inatloc_nb.learner import build_dataloaders, build_learner
from inatloc_nb.run_config import RunConfig

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
    monkeypatch.delenv(pipeline.WORKERS_ENV, raising=False)
    assert pipeline.default_num_workers("cpu") == 0
    monkeypatch.setenv(pipeline.WORKERS_ENV, "3")
    assert pipeline.default_num_workers("cpu") == 3
    monkeypatch.setenv(pipeline.WORKERS_ENV, "many")
    with pytest.raises(InatlocError, match=pipeline.WORKERS_ENV):
        pipeline.default_num_workers("cpu")
    assert pipeline.loader_options(0, "cpu") == {"num_workers": 0, "pin_memory": False}
    assert pipeline.loader_options(4, "cuda")["pin_memory"] is True


def test_loaders_get_the_sized_workers_and_prefetch(tiny_dataset, monkeypatch):
    monkeypatch.setenv(pipeline.WORKERS_ENV, "2")
    dls = build_dataloaders(tiny_dataset, LEVEL, SIZE, 8, device="cpu")
    for dl in dls.loaders:
        assert dl.fake_l.num_workers == 2
        assert dl.fake_l.prefetch_factor == pipeline.PREFETCH_FACTOR
    assert not dls.train.drop_last


def test_prepared_copy_round_trip(tiny_dataset, tmp_path):
    folder = pipeline.prepare_dataset(tiny_dataset, tmp_path, SIZE, workers=1, progress=False)
    assert folder == pipeline.prepared_folder(tmp_path, tiny_dataset, SIZE)
    index = json.loads((folder / "prepared.json").read_text())
    for split in tiny_dataset.splits:
        array = np.load(folder / f"{split}.npy", mmap_mode="r")
        side = pipeline.split_side(split, SIZE)
        assert array.shape == (len(tiny_dataset.images(split)), side, side, 3)
        assert index["splits"][split]["image_ids"] == tiny_dataset.images(split)["image_id"].to_list()
        first = tiny_dataset.image_path(index["splits"][split]["image_ids"][0])
        assert np.array_equal(array[0], _reference_resize(first, side).permute(1, 2, 0).numpy())
    stamp = (folder / "prepared.json").stat().st_mtime_ns
    assert pipeline.prepare_dataset(tiny_dataset, tmp_path, SIZE, workers=1, progress=False) == folder
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
