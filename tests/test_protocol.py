"""Training parity with the reference WSOL code (wsolevaluation); docs/protocol.md, point by point.

Models are built with ``pretrained=False``: the checks are about structure, parameter groups,
initialisation and schedules, not weights.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import Bottleneck

from fastai.callback.core import Callback

from inatloc_nb.core import validate
from inatloc_nb.core.atomic import atomic_write_json
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.runs import results
from inatloc_nb.sweep import LR_SELECTED, SweepConfig, execute_run, expand, resolve_lr, runs_dir
from inatloc_nb.sweep.execute import _phases
from inatloc_nb.training import cam
from inatloc_nb.training.epoch_select import EpochSelect
from inatloc_nb.training.learner import Schedule, StepLR, build_dataloaders, build_learner, param_groups
from inatloc_nb.training.methods import get_method
from inatloc_nb.training.methods.adl import AttentionDropout
from inatloc_nb.training.models import LINEAR_INIT_STD, build_backbone
from inatloc_nb.training.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

N_CLASSES = 200  # enough classifier weights for tight init statistics
REFERENCE_METHODS = ("cam", "has", "cutmix", "adl", "acol", "spg")


@pytest.fixture(scope="module")
def resnets() -> dict[str, nn.Module]:
    """Every reference method's model on (copies of) one randomly initialised ResNet-50."""
    torch.manual_seed(0)
    features, channels = build_backbone("resnet50", pretrained=False)
    return {name: get_method(name).build_model(copy.deepcopy(features), channels, N_CLASSES)
            for name in REFERENCE_METHODS}


def _top_modules(model: nn.Module, group: list[nn.Parameter]) -> set[str]:
    """Top-level module names (``features.<stage>`` for the backbone) of ``group``'s parameters."""
    ids = {id(p) for p in group}
    names = set()
    for name, param in model.named_parameters():
        if id(param) in ids:
            parts = name.split(".")
            names.add(".".join(parts[:2]) if parts[0] == "features" else parts[0])
    return names


# --- 1. which parameters get 10x the LR -------------------------------------------------------


@pytest.mark.parametrize("method, fast, classifier_reading", [
    ("cam", {"features.layer4", "classifier"}, {"classifier"}),
    ("has", {"features.layer4", "classifier"}, {"classifier"}),
    ("cutmix", {"features.layer4", "classifier"}, {"classifier"}),
    ("adl", {"features.layer4", "classifier"}, {"classifier"}),
    ("acol", {"features.layer4"}, {"classifier_a", "classifier_b"}),
    ("spg", {"features.layer4"}, {"classifier"}),
])
def test_ten_x_groups_per_method(resnets, method, fast, classifier_reading):
    model = resnets[method]
    slow, fast_params = param_groups(model)
    assert _top_modules(model, fast_params) == fast
    assert "features.layer3" in _top_modules(model, slow) and not _top_modules(model, slow) & fast
    assert len(slow) + len(fast_params) == len(list(model.parameters()))
    assert _top_modules(model, param_groups(model, lr_groups="classifier")[1]) == classifier_reading
    with pytest.raises(InatlocError, match="lr_groups"):
        param_groups(model, lr_groups="head")


def test_lr_options_reach_the_optimiser_and_the_command_line(tiny_dataset):
    from inatloc_nb.cli.run_options import add_run_options, config_fields

    common = dict(lr=0.01, backbone="tinycnn", pretrained=False, image_size=32, batch_size=16, num_workers=0)
    for lr_groups in ("reference", "classifier"):
        learn = build_learner(tiny_dataset, RunConfig(data="synth:tiny", level="genus", lr_groups=lr_groups, **common))
        learn.create_opt()
        learn.epoch = 0
        next(cb for cb in learn.cbs if isinstance(cb, StepLR)).before_epoch()
        assert [h["lr"] for h in learn.opt.hypers] == [0.01, 0.1]
        fast = learn.opt.param_lists[1]
        classifier = list(learn.model.classifier.parameters())
        last_stage = list(learn.model.features[-1].parameters()) if lr_groups == "reference" else []
        assert {id(p) for p in fast} == {id(p) for p in classifier + last_stage}
    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level="genus", schedule=10, lr_decay="text", **common))
    assert learn.schedule.milestones == (3, 6, 9)
    with pytest.raises(InatlocError, match="lr_decay"):
        build_learner(tiny_dataset, RunConfig(data="synth:tiny", level="genus", lr_decay="every3", **common))
    for option in ("lr_groups", "lr_decay"):
        with pytest.raises(InatlocError, match=option):
            RunConfig(data="synth:tiny", **{option: "head"})

    parser = argparse.ArgumentParser()
    add_run_options(parser)
    required = ["--data", "synth:tiny", "--out", "run"]
    defaults = config_fields(parser.parse_args(required))
    assert defaults["lr_groups"] == defaults["lr_decay"] == "reference"
    chosen = config_fields(parser.parse_args([*required, "--lr-groups", "classifier", "--lr-decay", "text"]))
    assert (chosen["lr_groups"], chosen["lr_decay"]) == ("classifier", "text")


