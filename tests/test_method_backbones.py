"""Every method on every backbone: one placement rule for the methods that work inside the
backbone, the support table, and a training step for every method the table allows on
``tinycnn`` and for each backbone-reaching method (:data:`INSIDE`) on every backbone."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastai.callback.core import Callback, CancelFitException

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.method_support import BACKBONE_LAYOUTS, METHOD_NAMES, refusal, support_table
from inatloc_nb.training.methods import METHODS, get_method
from inatloc_nb.training.methods.adl import AttentionDropout, adl_places
from inatloc_nb.training.methods.bridgegap import split_last_stage
from inatloc_nb.training.methods.spg import spg_cuts
from inatloc_nb.training.models import BACKBONES, build_backbone
from inatloc_nb.training.run_config import RunConfig, trained_methods

pytestmark = pytest.mark.usefixtures("torch_one_thread")

STAGED = [b for b in BACKBONES if BACKBONE_LAYOUTS[b] == "stages"]
#: Backbones fast enough on CPU to train every method on.
QUICK = ("tinycnn",)
#: Methods that place layers inside the backbone (or cut it), plus plain CAM: trained on every
#: backbone. The others change the inputs, the loss or the heads on the feature maps, which
#: every backbone hands over in the same form, so ``tinycnn`` covers them.
INSIDE = ("cam", "adl", "spg", "bridgegap")


def _features(backbone: str):
    torch.manual_seed(0)
    return build_backbone(backbone, pretrained=False)


def test_the_table_covers_every_method_and_backbone_and_is_in_the_docs():
    assert set(METHOD_NAMES) == set(METHODS) and set(BACKBONE_LAYOUTS) == set(BACKBONES)
    docs = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text(encoding="utf-8")
    assert support_table(markdown=True) in docs
    refused = {(m, b) for m in METHOD_NAMES for b in BACKBONES if refusal(m, b)}
    assert refused == {(m, "deit_small") for m in ("adl", "spg", "bridgegap")}


@pytest.mark.parametrize(("backbone", "expected"), [
    ("resnet50", ["layer3.0", "layer4.0", "layer4.2"]),  # the reference's _ADL_POSITION
    ("timm_resnet50", ["layer3.0", "layer4.0", "layer4.2"]),
    ("resnet18", ["layer3.0", "layer4.0", "layer4.1"]),
    ("convnext_tiny", ["stage2.blocks.0", "stage3.blocks.0", "stage3.blocks.2"]),
    ("tinycnn", ["4", "5"]),  # single-block stages: after its last two conv blocks
])
def test_adl_places_follow_one_rule(backbone, expected):
    features, _ = _features(backbone)
    assert [stage.block_name(block) for stage, block in adl_places(features)] == expected
    model = get_method("adl").build_model(features, _, 3)
    assert sum(isinstance(m, AttentionDropout) for m in model.modules()) == len(expected)


@pytest.mark.parametrize(("backbone", "b1", "b2"), [
    ("resnet50", ("layer3", 1), ("layer3", 6)),  # the reference: layer3 block 0, layer3
    ("resnet18", ("layer3", 1), ("layer3", 2)),
    ("convnext_tiny", ("stage2", 1), ("stage2", 9)),
    ("tinycnn", ("4", 0), ("4", 1)),  # a one-block stage: its input and its output
])
def test_spg_taps_follow_one_rule(backbone, b1, b2):
    features, _ = _features(backbone)
    assert [(stage.name, k) for stage, k in spg_cuts(features)] == [b1, b2]


@pytest.mark.parametrize("backbone", STAGED)
def test_bridgegap_split_composes_to_the_backbone(backbone):
    features, _ = _features(backbone)
    features.eval()
    head, tail = split_last_stage(features)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(tail(head(x)), features(x))


def test_methods_inside_the_backbone_refuse_a_vision_transformer_with_the_reason(tiny_dataset):
    from inatloc_nb.training.learner import build_learner

    for method in ("adl", "spg", "bridgegap"):
        with pytest.raises(InatlocError, match=f"method '{method}' does not run on backbone 'deit_small': "
                                               "deit_small is a vision transformer"):
            build_learner(tiny_dataset, RunConfig(
                data="synth:tiny", level="genus", method=method, backbone="deit_small", pretrained=False))
        with pytest.raises(InatlocError, match="RunConfig: method .* vision transformer"):
            RunConfig(data="synth:tiny", method=method, backbone="deit_small", pretrained=False)
    features, n_channels = _features("deit_small")
    with pytest.raises(InatlocError, match="method 'adl' works inside the backbone .* got PatchGrid"):
        get_method("adl").build_model(features, n_channels, 3)


class OneStep(Callback):
    """Stops the fit after the first training batch (forward, loss, backward, step, recorded)."""

    order = 90  # after the Recorder

    def after_batch(self):
        if self.training:
            raise CancelFitException


def _combinations():
    for backbone in BACKBONES:
        for method in METHOD_NAMES:
            if refusal(method, backbone) is None and (backbone in QUICK or method in INSIDE):
                yield pytest.param(method, backbone, id=f"{method}-{backbone}")


@pytest.mark.slow
@pytest.mark.parametrize(("method", "backbone"), list(_combinations()))
def test_every_supported_combination_trains_a_step_and_yields_cams(method, backbone, tiny_dataset):
    from inatloc_nb.training.cam import extract_cams
    from inatloc_nb.training.learner import build_learner

    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level="genus", method=method, backbone=backbone, pretrained=False, image_size=32,
        batch_size=8, num_workers=0, device="cpu", schedule=1))
    before = {n: p.detach().clone() for n, p in learn.model.named_parameters()}
    with learn.no_logging():
        learn.fit(1, cbs=OneStep())
    changed = {n for n, p in learn.model.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("features.") for n in changed), "no gradient reached the backbone"
    assert learn.recorder.losses and all(torch.isfinite(v) for v in learn.recorder.losses)
    cams = extract_cams(learn, tiny_dataset, "val", "genus", progress=False)
    assert cams.raw.shape[0] == len(tiny_dataset.images("val")) and cams.raw.ndim == 3


def test_train_help_states_the_table_and_the_cli_refuses_with_the_reason(tmp_path, capsys):
    from inatloc_nb.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert support_table(trained_methods()) in capsys.readouterr().out
    args = ["train", "--data", "synth:tiny", "--level", "genus", "--lr", "0.01", "--method", "spg",
            "--backbone", "deit_small", "--no-pretrained", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "method 'spg' does not run on backbone 'deit_small'" in err and "vision transformer" in err
    assert not (tmp_path / "run").exists()
