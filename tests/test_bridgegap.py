"""The bridgegap method: attentive dropout, the stage split, the alignment losses, training."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.methods import METHODS, get_method
from inatloc_nb.training.methods.bridgegap import (
    AttentiveDropout,
    BridgeGapNet,
    alignment_losses,
    split_last_stage,
)
from inatloc_nb.training.models import build_backbone
from inatloc_nb.training.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_registered_with_the_reference_cub_defaults():
    assert "bridgegap" in METHODS
    assert get_method("bridgegap").hparams == {
        "sim_weight": 0.5, "norm_weight": 0.05, "drop_weight": 2.0, "fg_threshold": 0.4,
        "bg_threshold": 0.2, "drop_threshold": 0.8, "drop_prob": 0.25, "warm_epochs": 0}
    with pytest.raises(InatlocError, match="drop_prob must be in"):
        AttentiveDropout(0.8, 1.5)


def test_attentive_dropout_erases_only_the_most_attended_pixels():
    x = torch.ones(2, 4, 5, 5)
    x[:, :, 1, 2] = 10.0  # the peak
    x[:, :, 3, 3] = 9.0  # above 0.8 x peak
    x[:, :, 0, 0] = 7.0  # below
    erased = AttentiveDropout(0.8, 1.0)(x)
    dropped = erased.sum(1) == 0
    assert dropped[:, 1, 2].all() and dropped[:, 3, 3].all() and dropped.sum() == 4
    assert torch.equal(AttentiveDropout(0.8, 0.0)(x), x)
    torch.manual_seed(0)
    big = torch.ones(1, 1, 100, 100)  # every pixel at the peak: each dropped with p = 0.25
    assert 0.18 < (AttentiveDropout(0.8, 0.25)(big) == 0).float().mean() < 0.32


@pytest.mark.parametrize("backbone", ["tinycnn", "resnet18"])
def test_split_last_stage_composes_to_the_backbone(backbone):
    torch.manual_seed(0)
    features, _ = build_backbone(backbone, pretrained=False)
    features.eval()
    head, tail = split_last_stage(features)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), features(x))
    if backbone == "resnet18":  # cut after the first block of layer4, as the reference
        assert len(tail) == 1 and tail[0] is features[-1][1]
    else:  # one-block last stage: the cut is before it
        assert len(tail) == 1 and tail[0] is features[-1]
    with pytest.raises(InatlocError, match="nn.Sequential"):
        split_last_stage(nn.Conv2d(3, 3, 1))


def test_alignment_losses_reward_object_features_aligned_with_the_class_weights():
    w = torch.tensor([[1.0, 0.0]])
    feats = torch.zeros(1, 2, 4, 4)
    feats[0, 1] = 0.1  # weak background features, orthogonal to the weights
    feats[0, :, 1:3, 1:3] = torch.tensor([3.0, 0.0])[:, None, None]  # strong object features along w
    sim_good, norm_good = alignment_losses(feats, w, 0.4, 0.2)
    bad = feats.clone()
    bad[0, :, 1:3, 1:3] = torch.tensor([-3.0, 0.0])[:, None, None]  # object features opposite to w
    sim_bad, norm_bad = alignment_losses(bad, w, 0.4, 0.2)
    assert sim_good == pytest.approx(-1.0) and sim_bad == pytest.approx(1.0)
    assert norm_good == pytest.approx(-1.0) and norm_bad == pytest.approx(1.0)


def test_training_forward_runs_both_branches_and_the_loss_backpropagates():
    torch.manual_seed(0)
    features, channels = build_backbone("tinycnn", pretrained=False)
    net = get_method("bridgegap", drop_prob=1.0).build_model(features, channels, 3)
    assert isinstance(net, BridgeGapNet)
    assert set(net.state_dict()) == {f"features.{k}" for k in features.state_dict()} | {
        "classifier.weight", "classifier.bias"}  # no duplicated modules
    net.train()
    logits = net(torch.rand(4, 3, 32, 32) + 1.0)
    assert logits.shape == (4, 3)
    assert not torch.equal(net._outputs["features"], net._outputs["erased"])
    target = torch.tensor([0, 1, 2, 0])
    net.align = False
    drop_only = net.auxiliary_loss(target)
    net.align = True
    loss = net.auxiliary_loss(target)
    assert drop_only > 0 and loss != drop_only
    (nn.functional.cross_entropy(logits, target) + loss).backward()
    assert net.classifier.weight.grad is not None and features[0][0].weight.grad.abs().sum() > 0
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net.classifier(net.pool(features(x)).flatten(1)))


@pytest.mark.slow
def test_warmup_switches_the_alignment_terms_on_after_warm_epochs(tiny_dataset):
    from fastai.callback.training import ShortEpochCallback

    from inatloc_nb.training.learner import build_learner

    seen = []

    class Watch(ShortEpochCallback):
        def before_batch(self):
            seen.append((self.epoch, self.learn.model.align))

    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level="genus", method="bridgegap", method_params={"warm_epochs": 1}, lr=0.01, schedule=2,
        backbone="tinycnn", pretrained=False, image_size=32, batch_size=16, num_workers=0, device="cpu"))
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, cbs=Watch(pct=0.4, short_valid=True))
    assert {(e, a) for e, a in seen} == {(0, False), (1, True)}