# --- 4. ADL placement --------------------------------------------------------------------------


def test_adl_follows_layer3_block0_and_layer4_blocks_0_and_2(resnets):
    model = resnets["adl"]
    placed = [name for name, m in model.named_modules() if isinstance(m, AttentionDropout)]
    assert placed == ["features.layer3.1", "features.layer4.1", "features.layer4.4"]
    layer3, layer4 = model.features.layer3, model.features.layer4
    assert [type(m).__name__ for m in layer3] == ["Bottleneck", "AttentionDropout", *["Bottleneck"] * 5]
    assert [type(m).__name__ for m in layer4] == ["Bottleneck", "AttentionDropout", "Bottleneck", "Bottleneck",
                                                  "AttentionDropout"]
    seen = []
    for name in placed:
        model.get_submodule(name).register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    model.eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert seen == [1024, 2048, 2048]


# --- 5. SPG taps, resolution of masks and losses ------------------------------------------------


def test_spg_branches_read_layer3_block0_and_supervise_at_input_resolution(resnets):
    model = resnets["spg"]
    assert model.head_b1[0].in_channels == model.head_b2[0].in_channels == 1024
    assert model.head_b_shared[0].in_channels == 1024 and model.head_c[0].in_channels == 2048
    taps = {}
    hooks = [
        model.features.layer3[0].register_forward_hook(lambda m, i, out: taps.__setitem__("block0", out)),
        model.head_b1.register_forward_pre_hook(lambda m, args: taps.__setitem__("b1_in", args[0])),
        model.features.layer3[-1].register_forward_hook(lambda m, i, out: taps.__setitem__("layer3", out)),
        model.head_b2.register_forward_pre_hook(lambda m, args: taps.__setitem__("b2_in", args[0])),
        model.features.layer4.register_forward_hook(lambda m, i, out: taps.__setitem__("final", out)),
    ]
    x, target = torch.randn(2, 3, 48, 48), torch.tensor([3, 7])
    model.train()
    model.target = target
    model(x)
    for hook in hooks:
        hook.remove()
    assert torch.equal(taps["b1_in"], taps["block0"]) and torch.equal(taps["b2_in"], taps["layer3"])
    masks = model.guidance_masks()
    assert all(m.shape == (2, 48, 48) for m in masks.values())
    with torch.no_grad():  # the c head's loss: BCE of its upsampled logits on the fused-map mask
        logits_c = F.interpolate(model.head_c(taps["final"]), size=(48, 48), mode="bilinear",
                                 align_corners=False)[:, 0]
    torch.testing.assert_close(model._outputs["c"], logits_c)
    valid = masks["c"] != -1
    expected = F.binary_cross_entropy_with_logits(logits_c[valid], masks["c"][valid])
    loss = model.auxiliary_loss(target)
    assert loss.requires_grad and torch.isfinite(loss)
    from inatloc_nb.training.methods.spg import guidance_loss

    torch.testing.assert_close(guidance_loss(model._outputs["c"].detach(), masks["c"]), expected)
    model.target = None


# --- 6. initialisation --------------------------------------------------------------------------


def test_linear_classifier_starts_normal_001_with_zero_bias(resnets):
    for name in ("cam", "adl"):
        weight = resnets[name].classifier.weight.detach()
        assert abs(float(weight.mean())) < 1e-4
        assert float(weight.std()) == pytest.approx(LINEAR_INIT_STD, rel=0.02)
        fc = resnets[name].classifier
        assert torch.count_nonzero(fc.bias) == 0


