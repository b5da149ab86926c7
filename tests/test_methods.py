"""WSOL methods: the mechanism of each method, and a few real training steps of each."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
from fastai.callback.core import Callback
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from torch import nn

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.methods import METHODS, get_method
from inatloc_nb.training.methods.acol import ACoLNet
from inatloc_nb.training.methods.adl import AttentionDropout
from inatloc_nb.training.methods.cutmix import CutMixCallback
from inatloc_nb.training.methods.guided import min_max_normalize
from inatloc_nb.training.methods.has import HideAndSeekCallback, hide_patches, patch_side
from inatloc_nb.training.methods.spg import IGNORE, guidance_loss, guidance_mask
from inatloc_nb.training.models import CAMNet, build_backbone
from inatloc_nb.training.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

N_CLASSES = 4


def tiny_features() -> tuple[nn.Module, int]:
    return build_backbone("tinycnn", pretrained=False)


def tensor_learner(callbacks: list[Callback], n: int = 64, size: int = 32, bs: int = 8,
                   fill=None) -> Learner:
    """A fastai Learner on random tensors (or ``fill(i)`` images) with a small CAM model."""
    torch.manual_seed(0)
    items = [((fill(i) if fill else torch.rand(3, size, size) + 1.0), torch.tensor(i % N_CLASSES))
             for i in range(n)]
    dls = DataLoaders.from_dsets(items, items[: n // 2], bs=bs, shuffle=True, device="cpu",
                                 num_workers=0)
    features, channels = tiny_features()
    return Learner(dls, CAMNet(features, channels, N_CLASSES), loss_func=CrossEntropyLossFlat(),
                   cbs=callbacks)


class InputRecorder(Callback):
    """Keeps a copy of the batch at its position in the callback order."""

    def __init__(self, order: int) -> None:
        self.order, self.seen = order, []

    def before_batch(self) -> None:
        self.seen.append((self.training, self.x.detach().clone()))


def quiet_fit(learn: Learner, epochs: int = 1) -> None:
    with learn.no_bar(), learn.no_logging():
        learn.fit(epochs, lr=1e-3)


def quiet_validate(learn: Learner) -> None:
    with learn.no_bar(), learn.no_logging():
        learn.validate()


# --- registry -----------------------------------------------------------------------------


def test_registry_and_table_a4_defaults():
    assert set(METHODS) == {"cam", "has", "acol", "spg", "adl", "cutmix", "multihead", "bridgegap"}
    assert get_method("has").hparams == {"drop_rate": 0.09, "patch_size": 31}
    assert get_method("acol").hparams == {"erase_threshold": 0.79}
    assert get_method("spg").hparams == {"delta_l_b1": 0.02, "delta_h_b1": 0.03, "delta_l_b2": 0.05,
                                         "delta_h_b2": 0.47, "delta_l_c": 0.29, "delta_h_c": 0.36}
    assert get_method("adl").hparams == {"drop_rate": 0.68, "erase_threshold": 0.93}
    assert get_method("cutmix").hparams == {"size_prior": 0.10, "mix_rate": 0.93}
    assert get_method("has", drop_rate=0.5).hparams["drop_rate"] == 0.5


def test_unknown_method_or_hyperparameter_lists_valid_ones():
    with pytest.raises(InatlocError, match="valid: acol, adl, bridgegap, cam, cutmix, has, multihead, spg"):
        get_method("gradcam")
    with pytest.raises(InatlocError, match="rate.*valid: drop_rate, patch_size"):
        get_method("has", rate=0.1)
    with pytest.raises(InatlocError, match="valid: none"):
        get_method("cam", lr=0.1)


# --- HaS ----------------------------------------------------------------------------------


def test_has_patch_side_scales_with_image_size():
    assert patch_side(31, 224) == 31
    assert patch_side(31, 448) == 62
    assert patch_side(31, 64) == 9
    assert patch_side(31, 4) == 1


def test_has_hides_whole_grid_cells_at_its_rate():
    torch.manual_seed(1)
    images = torch.rand(200, 3, 40, 40) + 1.0
    hidden, keep = hide_patches(images, patch=9, drop_rate=0.09)
    assert keep.shape == (200, 5, 5)  # the last row and column of cells are partial
    for b in range(3):
        for i in range(5):
            for j in range(5):
                cell = hidden[b, :, 9 * i : 9 * i + 9, 9 * j : 9 * j + 9]
                if keep[b, i, j]:
                    assert torch.equal(cell, images[b, :, 9 * i : 9 * i + 9, 9 * j : 9 * j + 9])
                else:
                    assert torch.count_nonzero(cell) == 0
    assert abs((~keep).float().mean().item() - 0.09) < 0.015


@pytest.mark.slow
def test_has_callback_erases_in_training_only():
    recorder = InputRecorder(order=10)  # runs after Hide-and-Seek (order 0)
    learn = tensor_learner([HideAndSeekCallback(0.09, 31), recorder], n=96, size=64)
    quiet_fit(learn, epochs=2)
    quiet_validate(learn)
    side = patch_side(31, 64)
    train = torch.cat([x for training, x in recorder.seen if training])
    valid = torch.cat([x for training, x in recorder.seen if not training])
    cells = train.unfold(2, side, side).unfold(3, side, side)  # full cells only
    erased = (cells.abs().amax(dim=(1, 4, 5)) == 0).float().mean().item()
    assert abs(erased - 0.09) < 0.03
    assert torch.count_nonzero(valid == 0) == 0  # inputs are >= 1: nothing erased at evaluation


# --- CutMix -------------------------------------------------------------------------------


class CutMixProbe(Callback):
    """Records, per training batch, the input before and after CutMix and the mixed loss."""

    def __init__(self, cutmix: CutMixCallback) -> None:
        self.cutmix, self.before, self.records = cutmix, None, []
        self.order = cutmix.order + 1

    def before_fit(self) -> None:
        self.learn.add_cb(_Snapshot(self))

    def after_loss(self) -> None:
        if not self.training:
            return
        with torch.no_grad():
            ce = [F.cross_entropy(self.pred, y, reduction="none") for y in (self.y, self.cutmix.yb1[0])]
            expected = (self.cutmix.lam * ce[0] + (1 - self.cutmix.lam) * ce[1]).mean()
        self.records.append((self.cutmix.mixed, self.before, self.x.detach().clone(),
                             float(self.cutmix.lam), float(self.loss), float(expected)))


class _Snapshot(Callback):
    order = -5  # before CutMix

    def __init__(self, probe: CutMixProbe) -> None:
        self.probe = probe

    def before_batch(self) -> None:
        self.probe.before = self.x.detach().clone()


@pytest.mark.slow
def test_cutmix_mixes_by_area_at_its_rate():
    cutmix = CutMixCallback(size_prior=0.10, mix_rate=0.93)
    probe = CutMixProbe(cutmix)
    learn = tensor_learner([cutmix, probe], n=1200, size=16, bs=8,
                           fill=lambda i: torch.full((3, 16, 16), float(i + 1)))
    torch.manual_seed(3)
    quiet_fit(learn)
    records = probe.records
    assert len(records) == 150
    rate = sum(r[0] for r in records) / len(records)
    assert abs(rate - 0.93) < 0.07
    for mixed, before, after, lam, loss, expected in records:
        changed = (before != after).any(dim=(0, 1))  # (H, W): pixels pasted from another image
        assert lam == pytest.approx(1 - changed.float().mean().item(), abs=1e-6)
        assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
        if not mixed:
            assert lam == 1.0 and not changed.any()
        else:
            rows, cols = changed.nonzero(as_tuple=True)
            if len(rows):  # the pasted region is one rectangle
                assert changed[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
    assert any(0.05 < r[3] < 0.95 for r in records if r[0])


def test_cutmix_box_side_is_truncated_as_the_reference():
    import types

    cutmix = CutMixCallback(size_prior=0.10, mix_rate=1.0)
    cutmix.learn = types.SimpleNamespace(x=torch.zeros(1, 3, 224, 224))
    lam = torch.tensor([1 - 0.7**2])  # side 224 * 0.7 = 156.8: the reference takes 156, rounding 157
    for seed in range(20):
        torch.manual_seed(seed)
        x1, y1, x2, y2 = (int(v) for v in cutmix.rand_bbox(224, 224, lam))
        torch.manual_seed(seed)
        cx, cy = int(torch.randint(0, 224, (1,))), int(torch.randint(0, 224, (1,)))
        half = int(224 * float(torch.sqrt(1 - lam))) // 2
        assert (x1, y1, x2, y2) == (max(cx - half, 0), max(cy - half, 0), min(cx + half, 224), min(cy + half, 224))
    assert half == 78


# --- ADL ----------------------------------------------------------------------------------


def test_adl_layer_selects_drop_mask_or_importance_map():
    x = torch.randn(3, 6, 5, 5)
    attention = x.mean(1, keepdim=True)
    drop = AttentionDropout(drop_rate=1.0, erase_threshold=0.93).train()
    peak = attention.flatten(1).max(1).values.view(-1, 1, 1, 1)
    assert torch.equal(drop(x), x * (attention < 0.93 * peak).float())
    keep = AttentionDropout(drop_rate=0.0, erase_threshold=0.93).train()
    assert torch.allclose(keep(x), x * torch.sigmoid(attention))
    assert torch.equal(drop.eval()(x), x)
    with pytest.raises(InatlocError, match="drop_rate"):
        AttentionDropout(1.5, 0.5)


def test_adl_acts_only_in_training_at_its_drop_rate():
    torch.manual_seed(0)
    features, channels = tiny_features()
    plain = CAMNet(copy.deepcopy(features), channels, N_CLASSES)
    adl = get_method("adl").build_model(features, channels, N_CLASSES)
    adl.classifier.load_state_dict(plain.classifier.state_dict())
    layers = [m for m in adl.modules() if isinstance(m, AttentionDropout)]
    assert len(layers) == 2
    x = torch.randn(4, 3, 32, 32)
    plain.eval(), adl.eval()
    with torch.no_grad():
        assert torch.allclose(adl(x), plain(x))
        assert torch.allclose(get_method("adl").cams(adl, x, torch.arange(4)),
                              get_method("cam").cams(plain, x, torch.arange(4)))
        adl.train()
        choices = []
        for _ in range(200):
            adl(x[:1])
            choices += [layer.last_choice for layer in layers]
    assert abs(choices.count("drop") / len(choices) - 0.68) < 0.07


# --- ACoL ---------------------------------------------------------------------------------


def test_acol_second_branch_sees_erased_features():
    torch.manual_seed(0)
    features, channels = tiny_features()
    net = get_method("acol").build_model(features, channels, N_CLASSES)
    assert isinstance(net, ACoLNet)
    seen = {}
    net.features.register_forward_hook(lambda m, i, out: seen.__setitem__("feats", out.detach()))
    net.classifier_b.register_forward_pre_hook(lambda m, args: seen.__setitem__("b_in", args[0].detach()))
    x, target = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    net.train()
    net.target = target
    net(x)
    feats = seen["feats"]
    with torch.no_grad():
        attention = net.classifier_a(feats)[torch.arange(4), target]
    erased = min_max_normalize(attention) >= 0.79
    assert erased.any() and (~erased).any()
    assert torch.count_nonzero(seen["b_in"].permute(0, 2, 3, 1)[erased]) == 0
    kept = ~erased
    assert torch.equal(seen["b_in"].permute(0, 2, 3, 1)[kept], feats.permute(0, 2, 3, 1)[kept])
    assert net.auxiliary_loss(target).requires_grad
    net.eval()
    cams = get_method("acol").cams(net, x, target)
    with torch.no_grad():
        cam_a = min_max_normalize(net.classifier_a(net.feature_maps(x))[torch.arange(4), target])
    assert cams.shape == (4, 8, 8)
    assert torch.all(cams >= cam_a) and torch.allclose(cams.amax((1, 2)), torch.ones(4))


# --- SPG ----------------------------------------------------------------------------------


def test_spg_mask_follows_thresholds():
    scores = torch.tensor([[[0.01, 0.20, 0.50], [0.29, 0.30, 0.36], [0.37, 0.90, 0.10]]])
    mask = guidance_mask(scores, low=0.29, high=0.36, min_foreground=1)
    expected = torch.tensor([[[0, 0, 1], [IGNORE, IGNORE, IGNORE], [1, 1, 0]]])
    assert torch.equal(mask, expected.float())
    # fewer than 30 pixels (the default) above high: 0.7 x the maximum (0.63) is the threshold
    expected = torch.tensor([[[0, 0, IGNORE], [IGNORE, IGNORE, IGNORE], [IGNORE, 1, 0]]])
    assert torch.equal(guidance_mask(scores, low=0.29, high=0.36), expected.float())
    # no pixel above high: 0.7 x the maximum is the foreground threshold
    weak = torch.tensor([[[0.1, 0.2], [0.25, 0.3]]])
    assert torch.equal(guidance_mask(weak, low=0.15, high=0.5, min_foreground=1),
                       torch.tensor([[[0.0, IGNORE], [1.0, 1.0]]]))


def test_spg_loss_ignores_ignored_pixels():
    mask = torch.tensor([[1.0, 0.0, IGNORE]])
    logits = torch.tensor([[2.0, -1.0, 5.0]])
    expected = F.binary_cross_entropy_with_logits(logits[:, :2], mask[:, :2])
    assert torch.isclose(guidance_loss(logits, mask), expected)
    logits[0, 2] = -30.0
    assert torch.isclose(guidance_loss(logits, mask), expected)


def test_spg_heads_are_supervised_by_thresholded_maps():
    torch.manual_seed(0)
    method = get_method("spg")
    features, channels = tiny_features()
    net = method.build_model(features, channels, N_CLASSES).train()
    target = torch.tensor([0, 1, 2, 3])
    net.target = target
    net(torch.randn(4, 3, 32, 32))
    masks = net.guidance_masks()
    attention = net._outputs["attention"]
    b2 = torch.sigmoid(net._outputs["b2"])
    for mask, source, low, high in ((masks["b2"], attention, 0.02, 0.03), (masks["b1"], b2, 0.05, 0.47)):
        assert mask.shape == (4, 32, 32)  # at the input resolution
        assert torch.all(source[mask == 0] < low)
        assert torch.all(mask[source < low] == 0)
        between = (source >= low) & (source <= high)
        assert torch.all(mask[between & (mask != 1)] == IGNORE)
    assert torch.all(masks["b2"][attention > 0.03] == 1)
    loss = net.auxiliary_loss(target)
    loss.backward()
    assert net.head_c[0].weight.grad is not None and net.head_b_shared[-1].weight.grad is not None


# --- every method trains through build_learner --------------------------------------------



@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_and_yields_cams(name, tiny_dataset):
    from fastai.callback.training import ShortEpochCallback

    from inatloc_nb.training.learner import build_learner

    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level="species", method=name, lr=0.01, schedule=1, backbone="tinycnn", pretrained=False,
        image_size=32, batch_size=8, num_workers=0, device="cpu"))
    before = [p.detach().clone() for p in learn.model.parameters()]
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=ShortEpochCallback(pct=0.5, short_valid=True))
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))
    assert learn.recorder.losses and all(np.isfinite(float(v)) for v in learn.recorder.losses)
    xb, yb = learn.dls.valid.one_batch()
    learn.model.eval()
    cams = learn.method.cams(learn.model, xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor))
    assert cams.shape == (len(xb), 8, 8) and torch.isfinite(cams).all() and not cams.requires_grad
