"""Tests for label assembly and the deeplab-pytorch export (locseg/masks.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from locseg.data.voc import read_mask, voc_palette, write_mask
from locseg.masks import LIST_FILE, assemble_labels, check_index_png, export_deeplab_pytorch
from tests.conftest import K


# ---------------------------------------------------------------- assemble_labels (hand-computed)

M2 = np.array(
    [
        [[0.9, 0.2, 0.5], [0.1, 0.6, 0.3]],  # class 2
        [[0.1, 0.7, 0.5], [0.2, 0.4, 0.3]],  # class 4
    ],
    np.float32,
)


def test_assemble_labels_bg_half_and_class_mapping():
    # best = [[.9 .7 .5] [.2 .6 .3]]; .5 is not > .5 -> background
    got = assemble_labels(M2, [2, 4], bg_score=0.5)
    np.testing.assert_array_equal(got, np.array([[2, 4, 0], [0, 2, 0]], np.uint8))
    assert got.dtype == np.uint8 and got.shape == (2, 3)


def test_assemble_labels_low_bg_and_ties():
    # bg 0.25: (0,2) and (1,2) tie between the classes -> the first listed class wins; (1,0) .2 < .25 -> bg
    got = assemble_labels(M2, [2, 4], bg_score=0.25)
    np.testing.assert_array_equal(got, np.array([[2, 4, 2], [0, 2, 2]], np.uint8))
    # order of the maps decides ties, not the class index
    got = assemble_labels(M2[::-1].copy(), [4, 2], bg_score=0.25)
    np.testing.assert_array_equal(got, np.array([[2, 4, 4], [0, 2, 4]], np.uint8))


def test_assemble_labels_high_bg_all_background():
    np.testing.assert_array_equal(assemble_labels(M2, [2, 4], bg_score=0.95), np.zeros((2, 3), np.uint8))


def test_assemble_labels_band():
    # |best - .5| = [[.4 .2 0] [.3 .1 .2]]; < .15 -> 255
    got = assemble_labels(M2, [2, 4], bg_score=0.5, band=0.15)
    np.testing.assert_array_equal(got, np.array([[2, 4, 255], [0, 255, 0]], np.uint8))
    # band 0 leaves no 255
    assert 255 not in assemble_labels(M2, [2, 4], bg_score=0.5, band=0.0)


def test_assemble_labels_no_classes():
    got = assemble_labels(np.zeros((0, 4, 5), np.float32), [], bg_score=0.0)
    np.testing.assert_array_equal(got, np.zeros((4, 5), np.uint8))
    assert got.dtype == np.uint8


def test_assemble_labels_single_class():
    m = np.array([[[0.1, 0.6], [0.51, 0.49]]], np.float32)
    np.testing.assert_array_equal(assemble_labels(m, [3], 0.5), np.array([[0, 3], [3, 0]], np.uint8))


# ---------------------------------------------------------------- deeplab-pytorch export


@pytest.fixture(scope="module")
def five(tiny):
    """The first five images of the shared tiny demo dataset."""
    ids = tiny["ids"][:5]
    return {"layout": tiny["layout"], "ids": ids, "image_paths": {i: tiny["image_paths"][i] for i in ids}}


def test_export_layout(five, tmp_path):
    layout, ids = five["layout"], five["ids"]
    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    for n, i in enumerate(ids):
        mask = read_mask(layout.mask_path(i), K)
        if n == 0:
            mask = mask.copy()
            mask[0, :3] = 255  # ignore survives
        write_mask(mask_dir / f"{i}.png", mask)  # palette PNGs in
    out = tmp_path / "dlp"
    export_deeplab_pytorch(mask_dir, five["image_paths"], K, out)
    assert not (tmp_path / "dlp.tmp").exists()
    lines = (out / LIST_FILE).read_text().splitlines()
    assert lines == [f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png" for i in ids]
    assert LIST_FILE == "ImageSets/SegmentationAug/train_aug.txt"
    for i in ids:
        label = out / "SegmentationClassAug" / f"{i}.png"
        with Image.open(label) as img:
            assert img.mode == "L"
            values = np.asarray(img)
        np.testing.assert_array_equal(values, np.asarray(Image.open(mask_dir / f"{i}.png")))
        jpg = out / "JPEGImages" / f"{i}.jpg"
        assert jpg.is_symlink() and os.path.isabs(os.readlink(jpg))
        assert jpg.resolve() == five["image_paths"][i].resolve()
        assert jpg.read_bytes() == five["image_paths"][i].read_bytes()
    first = np.asarray(Image.open(out / "SegmentationClassAug" / f"{ids[0]}.png"))
    assert (first[0, :3] == 255).all()


def test_export_refuses_rgb_mask(five, tmp_path):
    ids = five["ids"]
    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    for i in ids:
        write_mask(mask_dir / f"{i}.png", read_mask(five["layout"].mask_path(i), K))
    bad = ids[2]
    rgb = Image.open(mask_dir / f"{bad}.png").convert("RGB")  # what an image editor might save
    rgb.save(mask_dir / f"{bad}.png")
    with pytest.raises(ValueError, match=f"{bad}.png"):
        export_deeplab_pytorch(mask_dir, five["image_paths"], K, tmp_path / "dlp")
    assert not (tmp_path / "dlp").exists() and not (tmp_path / "dlp.tmp").exists()


def test_export_refuses_out_of_range_mask(five, tmp_path):
    mask_dir = tmp_path / "masks"
    mask_dir.mkdir()
    for i in five["ids"]:
        write_mask(mask_dir / f"{i}.png", np.full((4, 4), K, np.uint8))
    with pytest.raises(ValueError, match=rf"masks/\w+\.png: mask values \[{K}\] outside 0\.\.{K - 1} and 255"):
        export_deeplab_pytorch(mask_dir, five["image_paths"], K, tmp_path / "dlp")
    assert not (tmp_path / "dlp").exists()


def test_check_index_png(tmp_path):
    ok = tmp_path / "ok.png"
    Image.fromarray(np.array([[0, 1, 255], [2, 3, 0]], np.uint8), mode="L").save(ok)
    check_index_png(ok, 4)
    palette = tmp_path / "pal.png"
    img = Image.fromarray(np.array([[0, 1]], np.uint8))
    img.putpalette(voc_palette())
    img.save(palette)
    with pytest.raises(ValueError, match=r"pal\.png: mode P"):
        check_index_png(palette, 4)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.array([[0, 4, 7, 255]], np.uint8), mode="L").save(bad)
    with pytest.raises(ValueError, match=r"bad\.png: values \[4, 7\]"):
        check_index_png(bad, 4)
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(rgb)
    with pytest.raises(ValueError, match="mode RGB"):
        check_index_png(rgb, 4)