def test_acol_heads_are_he_initialised(resnets):
    convs = [m for branch in (resnets["acol"].classifier_a, resnets["acol"].classifier_b)
             for m in branch if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6
    for conv in convs[:2]:  # the big 3 x 3 convolutions: tight statistics
        fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
        assert float(conv.weight.detach().std()) == pytest.approx(math.sqrt(2 / fan_out), rel=0.02)
    assert all(torch.count_nonzero(conv.bias) == 0 for conv in convs)


def test_spg_heads_and_classifier_are_xavier_initialised(resnets):
    model = resnets["spg"]
    layers = [m for head in (model.head_b1, model.head_b2, model.head_b_shared, model.head_c)
              for m in head if isinstance(m, nn.Conv2d)] + [model.classifier]
    for layer in layers:
        weight = layer.weight.detach()
        receptive = weight[0, 0].numel() if weight.dim() == 4 else 1
        bound = math.sqrt(6 / ((weight.shape[0] + weight.shape[1]) * receptive))
        assert float(weight.abs().max()) <= bound
        if weight.numel() > 100_000:
            assert float(weight.std()) == pytest.approx(bound / math.sqrt(3), rel=0.02)
        assert torch.count_nonzero(layer.bias) == 0


# --- 7. schedule and last batch -----------------------------------------------------------------


def _reference_factors(epochs: int, decay_every: int) -> list[float]:
    """The LR factor per epoch of the reference's loop: ``adjust_learning_rate(epoch + 1)``
    before each epoch, dividing by 10 when ``(epoch + 1) % decay_every == 0``."""
    factor, out = 1.0, []
    for epoch in range(epochs):
        if (epoch + 1) % decay_every == 0:
            factor *= 0.1
        out.append(factor)
    return out


def test_schedule_decays_where_the_reference_loop_does():
    ten = Schedule.parse("10epoch")
    assert ten.milestones == (2, 5, 8)
    np.testing.assert_allclose([ten.factor(e) for e in range(10)], _reference_factors(10, 3))
    assert Schedule.parse("10epoch", lr_decay="text").milestones == (3, 6, 9)
    assert Schedule.parse(7).milestones == (2, 5) and Schedule.parse(7, "text").milestones == (3, 6)
    # 2 epochs, LR / 10 after the first: the reference loop with a decay frequency of 2
    two = Schedule.parse("2epoch")
    assert two == Schedule.parse("2epoch", lr_decay="text") == Schedule(2, (1,))
    np.testing.assert_allclose([two.factor(e) for e in range(2)], _reference_factors(2, 2))
    # "E/D": Choe et al.'s CUB schedule, 50 epochs with a decay frequency of 15
    cub = Schedule.parse("50/15")
    np.testing.assert_allclose([cub.factor(e) for e in range(50)], _reference_factors(50, 15))
    assert Schedule.parse("50/15", "text").milestones == (15, 30, 45)


@pytest.mark.parametrize("bad", ["50/0", "0/15", "50/x", "/15"])
def test_decay_interval_schedules_are_validated(bad):
    with pytest.raises(InatlocError, match="schedule"):
        validate.schedule(bad, "schedule")


def test_last_partial_training_batch_is_kept(tiny_dataset):
    n = len(tiny_dataset.images("train"))
    batch_size = 7 if n % 7 else 9
    assert n % batch_size
    dls = build_dataloaders(tiny_dataset, "genus", image_size=16, batch_size=batch_size, device="cpu",
                            num_workers=0)
    assert not dls.train.drop_last
    sizes = [len(y) for _, y in dls.train]
    assert len(sizes) == math.ceil(n / batch_size) and sum(sizes) == n


# --- 8. learning rates selected among the main grid ----------------------------------------------


def _sweep() -> SweepConfig:
    return SweepConfig.from_dict({
        "datasets": {"tiny": "synth:tiny"}, "levels": ["species", "genus"], "methods": ["cam"],
        "lrs": [0.1, 0.01, 0.001], "backbone": "tinycnn", "pretrained": False,
        "extra": [{"name": "data-efficiency", "lrs": LR_SELECTED, "per_class": [2], "seeds": [0, 1]}],
        "baselines": ["cam-agg"],
    })


def _finish(results_dir, spec, val_score: float) -> None:
    """A finished run folder for ``spec`` as the sweep leaves it, with D_f MaxBoxAccV2 ``val_score``."""
    folder = runs_dir(results_dir) / spec.run_id
    block = {"maxboxacc_v2": val_score, "per_iou": {"30": val_score, "50": val_score, "70": val_score},
             "optimal_threshold": {"30": 0.2, "50": 0.3, "70": 0.4}, "top1": 50.0, "n_images": 10}
    atomic_write_json(folder / "metrics.json", {**block, "maxboxacc_v2": 40.0, "val": block, "level": spec.level,
                                                "method": spec.method, "lr": spec.lr, "seed": spec.seed,
                                                "per_class": spec.per_class, "n_train_images": 20})
    atomic_write_json(folder / results.RUN_RECORD, {"run_id": spec.run_id, "params": spec.params(),
                                                    "data": spec.data, "status": "ok"})
    results.write_run_results(folder)


def test_selected_lr_runs_wait_for_and_select_among_the_main_grid(tmp_path):
    specs = expand(_sweep())
    selected = [s for s in specs if s.lr == LR_SELECTED]
    assert len(selected) == 2 * 2  # levels x seeds, per_class 2
    main = {s.run_id: s for s in specs if s.per_class is None and s.method == "cam" and s.lr != LR_SELECTED}
    assert len(main) == 2 * 3
    for spec in selected:
        assert "lrselected" in spec.run_id and not spec.repeats_a_candidate()  # per_class 2: not in the main grid
        candidates = spec.dependencies()
        assert {c.run_id for c in candidates} <= set(main)
        assert {(c.level, c.lr) for c in candidates} == {(spec.level, lr) for lr in (0.1, 0.01, 0.001)}
        with pytest.raises(InatlocError, match="resolve its learning rate"):
            spec.notebook_parameters(tmp_path, tmp_path)
    waves = _phases(specs)
    assert {s.run_id for s in waves[0]} == set(main)
    assert set(map(id, waves[1])) == set(map(id, selected + [s for s in specs if s.method == "cam-agg"]))
    # ids of runs at the reference defaults do not depend on the protocol options
    assert not any({"lr_groups", "lr_decay", "lr_search"} & set(s.params()) for s in main.values())

    # nothing finished: the run is recorded as failed with a clear message
    outcome = execute_run(selected[0], tmp_path, notebook=tmp_path / "unused.ipynb")
    assert outcome.status == "failed" and "run the main grid first" in outcome.error
    record = json.loads((runs_dir(tmp_path) / selected[0].run_id / results.RUN_RECORD).read_text())
    assert record["params"]["lr"] is None

    scores = {("species", 0.1): 30.0, ("species", 0.01): 55.0, ("species", 0.001): 55.0,
              ("genus", 0.1): 61.0, ("genus", 0.01): 20.0}  # genus at 0.001 never finished
    for spec in main.values():
        if (spec.level, spec.lr) in scores:
            _finish(tmp_path, spec, scores[spec.level, spec.lr])
    for spec in selected:
        resolved, selection = resolve_lr(spec, tmp_path)
        expected = 0.001 if spec.level == "species" else 0.1  # a tie goes to the smaller lr
        assert resolved.lr == selection["lr"] == expected and resolved.run_id != spec.run_id
        assert resolved.per_class == 2 and resolved.seed == spec.seed
        params = resolved.notebook_parameters(tmp_path / "out", tmp_path)["config"]
        assert params["lr"] == expected and "lr_search" not in params
        assert params["lr_groups"] == params["lr_decay"] == "reference"
    assert resolve_lr(next(iter(main.values())), tmp_path)[1] is None


@pytest.mark.slow
def test_a_selected_run_that_is_a_main_grid_run_takes_its_outputs(tmp_path, tiny_dataset_dir):
    """The stability grid's seed 0 at the selected lr is the main grid's run at that lr: the
    sweep gives it that run's outputs (hard links), with the numbers training it again gives."""
    from inatloc_nb.runs.run import run_experiment
    from inatloc_nb.sweep import default_notebook

    config = SweepConfig.from_dict({
        "datasets": {"tiny": str(tiny_dataset_dir)}, "levels": ["species"], "methods": ["cam"],
        "lrs": [0.1, 0.01], "backbone": "tinycnn", "pretrained": False, "image_size": 32, "schedule": 1,
        "batch_size": 16, "extra": [{"name": "stability", "lrs": LR_SELECTED, "seeds": [0, 1]}]})
    specs = expand(config)
    main = [s for s in specs if s.lr != LR_SELECTED]
    same, other = sorted((s for s in specs if s.lr == LR_SELECTED), key=lambda s: s.seed)
    for spec in main:  # as the sweep leaves them
        folder = runs_dir(tmp_path) / spec.run_id
        run_experiment(spec.config, folder, say=lambda *_: None)
        atomic_write_json(folder / results.RUN_RECORD, {"run_id": spec.run_id, "params": spec.params(),
                                                        "data": spec.data, "status": "ok"})
        results.write_run_results(folder)
    assert same.repeats_a_candidate() and not other.repeats_a_candidate()
    resolved, selection = resolve_lr(same, tmp_path)
    twin = next(s for s in main if s.config == resolved.config)
    assert selection["trained_as"] == twin.run_id
    assert "trained_as" not in resolve_lr(other, tmp_path)[1]  # seed 1 was not trained by the main grid

    assert execute_run(same, tmp_path, notebook=default_notebook()).status == "ok"
    ours, theirs = runs_dir(tmp_path) / same.run_id, runs_dir(tmp_path) / twin.run_id
    record = json.loads((ours / results.RUN_RECORD).read_text())
    assert record["lr_selection"]["trained_as"] == twin.run_id and record["params"]["lr"] == twin.lr
    for name in ("model.pth", "metrics.json", "cams/test.npz", "cams/val.npz", "analysis.parquet"):
        assert (ours / name).stat().st_ino == (theirs / name).stat().st_ino, name  # linked, not trained again
    metric_cols = ["split", "maxboxacc_v2", "maxboxacc_50", "top1", "n_train_images"]
    table = results.run_results(ours)
    assert set(table["run_id"]) == {same.run_id} and set(table["lr"]) == {twin.lr}
    assert table.select(metric_cols).sort("split").rows() == \
        results.run_results(theirs).select(metric_cols).sort("split").rows()
    again = run_experiment(resolved.config, tmp_path / "again", say=lambda *_: None)
    shared = json.loads((ours / "metrics.json").read_text())
    assert (again["maxboxacc_v2"], again["val"]["maxboxacc_v2"]) == (shared["maxboxacc_v2"],
                                                                     shared["val"]["maxboxacc_v2"])


def test_selected_lr_and_protocol_options_are_validated():
    base = {"datasets": {"tiny": "synth:tiny"}, "levels": ["species"], "lrs": [0.01], "backbone": "tinycnn",
            "pretrained": False}
    with pytest.raises(InatlocError, match="extra grids only"):
        SweepConfig.from_dict({**base, "lrs": LR_SELECTED})
    with pytest.raises(InatlocError, match="cannot be listed"):
        SweepConfig.from_dict({**base, "extra": [{"lrs": [LR_SELECTED, 0.1]}]})
    with pytest.raises(InatlocError, match="extra grids only"):
        SweepConfig.from_dict({**base, "baselines": {"cam-agg": {"lrs": LR_SELECTED}}})
    with pytest.raises(InatlocError, match="lr_groups"):
        SweepConfig.from_dict({**base, "lr_groups": "heads"})
    config = SweepConfig.from_dict({**base, "extra": [{"name": "text", "lr_groups": "classifier",
                                                       "lr_decay": "text"}]})
    reference, text = expand(config)
    assert (text.config.lr_groups, text.config.lr_decay) == ("classifier", "text") and text.run_id != reference.run_id
    assert text.params()["lr_groups"] == "classifier"


# --- 9. FSL-Det ---------------------------------------------------------------------------------


def test_fsl_det_is_a_single_map_c4_faster_rcnn_with_the_tf_schedule():
    from inatloc_nb.runs.baselines.fsl_det import build_detector, detector_size, top_box, warmup_cosine

    assert detector_size(RunConfig(data="synth:tiny")) == 640
    model = build_detector(96, pretrained=False)
    assert model.backbone.out_channels == 1024 and isinstance(model.backbone, nn.Sequential)
    assert not any("fpn" in name for name, _ in model.named_modules())
    assert model.rpn.anchor_generator.sizes == ((64, 128, 256, 512),)
    assert model.rpn.anchor_generator.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert model.roi_heads.box_roi_pool.output_size == (14, 14)
    assert sum(isinstance(m, Bottleneck) for m in model.roi_heads.box_head.modules()) == 3  # layer4
    assert model.transform.min_size == (96,) and model.transform.max_size == 96
    assert model.rpn._post_nms_top_n == {"training": 300, "testing": 300}
    assert model.roi_heads.fg_bg_sampler.batch_size_per_image == 64

    factors = [warmup_cosine(step, 100) for step in range(101)]
    assert factors[0] == pytest.approx(1 / 3, rel=1e-3) and factors[8] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(factors[:8], factors[1:9]))
    assert all(a > b for a, b in zip(factors[8:100], factors[9:101])) and factors[100] == pytest.approx(0.0)

    detections = {"boxes": torch.tensor([[0.0, 0.0, 64.0, 32.0], [1.0, 1.0, 2.0, 2.0]]),
                  "scores": torch.tensor([0.9, 0.1])}
    assert top_box(detections, (128, 64)).tolist() == [[0, 0, 111, 111]]


