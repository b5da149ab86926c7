"""CAMNet and its backbones: feature-map sizes, CAM algebra, ImageNet weights offline."""
from __future__ import annotations

import urllib.error

import pytest
import torch

from inatloc_nb.core.errors import InatlocError
from inatloc_nb.training.models import CAMNet, build_backbone, prepare_for_device, weights_path


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("name", ["resnet50", "resnet18"])
def test_resnets_give_28x28_maps_at_224(name):
    features, channels = build_backbone(name, pretrained=False)
    model = CAMNet(features, channels, 5).eval()
    with torch.no_grad():
        feats = model.feature_maps(torch.randn(1, 3, 224, 224))
        logits = model.classifier(model.pool(feats).flatten(1))
    assert feats.shape == (1, {"resnet50": 2048, "resnet18": 512}[name], 28, 28)
    assert logits.shape == (1, 5)


def test_tinycnn_maps_are_a_quarter_of_the_input():
    features, channels = build_backbone("tinycnn", pretrained=False)
    model = CAMNet(features, channels, 3).eval()
    for size in (32, 48, 64):
        with torch.no_grad():
            assert model.feature_maps(torch.randn(2, 3, size, size)).shape == (2, channels, size // 4, size // 4)


def test_cams_average_to_the_logits():
    """Global average pooling is linear: channels x the mean of a class's CAM, + bias, is its logit."""
    torch.manual_seed(0)
    features, channels = build_backbone("tinycnn", pretrained=False)
    model = CAMNet(features, channels, 4).eval()
    x = torch.randn(3, 3, 32, 32)
    classes = torch.tensor([0, 3, 1])
    with torch.no_grad():
        feats = model.feature_maps(x)
        logits = model(x)
        cams = model.class_activation_maps(feats, classes)
    assert cams.shape == (3, 8, 8) and cams.dtype == torch.float32
    torch.testing.assert_close(channels * cams.mean((1, 2)) + model.classifier.bias[classes],
                               logits[torch.arange(3), classes])


def test_missing_weights_offline_name_the_cache_file(tmp_path, monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert weights_path(ResNet18_Weights.IMAGENET1K_V1) == expected
    with pytest.raises(InatlocError, match="cannot load the ImageNet weights") as info:
        build_backbone("resnet18", pretrained=True)
    assert str(expected) in str(info.value)

    # A file placed where the message says is used without any download.
    reference, _ = build_backbone("resnet18", pretrained=False)
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    torch.save(net.state_dict(), expected)
    features, _ = build_backbone("resnet18", pretrained=True)
    torch.testing.assert_close(features[0].weight, net.conv1.weight)
    assert not torch.equal(reference[0].weight, net.conv1.weight)


def test_bad_backbone_requests_fail_clearly():
    with pytest.raises(InatlocError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", pretrained=False)
    with pytest.raises(InatlocError, match="no pretrained weights"):
        build_backbone("tinycnn", pretrained=True)


def test_prepare_for_cpu_keeps_the_memory_format():
    features, channels = build_backbone("tinycnn", pretrained=False)
    model = prepare_for_device(CAMNet(features, channels, 2), "cpu")
    weight = model.features[0][0].weight
    assert weight.device.type == "cpu" and weight.is_contiguous()
