"""`weights: imagenet`: torchvision's file names in torch's cache, loaded into every ResNet model; a missing
file is one error naming the file and where to put it; fetch never downloads what is there. No network."""

from __future__ import annotations

import logging
import urllib.error
from pathlib import Path

import pytest
import torch

from locseg import weights
from locseg.cam import train_cam
from locseg.models.backbones import build_backbone
from locseg.models.deeplab import build_deeplab
from locseg.models.segmenter import Segmenter
from locseg.checkpoints import load_checkpoint
from tests.conftest import CLASSES, FAST


@pytest.fixture
def cached(imagenet_home, monkeypatch):
    home, planted = imagenet_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    return planted


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


@pytest.fixture
def offline(monkeypatch):
    """Any download attempt fails as it would without internet (and is counted)."""
    calls = []

    def refuse(url, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return calls


def test_file_names_are_torchvisions(empty_cache):
    assert weights.imagenet_file("resnet50") == empty_cache / "resnet50-0676ba61.pth"
    assert weights.imagenet_file("resnet101").name == "resnet101-63fe2227.pth"
    with pytest.raises(ValueError, match="'small'"):
        weights.imagenet_file("small")


def test_backbones_load_the_cached_weights(cached):
    trunk = build_backbone("resnet18", weights="imagenet")
    assert torch.equal(trunk.body.conv1.weight, cached["resnet18"]["conv1.weight"])
    assert torch.equal(trunk.body.layer4[1].conv2.weight, cached["resnet18"]["layer4.1.conv2.weight"])
    # the segmenter's 4-channel stem: RGB filters from ImageNet, the cue channel at zero
    stem = Segmenter("resnet18", weights="imagenet").encoder.body.conv1.weight
    assert torch.equal(stem[:, :3], cached["resnet18"]["conv1.weight"]) and not stem[:, 3].any()
    deeplab = build_deeplab(21, "resnet50", weights="imagenet")
    assert torch.equal(deeplab.backbone.layer3[0].conv2.weight, cached["resnet50"]["layer3.0.conv2.weight"])


def test_missing_cache_names_file_and_path(empty_cache, offline):
    path = empty_cache / "resnet50-0676ba61.pth"
    with pytest.raises(FileNotFoundError) as err:
        build_backbone("resnet50", weights="imagenet")
    assert "resnet50-0676ba61.pth" in str(err.value) and f"place it at {path}" in str(err.value)
    assert offline == [], "training code must never download"


def test_fetch_offline_names_file_and_path(empty_cache, offline):
    with pytest.raises(RuntimeError) as err:
        weights.fetch("resnet101")
    msg = str(err.value)
    assert offline == ["https://download.pytorch.org/models/resnet101-63fe2227.pth"]
    assert "name resolution" in msg and f"place it at {empty_cache / 'resnet101-63fe2227.pth'}" in msg


def test_fetch_keeps_a_cached_file(imagenet_home, cached, offline):
    path = weights.fetch("resnet50")
    assert path == imagenet_home[0] / "hub" / "checkpoints" / "resnet50-0676ba61.pth"  # TORCH_HOME is followed
    assert offline == []


def test_file_paths_still_work(tmp_path, cached):
    path = tmp_path / "mine.pth"
    torch.save(cached["resnet18"], path)
    trunk = build_backbone("resnet18", weights=str(path))
    assert torch.equal(trunk.body.conv1.weight, cached["resnet18"]["conv1.weight"])


def _train(tiny, out, weights_value):
    return train_cam(tiny["image_paths"], tiny["labels"], CLASSES, out, backbone="resnet18", weights=weights_value,
                     **FAST, lr=1e-3)


def test_training_starts_from_the_cached_weights(tiny, cached, tmp_path):
    summary = _train(tiny, tmp_path / "cam.pt", "imagenet")
    state = load_checkpoint(tmp_path / "cam.pt", "cam")["state_dict"]
    planted = cached["resnet18"]["layer4.1.conv2.weight"]
    # a random init is PLANT_SCALE times smaller than the planted weights: its drift would be ~0.9 of their size
    drift = (state["backbone.body.layer4.1.conv2.weight"] - planted).abs().mean()
    assert drift < 0.05 * planted.abs().mean(), "the checkpoint did not start from the cached weights"
    assert summary["init"] == "ImageNet (resnet18 IMAGENET1K_V1, torchvision)"


def test_resnet_from_scratch_warns(tiny, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="locseg"):
        summary = _train(tiny, tmp_path / "cam.pt", None)
    assert summary["init"] == "trained from scratch"
    assert any(r.levelno == logging.WARNING and "trained from scratch" in r.getMessage() for r in caplog.records)


def test_describe_init():
    assert weights.describe_init("small", None) == "random initialisation (demo backbone)"
    assert weights.describe_init("resnet50", "/w/r50.pth") == "weights file /w/r50.pth"


# --------------------------------------------------------------------------- Segment Anything checkpoints


SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth"


def test_sam_file_names_are_the_release_names(empty_cache):
    assert weights.sam_file("vit_b") == empty_cache / "sam_vit_b_01ec64.pth"
    assert weights.sam_file("vit_h").name == "sam_vit_h_4b8939.pth"
    assert weights.SAM_CHECKPOINTS["vit_l"][0].endswith("/sam_vit_l_0b3195.pth")
    with pytest.raises(ValueError, match="'vit_t'"):
        weights.sam_file("vit_t")


def test_missing_sam_checkpoint_names_file_url_and_path(empty_cache, offline):
    with pytest.raises(FileNotFoundError) as err:
        weights.sam_checkpoint("vit_b")
    msg = str(err.value)
    assert msg.startswith("sam_vit_b_01ec64.pth:") and SAM_URL in msg
    assert f"place it at {empty_cache / 'sam_vit_b_01ec64.pth'}" in msg
    assert offline == [], "resegment must never download"


def test_fetch_sam_offline_names_file_url_and_path(empty_cache, offline):
    with pytest.raises(RuntimeError) as err:
        weights.fetch("sam_vit_b")  # the name rule fetch_weights passes
    msg = str(err.value)
    assert offline == [SAM_URL]
    assert "name resolution" in msg and SAM_URL in msg and f"place it at {empty_cache / 'sam_vit_b_01ec64.pth'}" in msg
    assert not empty_cache.exists() or not any(empty_cache.iterdir()), "no partial file may stay"


def _plant(path, content: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_wrong_hash_sam_checkpoint_is_refused(empty_cache, offline):
    path = _plant(empty_cache / "sam_vit_b_01ec64.pth", b"an interrupted download")
    for call in (lambda: weights.sam_checkpoint("vit_b"), lambda: weights.fetch("sam_vit_b")):
        with pytest.raises(ValueError) as err:
            call()
        assert str(path) in str(err.value) and weights.SAM_CHECKPOINTS["vit_b"][1] in str(err.value)
    assert offline == [] and path.read_bytes() == b"an interrupted download"  # refused, not replaced


def test_right_hash_sam_checkpoint_is_used(empty_cache, offline, monkeypatch):
    import hashlib

    content = b"stands in for the release"
    path = _plant(empty_cache / "sam_vit_b_01ec64.pth", content)
    monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", (SAM_URL, hashlib.sha256(content).hexdigest()))
    assert weights.sam_checkpoint("vit_b") == path
    assert weights.fetch("sam_vit_b") == path and offline == []


def test_fetch_sam_refuses_a_wrong_download(empty_cache, monkeypatch):
    def corrupt(url, dst, **kwargs):
        _plant(Path(dst), b"a proxy's error page")

    monkeypatch.setattr(torch.hub, "download_url_to_file", corrupt)
    with pytest.raises(ValueError, match="downloaded file refused"):
        weights.fetch_sam("vit_b")
    assert not any(empty_cache.iterdir()), "neither the file nor its temporary may stay"


def test_local_sam_checkpoint_is_used_as_it_is(tmp_path, offline):
    path = _plant(tmp_path / "mine.pth", b"x")
    assert weights.sam_checkpoint("vit_h", str(path)) == path
    with pytest.raises(FileNotFoundError, match="segmenter.sam.checkpoint"):
        weights.sam_checkpoint("vit_h", str(tmp_path / "absent.pth"))