# --- 10. model selection within a run: the best D_f epoch ------------------------------------------


class _Snapshots(Callback):
    """Copies of the weights at each of EpochSelect's evaluations (runs right after it)."""

    order = EpochSelect.order + 1

    def before_fit(self) -> None:
        self.states = [self._copy()]

    def after_epoch(self) -> None:
        self.states.append(self._copy())

    def _copy(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.learn.model.state_dict().items()}


def _same_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def _selected(tiny_dataset, scripted: list[float] | None, monkeypatch) -> tuple[EpochSelect, _Snapshots, nn.Module]:
    """Train 2 epochs with EpochSelect; ``scripted`` replaces the measured MaxBoxAccV2 per evaluation."""
    if scripted is not None:
        real, values = cam.score_cams, iter(scripted)
        monkeypatch.setattr(cam, "score_cams", lambda *a, **k: dataclasses.replace(real(*a, **k), mean=next(values)))
    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level="genus", lr=0.05, schedule=2, backbone="tinycnn", pretrained=False, image_size=32,
        batch_size=16, num_workers=0))
    select, snaps = EpochSelect(tiny_dataset, "genus"), _Snapshots()
    with learn.added_cbs([select, snaps]):
        learn.fit(2)
    return select, snaps, learn.model


@pytest.mark.slow
def test_epoch_select_scores_epochs_0_to_E_and_restores_the_best(tiny_dataset, monkeypatch):
    select, snaps, model = _selected(tiny_dataset, None, monkeypatch)
    assert len(select.scores) == len(select.top1) == len(snaps.states) == 3
    assert select.selected_epoch == int(np.argmax(select.scores))  # argmax: the first maximum
    assert _same_weights(model, snaps.states[select.selected_epoch])
    # each score is that of the weights at that moment, through the one evaluation path
    for epoch in (0, 2):
        model.load_state_dict(snaps.states[epoch])
        again = cam.score_cams(cam.extract_cams(model, tiny_dataset, "val", "genus", image_size=32, num_workers=0),
                               tiny_dataset)
        assert again.mean == pytest.approx(select.scores[epoch])
    assert select.best_result.mean == select.scores[select.selected_epoch]


