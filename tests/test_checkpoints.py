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


def _save_as_version(path, model, kind, meta, version):
    """A checkpoint as an older (or newer) locseg wrote it: the same payload under another format version
    (None: no version key)."""
    payload = {"format": ck.CHECKPOINT_FORMAT, "kind": kind, "locseg_version": "0.1.0", "meta": meta,
               "state_dict": model.state_dict()}
    if version is not None:
        payload["version"] = version
    torch.save(payload, path)


@pytest.mark.parametrize("version", [None, 0, 99])
def test_checkpoint_of_another_version_is_one_line_naming_file_and_versions(tmp_path, version):
    path = tmp_path / "m.pt"
    _save_as_version(path, _model(), "cam", {"class_names": NAMES}, version)
    with pytest.raises(ValueError) as e:
        load_checkpoint(path, "cam", NAMES)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    assert f"version {version} found, version {ck.CHECKPOINT_VERSION} expected" in msg
    with pytest.raises(ValueError, match=f"version {version} found"):  # also as a `weights: cam` file
        load_weights_file(path, "test")


def _pre_decoder_small_deeplab(num_classes: int) -> nn.Module:
    """The small DeepLab before 0cefcf0 (torchvision's DeepLabV3 with an ASPP head, no decoder), as it was
    built then: an old checkpoint's layout, rebuilt here."""
    from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

    from locseg.models.backbones import SmallBackbone

    class OutOnly(nn.Module):
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return {"out": self.backbone(x)["out"]}

    trunk = SmallBackbone(3)
    head = nn.Sequential(ASPP(trunk.out_channels, [2, 4, 6], out_channels=64),
                         nn.Conv2d(64, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                         nn.Conv2d(64, num_classes, 1))
    return DeepLabV3(OutOnly(trunk), head)


def test_old_small_deeplab_fails_in_one_line_naming_file_and_versions(tmp_path):
    """A version-1 DeepLab from before the decoder: one line with the file and both versions, not
    load_state_dict's traceback of missing keys."""
    from locseg.retrain import load_deeplab

    path = tmp_path / "deeplab_pseudo.pt"
    _save_as_version(path, _pre_decoder_small_deeplab(len(NAMES)), "deeplab",
                     {"class_names": NAMES, "backbone": "small"}, 1)
    with pytest.raises(ValueError) as e:
        load_deeplab(path, NAMES, torch.device("cpu"))
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ")
    assert f"format version 1 found, version {ck.CHECKPOINT_VERSION} expected" in msg
    assert "missing" in msg and "forcerun train_deeplab" in msg


def test_version_1_checkpoint_of_todays_layout_still_loads(tmp_path):
    """Version 1 is kept where the tensors fit: today's results trees need not retrain."""
    from locseg.models.deeplab import build_deeplab
    from locseg.retrain import load_deeplab

    torch.manual_seed(0)
    model = build_deeplab(len(NAMES), "small")
    path = tmp_path / "deeplab_gt.pt"
    _save_as_version(path, model, "deeplab", {"class_names": NAMES, "backbone": "small"}, 1)
    got = load_deeplab(path, NAMES, torch.device("cpu")).state_dict()
    assert all(torch.equal(got[k], v) for k, v in model.state_dict().items())


def test_checkpoint_whose_tensors_misfit_its_meta_is_one_line(tmp_path):
    from locseg.checkpoints import load_model

    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(), "cam", {"class_names": NAMES})
    with pytest.raises(ValueError) as e:
        load_model(path, "cam", NAMES, lambda meta: nn.Sequential(nn.Conv2d(3, 5, 3), nn.BatchNorm2d(5)))
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "of another shape, e.g. '0.weight'" in msg


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
