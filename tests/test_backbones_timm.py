"""timm backbones: CAM resolution, local weights files, clear errors, LR groups, a short training."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.learner import param_groups
from inatloc_nb.training.models import BACKBONES, CAMNet, build_backbone
from inatloc_nb.training.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

#: backbone -> (channels, map side at a 64-pixel input): input / 8 for the CNNs (28 x 28 at 224),
#: input / 16 patches for DeiT (14 x 14 at 224)
EXPECTED = {"convnext_tiny": (768, 8), "deit_small": (384, 4), "timm_resnet50": (2048, 8)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_timm_backbone_feature_maps(name):
    assert name in BACKBONES
    torch.manual_seed(0)
    features, channels = build_backbone(name, pretrained=False)
    features.eval()
    with torch.no_grad():
        out = features(torch.randn(2, 3, 64, 64))
    side = EXPECTED[name][1]
    assert channels == EXPECTED[name][0] and out.shape == (2, channels, side, side)
    assert torch.isfinite(out).all()


def test_deit_grid_keeps_patch_order_and_drops_the_cls_token():
    features, channels = build_backbone("deit_small", pretrained=False)
    features.eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        grid = features(x)
        vit = features.vit
        tokens = features.last(features.blocks(vit.forward_features(x)))
    assert grid.shape == (1, channels, 3, 4)
    # grid cell (r, c) is patch token 1 + r * 4 + c (token 0 is CLS)
    assert torch.equal(grid[0, :, 1, 2], tokens[0, 1 + 1 * 4 + 2])


def test_weights_file_loads_and_missing_weights_name_the_file(tmp_path):
    import timm

    source = timm.create_model("deit_small_patch16_224", num_classes=0)
    path = tmp_path / "deit_small.pth"
    torch.save(source.state_dict(), path)
    features, _ = build_backbone("deit_small", pretrained=True, weights=path)
    assert torch.equal(features.vit.patch_embed.proj.weight, source.patch_embed.proj.weight)
    assert torch.equal(features.last[0].mlp.fc1.weight, source.blocks[-1].mlp.fc1.weight)
    with pytest.raises(InatlocError, match="weights file .*nope.pth not found"):
        build_backbone("convnext_tiny", pretrained=True, weights=tmp_path / "nope.pth")
    with pytest.raises(InatlocError, match="given with pretrained=False"):
        build_backbone("timm_resnet50", pretrained=False, weights=path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(InatlocError, match="junk.pth"):
        build_backbone("convnext_tiny", pretrained=True, weights=tmp_path / "junk.pth")


def test_torchvision_resnet_loads_a_local_weights_file(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    net = resnet18()
    torch.save(net.state_dict(), tmp_path / "r18.pth")
    features, _ = build_backbone("resnet18", pretrained=True, weights=tmp_path / "r18.pth")
    assert torch.equal(features[0].weight, net.conv1.weight)
    with pytest.raises(InatlocError, match="r19.pth not found"):
        build_backbone("resnet18", pretrained=True, weights=tmp_path / "r19.pth")


@pytest.mark.parametrize("name,last", [("convnext_tiny", "features.stage3."), ("deit_small", "features.last."),
                                       ("timm_resnet50", "features.layer4.")])
def test_reference_lr_groups_take_the_last_stage_and_the_classifier(name, last):
    features, channels = build_backbone(name, pretrained=False)
    model = CAMNet(features, channels, 3)
    slow, fast = param_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    fast_names = [names[id(p)] for p in fast]
    assert fast_names and all(n.startswith((last, "classifier.")) for n in fast_names)
    assert any(n.startswith("classifier.") for n in fast_names) and any(n.startswith(last) for n in fast_names)
    assert len(slow) + len(fast) == len(list(model.parameters()))


@pytest.mark.slow
def test_timm_backbone_trains_and_yields_cams(tiny_dataset):
    from fastai.callback.training import ShortEpochCallback

    from inatloc_nb.training.cam import extract_cams
    from inatloc_nb.training.learner import build_learner

    learn = build_learner(tiny_dataset, RunConfig(
        data="synth:tiny", level="genus", lr=0.01, schedule=1, backbone="deit_small", pretrained=False,
        image_size=32, batch_size=8, num_workers=0, device="cpu"))
    with learn.no_bar(), learn.no_logging():
        learn.fit(1, cbs=ShortEpochCallback(pct=0.25, short_valid=True))
    assert all(np.isfinite(float(v)) for v in learn.recorder.losses)
    cams = extract_cams(learn, tiny_dataset, "val", "genus")
    assert np.asarray(cams.raw).shape == (16, 2, 2) and cams.maps().shape == (16, 224, 224)


def test_vit_backbone_is_refused_by_methods_that_need_conv_stages():
    from inatloc_nb.training.methods import get_method

    features, channels = build_backbone("deit_small", pretrained=False)
    for method in ("adl", "bridgegap"):
        with pytest.raises(InatlocError, match="nn.Sequential"):
            get_method(method).build_model(features, channels, 3)