@pytest.mark.slow
@pytest.mark.parametrize("scripted, expected", [([50.0, 70.0, 70.0], 1), ([80.0, 60.0, 80.0], 0)])
def test_epoch_select_ties_go_to_the_earliest_epoch_and_epoch_0_competes(tiny_dataset, monkeypatch,
                                                                         scripted, expected):
    select, snaps, model = _selected(tiny_dataset, scripted, monkeypatch)
    assert select.scores == scripted and select.selected_epoch == expected
    assert _same_weights(model, snaps.states[expected]) and not _same_weights(model, snaps.states[2])
    assert select.summary()["val_maxboxacc_v2_per_epoch"] == scripted


@pytest.mark.slow
@pytest.mark.parametrize("method", ["acol", "spg"])
def test_epoch_select_uses_the_method_maps(tiny_dataset, method):
    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level="genus", method=method, lr=0.01, schedule=1, backbone="tinycnn", pretrained=False,
        image_size=32, batch_size=16, num_workers=0))
    select, snaps = EpochSelect(tiny_dataset, "genus"), _Snapshots()
    with learn.added_cbs([select, snaps]):
        learn.fit(1)
    assert len(select.scores) == 2 and select.selected_epoch == int(np.argmax(select.scores))
    assert _same_weights(learn.model, snaps.states[select.selected_epoch])
    direct = cam.score_cams(cam.extract_cams(learn, tiny_dataset, "val", "genus"), tiny_dataset)
    assert direct.mean == pytest.approx(select.scores[select.selected_epoch])


