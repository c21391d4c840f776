"""Tests for CAM training and multi-scale + flip CAM inference (locseg/cam.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from locseg.batching import Compute, size_order
from locseg.cam import ClassificationSet, extract_cams, infer_cams, infer_cams_batch, load_cam_net, train_cam
from locseg.data.transforms import normalize
from locseg.data.voc import image_size
from locseg.models.cam import CamNet
from locseg.store import ShardedStore, StoreReader, file_sha256
from tests.conftest import CLASSES, CPU, FAST, K, assert_seed_decides


@pytest.fixture(scope="module")
def cam_ckpt(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("cam") / "cam.pt"
    summary = train_cam(tiny["image_paths"], tiny["labels"], CLASSES, path, seed=3, **FAST)
    return path, summary


# ---------------------------------------------------------------- fake models for infer_cams


class FixedCams:
    """Returns the same raw CAMs [C, h, w] for every batch element, whatever the input."""

    def __init__(self, maps):
        self.maps = torch.as_tensor(maps, dtype=torch.float32)
        self.inputs = []

    def cams(self, x):
        self.inputs.append(x.clone())
        return self.maps.unsqueeze(0).expand(x.shape[0], -1, -1, -1).clone()


class EquivariantCams:
    """CAMs computed pixel-wise from the input (ReLU of its channels): flipping the input flips the CAM."""

    def cams(self, x):
        return F.relu(x + 1.0)


def test_infer_cams_selects_classes_and_normalises():
    # three foreground classes, each map a different known pattern at the image size 3x5
    ramp = np.tile(np.arange(5, dtype=np.float32), (3, 1))  # 0..4 left to right
    maps = np.stack([ramp, 10 * ramp[:, ::-1], np.full((3, 5), 2.0, np.float32)])
    model = FixedCams(maps)
    image = np.zeros((3, 5, 3), np.uint8)
    out = infer_cams(model, image, [1, 3], scales=(1.0,), flip=False, device=CPU)
    assert out.dtype == np.float32 and out.shape == (2, 3, 5)
    # class 1 -> channel 0 (ramp / 4), class 3 -> channel 2 (constant -> all ~1); not channel 1
    np.testing.assert_allclose(out[0], ramp / 4, atol=1e-4)
    np.testing.assert_allclose(out[1], np.ones((3, 5)), atol=1e-4)
    out2 = infer_cams(model, image, [2], scales=(1.0,), flip=False, device=CPU)
    np.testing.assert_allclose(out2[0], ramp[:, ::-1] / 4, atol=1e-4)


def test_infer_cams_flip_is_undone():
    # A model that ignores its input returns the same ramp for the image and its mirror; undoing the
    # flip mirrors the second ramp, so the sum is constant (0+4, 1+3, ...) -> normalised all ones.
    # Without the undo the sum would be 2 * ramp -> ramp / 4 again.
    ramp = np.tile(np.arange(5, dtype=np.float32), (3, 1))[None]
    model = FixedCams(ramp)
    image = np.zeros((3, 5, 3), np.uint8)
    flipped = infer_cams(model, image, [1], scales=(1.0,), flip=True, device=CPU)
    np.testing.assert_allclose(flipped[0], np.ones((3, 5)), atol=1e-4)
    # the second batch element fed to the model is the mirrored image
    x = model.inputs[-1]
    assert x.shape[0] == 2
    torch.testing.assert_close(x[1], x[0].flip(-1))
    plain = infer_cams(model, image, [1], scales=(1.0,), flip=False, device=CPU)
    np.testing.assert_allclose(plain[0], ramp[0] / 4, atol=1e-4)


def test_infer_cams_runs_the_image_at_its_own_size():
    model = FixedCams(np.ones((1, 40, 50), np.float32))
    infer_cams(model, np.zeros((40, 50, 3), np.uint8), [1], scales=(1.0,), flip=False, device=CPU)
    assert model.inputs[-1].shape == (1, 3, 40, 50)  # no padding to the 48x64 canvas


def test_infer_cams_with_canvas_pads_and_crops_back():
    """inference.canvas: a 40x50 image runs padded (zeros, the mean colour) to its 48x64 canvas; its maps
    are cropped back and normalised over the image only."""
    ramp = np.tile(np.arange(64, dtype=np.float32), (48, 1))
    maps = np.zeros((1, 48, 64), np.float32)
    maps[0, :40, :50] = ramp[:40, :50]
    maps[0, 44:, 55:] = 1000.0  # a peak in the padding must not set the normalisation
    model = FixedCams(maps)
    out = infer_cams_batch(model.cams, [np.full((40, 50, 3), 255, np.uint8)], [[1]], (1.0,), False,
                           Compute(CPU, canvas=True))[0]
    assert out.shape == (1, 40, 50)
    np.testing.assert_allclose(out[0], ramp[:40, :50] / 49, atol=1e-4)
    x = model.inputs[-1]
    assert x.shape == (1, 3, 48, 64) and x[0, :, 40:].abs().max() == 0 and x[0, :, :, 50:].abs().max() == 0


def test_infer_cams_flip_on_equivariant_model_changes_nothing():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    model = EquivariantCams()
    a = infer_cams(model, image, [1, 2, 3], scales=(1.0,), flip=False, device=CPU)
    b = infer_cams(model, image, [1, 2, 3], scales=(1.0,), flip=True, device=CPU)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # and it is the per-class max-normalised ReLU of the normalised image
    want = F.relu(normalize(image) + 1.0).numpy()
    want = want / want.reshape(3, -1).max(1)[:, None, None]
    np.testing.assert_allclose(a, want, atol=1e-4)


def test_infer_cams_multiscale_differs_but_stays_normalised():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (11, 13, 3), dtype=np.uint8)
    model = EquivariantCams()
    single = infer_cams(model, image, [1, 2], scales=(1.0,), flip=False, device=CPU)
    multi = infer_cams(model, image, [1, 2], scales=(1.0, 0.5, 1.5), flip=True, device=CPU)
    assert multi.shape == single.shape == (2, 11, 13)
    assert not np.allclose(multi, single, atol=1e-3)
    assert multi.min() >= 0 and multi.max() <= 1
    np.testing.assert_allclose(multi.reshape(2, -1).max(1), 1.0, atol=1e-4)


def test_infer_cams_no_classes():
    out = infer_cams(FixedCams(np.ones((2, 3, 3))), np.zeros((5, 7, 3), np.uint8), [], (1.0,), False, CPU)
    assert out.shape == (0, 5, 7) and out.dtype == np.float32


@pytest.mark.parametrize("hw", [(37, 29), (33, 51)])
def test_infer_cams_real_net_odd_sizes(hw):
    torch.manual_seed(0)
    model = CamNet(K - 1).eval()
    with torch.no_grad():  # positive weights on ReLU features: every class's CAM is non-zero somewhere, and
        model.classifier.weight.abs_().mul_(1000)  # large enough that the 1e-5 normalisation epsilon is negligible
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    out = infer_cams(model, image, [1, 4], scales=(1.0, 0.5), flip=True, device=CPU)
    assert out.shape == (2, *hw) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    np.testing.assert_allclose(out.reshape(2, -1).max(1), 1.0, atol=1e-3)  # each map max-normalised
    assert not np.allclose(out[0], out[1], atol=1e-2)  # two classes, two different maps


# ---------------------------------------------------------------- dataset and training


def test_classification_set(tiny):
    labels = dict(tiny["labels"])
    first = tiny["ids"][0]
    labels[first] = []  # no foreground: dropped
    data = ClassificationSet(tiny["image_paths"], labels, K, crop=32, scale_range=(0.7, 1.3), seed=0)
    assert first not in data.ids and len(data) == len(tiny["ids"]) - 1
    image, target = data[0]
    assert image.shape == (3, 32, 32) and target.shape == (K - 1,)
    want = torch.zeros(K - 1)
    want[[c - 1 for c in labels[data.ids[0]]]] = 1
    torch.testing.assert_close(target, want)
    again, _ = data[0]
    torch.testing.assert_close(image, again)  # randomness fixed by (seed, epoch, index)
    data.epoch = 1
    assert not torch.equal(data[0][0], image)


def test_train_cam_checkpoint(cam_ckpt):
    path, summary = cam_ckpt
    assert path.is_file() and not path.with_name(path.name + ".tmp").exists()
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["kind"] == "cam" and payload["meta"]["class_names"] == CLASSES
    assert summary["epochs"] == 1 and len(summary["loss_per_epoch"]) == 1
    assert np.isfinite(summary["loss_per_epoch"][0])
    model = load_cam_net(path, CLASSES, CPU)
    assert not model.training and model.classifier.out_channels == K - 1


def test_train_cam_deterministic(tiny, cam_ckpt, tmp_path):
    path, _ = cam_ckpt
    train_cam(tiny["image_paths"], tiny["labels"], CLASSES, tmp_path / "again.pt", seed=3, **FAST)
    train_cam(tiny["image_paths"], tiny["labels"], CLASSES, tmp_path / "other.pt", seed=4, **FAST)
    assert_seed_decides(path, tmp_path / "again.pt", tmp_path / "other.pt")


def test_train_cam_needs_two_images(tiny, tmp_path):
    one = {tiny["ids"][0]: tiny["image_paths"][tiny["ids"][0]]}
    with pytest.raises(ValueError, match="at least 2"):
        train_cam(one, tiny["labels"], CLASSES, tmp_path / "x.pt", **FAST)
    assert not (tmp_path / "x.pt").exists()


def test_train_cam_overfits_four_images(tiny, tmp_path):
    """A trainer must be seen to learn: on 4 images without scale jitter the BCE falls to a third."""
    ids = tiny["ids"][:4]
    summary = train_cam({i: tiny["image_paths"][i] for i in ids}, tiny["labels"], CLASSES, tmp_path / "c.pt",
                        seed=0, crop=32, batch_size=4, epochs=20, lr=3e-3, scale_range=(1.0, 1.0), device="cpu")
    losses = summary["loss_per_epoch"]
    assert np.mean(losses[-3:]) < 0.35 * losses[0], losses


def test_extract_cams_store(tiny, cam_ckpt, tmp_path):
    path, _ = cam_ckpt
    ids = tiny["ids"][:4]
    out = tmp_path / "cams" / "0.h5"
    extract_cams(path, tiny["image_paths"], tiny["labels"], ids, CLASSES, out, scales=(1.0, 0.5), flip=True,
                 device="cpu")
    with StoreReader(out, kind="cam", class_names=CLASSES) as r:
        assert list(r.ids) == [ids[j] for j in size_order([image_size(tiny["image_paths"][i]) for i in ids], False)]
        assert list(r.attrs["scales"]) == [1.0, 0.5]
        assert r.attrs["model_sha256"] == file_sha256(path)
        for i in ids:
            maps, classes = r.read(i)
            assert list(classes) == tiny["labels"][i]
            assert maps.shape == (len(classes), *image_size(tiny["image_paths"][i]))
            assert maps.min() >= 0 and maps.max() <= 1
            # peak-normalised (up to the 1e-5 epsilon against a barely trained net's small peaks), never all 0
            assert (maps.reshape(len(classes), -1).max(1) > 0.99).all()
    with ShardedStore([out], kind="cam") as s:
        assert len(s) == 4
