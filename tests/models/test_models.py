"""Tests for backbones, the CAM net, the segmenter and DeepLab (locseg/models/)."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from locseg.models.backbones import ResNetBackbone, SmallBackbone, build_backbone
from locseg.models.cam import CamNet
from locseg.models.deeplab import build_deeplab
from locseg.models.segmenter import Segmenter

ODD = [(37, 29), (33, 51)]


@pytest.fixture
def rgb_weights(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "small_rgb.pth"
    sd = SmallBackbone(3).state_dict()
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("hw", ODD)
def test_small_backbone_strides(hw):
    feats = SmallBackbone(3).eval()(torch.zeros(1, 3, *hw))
    h, w = hw
    assert feats["low"].shape == (1, 32, -(-h // 4), -(-w // 4))
    assert feats["out"].shape == (1, 128, -(-h // 8), -(-w // 8))


@pytest.mark.parametrize("hw", ODD)
def test_camnet_shapes(hw):
    net = CamNet(4).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        logits, cams = net(x), net.cams(x)
    assert logits.shape == (2, 4)
    assert cams.shape[:2] == (2, 4) and cams.min() >= 0
    # CAM = ReLU(w . features): pooling the pre-ReLU map gives the logits (linear, bias-free classifier)
    with torch.no_grad():
        pre = net.classifier(net.backbone(x)["out"])
    torch.testing.assert_close(pre.mean((2, 3)), logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(cams, pre.clamp(min=0))


@pytest.mark.parametrize("hw", ODD)
def test_segmenter_shapes(hw):
    net = Segmenter(width=16).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *hw), torch.rand(2, 1, *hw))
    assert out.shape == (2, 1, *hw)


def test_segmenter_uses_the_cue():
    torch.manual_seed(0)
    net = Segmenter(width=16).eval()
    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        a = net(x, torch.zeros(1, 1, 24, 24))
        b = net(x, torch.ones(1, 1, 24, 24))
    assert not torch.allclose(a, b)


def test_segmenter_resnet18_odd():
    net = Segmenter("resnet18", output_stride=16, width=16).eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 35, 45), torch.rand(1, 1, 35, 45))
    assert out.shape == (1, 1, 35, 45)


@pytest.mark.parametrize("hw", ODD)
def test_deeplab_small_shapes(hw):
    net = build_deeplab(5).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 3, *hw))["out"]
    assert out.shape == (2, 5, *hw)


def test_unknown_backbones():
    with pytest.raises(ValueError, match="vgg"):
        build_backbone("vgg")
    with pytest.raises(ValueError, match="resnet18"):
        build_deeplab(3, "resnet18")


def test_rgb_weights_into_four_channel_encoder(rgb_weights):
    path, sd = rgb_weights
    seg = Segmenter("small", weights=str(path), width=16)
    stem = seg.encoder.state_dict()["stem.0.weight"]
    assert stem.shape == (16, 4, 3, 3)
    torch.testing.assert_close(stem[:, :3], sd["stem.0.weight"], rtol=0, atol=0)
    assert torch.count_nonzero(stem[:, 3]) == 0
    for k, v in sd.items():
        if k != "stem.0.weight":
            assert torch.equal(seg.encoder.state_dict()[k], v), k


def test_small_deeplab_uses_stride4_decoder():
    """The small DeepLab is v3+: its logits depend on the stride-4 features through the decoder."""
    torch.manual_seed(0)
    net = build_deeplab(5).eval()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        before = net(x)["out"]
        net.low_proj[0].weight.mul_(3.0)
        after = net(x)["out"]
    assert before.shape == (1, 5, 40, 40)
    assert (before - after).abs().max() > 1e-3


def test_segmenter_state_dict_names_kept():
    """Checkpoints written before the decoder pieces were shared still load (same names and shapes)."""
    sd = Segmenter(width=16).state_dict()
    assert sd["low_proj.0.weight"].shape == (8, 32, 1, 1)
    assert sd["decoder.0.weight"].shape == (16, 16 + 8 + 1, 3, 3) and sd["decoder.6.weight"].shape == (1, 16, 1, 1)


def test_rgb_weights_into_rgb_backbone_and_deeplab(rgb_weights):
    path, sd = rgb_weights
    bb = build_backbone("small", 3, weights=str(path))
    for k, v in sd.items():
        assert torch.equal(bb.state_dict()[k], v), k
    dl = build_deeplab(3, "small", weights=str(path))
    trunk = dl.backbone.state_dict()
    for k, v in sd.items():
        assert torch.equal(trunk[k], v), k
    cam = CamNet(2, weights=str(path))
    assert torch.equal(cam.backbone.state_dict()["stage3.1.0.weight"], sd["stage3.1.0.weight"])


def test_wrong_keys_named(tmp_path, rgb_weights):
    _, sd = rgb_weights
    bad = dict(sd)
    bad["extra.weight"] = torch.zeros(1)
    del bad["stage2.0.0.weight"]
    path = tmp_path / "bad.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError) as e:
        build_backbone("small", 3, weights=str(path))
    msg = str(e.value)
    assert "bad.pth" in msg and "stage2.0.0.weight" in msg and "extra.weight" in msg
    with pytest.raises(ValueError, match="stage2.0.0.weight"):
        Segmenter("small", weights=str(path))


def test_wrong_shape_named(tmp_path, rgb_weights):
    _, sd = rgb_weights
    bad = dict(sd)
    bad["stage1.0.0.weight"] = torch.zeros(32, 8, 3, 3)
    path = tmp_path / "shape.pth"
    torch.save(bad, path)
    with pytest.raises(ValueError, match=r"stage1\.0\.0\.weight has shape \(32, 8, 3, 3\)"):
        build_backbone("small", 3, weights=str(path))


def test_resnet_rgb_weights_into_four_channels(tmp_path):
    torch.manual_seed(0)
    ref = resnet18(weights=None).state_dict()  # includes fc.*, which is dropped
    path = tmp_path / "r18.pth"
    torch.save({"state_dict": ref}, path)
    bb = build_backbone("resnet18", 4, 16, weights=str(path))
    assert isinstance(bb, ResNetBackbone)
    conv1 = bb.body.conv1.weight.detach()
    assert conv1.shape == (64, 4, 7, 7)
    assert torch.equal(conv1[:, :3], ref["conv1.weight"]) and torch.count_nonzero(conv1[:, 3]) == 0
    assert torch.equal(bb.body.layer4[1].conv2.weight.detach(), ref["layer4.1.conv2.weight"])
    with torch.no_grad():
        feats = bb.eval()(torch.randn(1, 4, 33, 47))
    assert feats["low"].shape[1] == 64 and feats["out"].shape[1] == 512
    assert feats["out"].shape[-2:] == (3, 3)  # stride 16


@pytest.mark.parametrize("output_stride", [16, 8])
def test_resnet18_dilated_output_stride(output_stride):
    # torchvision's BasicBlock has no dilation support; the backbone must still honour output_stride
    bb = build_backbone("resnet18", 3, output_stride).eval()
    with torch.no_grad():
        feats = bb(torch.randn(1, 3, 64, 96))
    assert feats["low"].shape == (1, 64, 16, 24)
    assert feats["out"].shape == (1, 512, 64 // output_stride, 96 // output_stride)
