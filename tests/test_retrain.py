"""Tests for DeepLab retraining and prediction (locseg/retrain.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locseg.data.voc import read_image, write_mask
from locseg.models.deeplab import build_deeplab
from locseg.retrain import MaskSet, load_deeplab, predict, train_deeplab
from tests.conftest import CLASSES, CPU, FAST, K, assert_seed_decides


@pytest.fixture(scope="module")
def ckpt(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("dl") / "deeplab.pt"
    summary = train_deeplab(tiny["image_paths"], tiny["mask_paths"], CLASSES, path, seed=7, **FAST)
    return path, summary


def test_maskset_items(tiny):
    data = MaskSet(tiny["image_paths"], tiny["mask_paths"], K, crop=32, scale_range=(0.7, 1.3), seed=0)
    assert len(data) == len(tiny["ids"])
    image, mask = data[1]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32) and mask.dtype == torch.long
    assert set(mask.unique().tolist()) <= set(range(K)) | {255}
    again_image, again_mask = data[1]
    assert torch.equal(image, again_image) and torch.equal(mask, again_mask)


def test_maskset_pads_with_ignore(tmp_path):
    # a 10x12 image with crop 32 and no rescale: the padded area of the label is 255
    from PIL import Image

    img = np.full((10, 12, 3), 128, np.uint8)
    Image.fromarray(img).save(tmp_path / "a.jpg")
    write_mask(tmp_path / "a.png", np.ones((10, 12), np.uint8))
    data = MaskSet({"a": tmp_path / "a.jpg"}, {"a": tmp_path / "a.png"}, K, 32, (1.0, 1.0), 0)
    _, mask = data[0]
    assert (mask == 1).sum() == 120 and (mask == 255).sum() == 32 * 32 - 120


def test_maskset_refuses_rgb_mask(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")  # colour-encoded
    data = MaskSet({"a": tmp_path / "a.jpg"}, {"a": tmp_path / "a.png"}, K, 8, (1.0, 1.0), 0)
    with pytest.raises(ValueError, match="a.png"):
        data[0]


def test_train_deeplab_checkpoint(ckpt):
    path, summary = ckpt
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["kind"] == "deeplab" and payload["meta"]["class_names"] == CLASSES
    assert summary["epochs"] == 1 and np.isfinite(summary["loss_per_epoch"][0])
    model = load_deeplab(path, CLASSES, CPU)
    assert not model.training


def test_train_deeplab_deterministic(tiny, ckpt, tmp_path):
    path, _ = ckpt
    train_deeplab(tiny["image_paths"], tiny["mask_paths"], CLASSES, tmp_path / "b.pt", seed=7, **FAST)
    train_deeplab(tiny["image_paths"], tiny["mask_paths"], CLASSES, tmp_path / "c.pt", seed=8, **FAST)
    assert_seed_decides(path, tmp_path / "b.pt", tmp_path / "c.pt")


def test_train_deeplab_overfits_four_images(tiny, tmp_path):
    """A trainer must be seen to learn: on 4 images without scale jitter the cross-entropy falls clearly."""
    ids = tiny["ids"][:4]
    summary = train_deeplab({i: tiny["image_paths"][i] for i in ids}, tiny["mask_paths"], CLASSES,
                            tmp_path / "d.pt", seed=0, crop=32, batch_size=4, epochs=20, lr=3e-3,
                            scale_range=(1.0, 1.0), device="cpu")
    losses = summary["loss_per_epoch"]
    assert np.mean(losses[-3:]) < 0.6 * losses[0], losses


def test_train_deeplab_missing_mask(tiny, tmp_path):
    masks = dict(tiny["mask_paths"])
    masks[tiny["ids"][0]] = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png"):
        train_deeplab(tiny["image_paths"], masks, CLASSES, tmp_path / "x.pt", **FAST)
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("scales,flip", [((1.0,), False), ((1.0, 0.5), True)])
def test_predict_shape(tiny, ckpt, scales, flip):
    model = load_deeplab(ckpt[0], CLASSES, CPU)
    image = read_image(tiny["image_paths"][tiny["ids"][0]])
    pred = predict(model, image, CPU, scales, flip)
    assert pred.shape == image.shape[:2] and pred.dtype == np.uint8
    assert pred.max() < K


def test_predict_averages_the_views_probabilities():
    # Each scale's view votes with its class probabilities: the full-size view says [0.6, 0.4, 0], the half-size
    # one [0, 0.4, 0.6], so their mean [0.3, 0.4, 0.3] picks class 1, which neither view picks alone.
    views = {16: [0.6, 0.4, 0.0], 8: [0.0, 0.4, 0.6]}

    def model(x):
        p = torch.tensor(views[x.shape[-2]]).clamp_min(1e-9).log()
        return {"out": p.view(1, 3, 1, 1).expand(1, 3, *x.shape[-2:])}

    image = np.zeros((16, 12, 3), np.uint8)
    assert (predict(model, image, CPU, scales=(1.0,)) == 0).all()
    assert (predict(model, image, CPU, scales=(0.5,)) == 2).all()
    assert (predict(model, image, CPU, scales=(1.0, 0.5)) == 1).all()


def test_predict_odd_size_and_flip_symmetry():
    torch.manual_seed(0)
    model = build_deeplab(K).eval()
    image = np.random.default_rng(0).integers(0, 256, (21, 17, 3), dtype=np.uint8)
    pred = predict(model, image, CPU)
    assert pred.shape == (21, 17)
    # flip averaging: the prediction of a mirrored image is the mirrored prediction
    a = predict(model, image, CPU, flip=True)
    b = predict(model, image[:, ::-1].copy(), CPU, flip=True)
    np.testing.assert_array_equal(a, b[:, ::-1])