@pytest.mark.slow
def test_run_experiment_scores_the_selected_epoch_or_the_last(tmp_path, tiny_dataset_dir):
    from inatloc_nb.runs.run import run_experiment

    common = dict(data=str(tiny_dataset_dir), level="genus", lr=0.05, schedule=2, backbone="tinycnn",
                  pretrained=False, image_size=32, batch_size=16, num_workers=0)
    best = run_experiment(RunConfig(**common, select_epoch="best"), tmp_path / "best", say=lambda _: None)
    last = run_experiment(RunConfig(**common), tmp_path / "last", say=lambda _: None)
    on_disk = json.loads((tmp_path / "best" / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(best)) and on_disk["select_epoch"] == "best"
    scores = on_disk["val_maxboxacc_v2_per_epoch"]
    assert len(scores) == len(on_disk["val_top1_per_epoch"]) == 3
    assert on_disk["selected_epoch"] == int(np.argmax(scores))
    assert on_disk["val"]["maxboxacc_v2"] == pytest.approx(max(scores))  # the reused D_f CAMs of that epoch
    assert on_disk["val"]["top1"] == pytest.approx(on_disk["val_top1_per_epoch"][on_disk["selected_epoch"]])
    assert (last["select_epoch"], last["selected_epoch"]) == ("last", 2)
    assert "val_maxboxacc_v2_per_epoch" not in last
    # evaluating between epochs leaves training unchanged: the last epoch's weights are the same
    weights = {name: torch.load(tmp_path / name / "model.pth", weights_only=True) for name in ("best", "last")}
    same = all(torch.equal(weights["best"][k], v) for k, v in weights["last"].items())
    assert same == (on_disk["selected_epoch"] == 2)
    if on_disk["selected_epoch"] == 2:
        assert best["maxboxacc_v2"] == last["maxboxacc_v2"]


def test_select_epoch_option_in_config_command_line_and_sweep():
    from inatloc_nb.cli.run_options import add_run_options, config_fields
    from inatloc_nb.sweep import ConfigError

    assert RunConfig(data="synth:tiny").select_epoch == "last"  # the reference's --eval_checkpoint_type
    with pytest.raises(InatlocError, match="select_epoch.*best, last"):
        RunConfig(data="synth:tiny", select_epoch="middle")
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    required = ["--data", "synth:tiny", "--out", "run"]
    assert config_fields(parser.parse_args(required))["select_epoch"] == "last"
    assert config_fields(parser.parse_args([*required, "--select-epoch", "best"]))["select_epoch"] == "best"

    grid = {"datasets": {"tiny": "synth:tiny"}, "levels": ["genus"], "lrs": [0.01], "backbone": "tinycnn",
            "pretrained": False}
    last, = expand(SweepConfig.from_dict(grid))
    best, = expand(SweepConfig.from_dict({**grid, "select_epoch": "best"}))
    # runs made when "best" was the default keep their ids; a last-epoch run is a different run
    assert "select_epoch" not in best.params()
    assert last.params()["select_epoch"] == "last" and last.run_id != best.run_id
    assert last.notebook_parameters("out", "results")["config"]["select_epoch"] == "last"
    with pytest.raises(ConfigError, match="select_epoch"):
        SweepConfig.from_dict({**grid, "select_epoch": "first"})
