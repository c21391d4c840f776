"""Tests for checkpoints and weights files (locseg/checkpoints.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from locseg import checkpoints as ck
from locseg.checkpoints import load_checkpoint, load_weights_file, save_checkpoint


NAMES = ["background", "ant", "bat"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    path = tmp_path / "sub" / "m.pt"
    save_checkpoint(path, model, "cam", {"class_names": NAMES, "epochs": 3})
    assert path.is_file() and not path.with_name("m.pt.tmp").exists()
    raw = torch.load(path, weights_only=True)  # plain, safe payload
    assert raw["format"] == ck.CHECKPOINT_FORMAT and raw["version"] == ck.CHECKPOINT_VERSION
    payload = load_checkpoint(path, "cam", NAMES)
    assert payload["meta"]["epochs"] == 3
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    fresh.load_state_dict(payload["state_dict"])
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert load_checkpoint(path, "cam")["kind"] == "cam"  # no class check asked


def test_checkpoint_wrong_kind(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(), "cam", {"class_names": NAMES})
    with pytest.raises(ValueError, match="'cam'.*'segmenter'"):
        load_checkpoint(path, "segmenter", NAMES)


def test_checkpoint_wrong_classes_names_both(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(), "deeplab", {"class_names": NAMES})
    other = ["background", "ant", "cow"]
    with pytest.raises(ValueError) as e:
        load_checkpoint(path, "deeplab", other)
    msg = str(e.value)
    assert str(NAMES) in msg and str(other) in msg and str(path) in msg


def test_checkpoint_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk, "cam")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="not a locseg checkpoint"):
        load_checkpoint(tensor, "cam")
    sd = tmp_path / "sd.pt"
    torch.save(_model().state_dict(), sd)
    with pytest.raises(ValueError, match="not a locseg checkpoint"):
        load_checkpoint(sd, "cam")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt", "cam")


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"format": ck.CHECKPOINT_FORMAT, "obj": _model()}, path)  # a whole module: needs pickle
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path, "cam")


def test_checkpoint_other_version(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    monkeypatch.setattr(ck, "CHECKPOINT_VERSION", 99)
    save_checkpoint(path, _model(), "cam", {"class_names": NAMES})
    monkeypatch.setattr(ck, "CHECKPOINT_VERSION", 1)
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(path, "cam", NAMES)


def test_load_weights_file(tmp_path):
    sd = _model().state_dict()
    plain, wrapped, tensor = tmp_path / "plain.pth", tmp_path / "wrapped.pth", tmp_path / "tensor.pth"
    torch.save(sd, plain)
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    torch.save(torch.ones(2), tensor)
    for p in (plain, wrapped):
        got = load_weights_file(p, "test")
        assert set(got) == set(sd)
        assert torch.equal(got["0.weight"], sd["0.weight"])
    with pytest.raises(ValueError, match="tensor.pth.*state dict"):
        load_weights_file(tensor, "test")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_weights_file(tmp_path / "missing.pth", "test")


@pytest.mark.parametrize("backbone", ["small", "resnet18"])
def test_a_cam_checkpoint_as_weights_gives_its_trained_backbone(tmp_path, backbone):
    """`weights: cam`: the CAM net's backbone, named as a plain backbone (a ResNet as torchvision names it),
    loads into the segmenter's 4-channel backbone and DeepLab's."""
    from locseg.models.backbones import build_backbone
    from locseg.models.cam import CamNet
    from locseg.models.deeplab import build_deeplab
    from locseg.models.segmenter import Segmenter

    cam = CamNet(4, backbone)
    save_checkpoint(tmp_path / "cam.pt", cam, "cam", {})
    got = load_weights_file(tmp_path / "cam.pt", "test")
    plain = build_backbone(backbone, 3).state_dict()
    assert set(got) == {k.removeprefix("body.") for k in plain} - {"fc.weight", "fc.bias"}
    first = "stem.0.weight" if backbone == "small" else "conv1.weight"
    assert torch.equal(got[first], cam.state_dict()[("backbone." if backbone == "small" else "backbone.body.") + first])
    seg = Segmenter(backbone, 16, tmp_path / "cam.pt")
    seg_first = seg.encoder.state_dict()[first if backbone == "small" else "body." + first]
    assert torch.equal(seg_first[:, :3], got[first]) and not seg_first[:, 3].any()  # the cue channel starts at 0
    if backbone == "small":
        assert torch.equal(build_deeplab(5, "small", tmp_path / "cam.pt").backbone.state_dict()[first], got[first])
