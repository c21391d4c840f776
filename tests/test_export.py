"""Tests for the deeplab-pytorch export (locseg/export.py)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from locseg.data import demo
from locseg.data.voc import read_mask, voc_palette, write_mask
from locseg.export import LIST_FILE, check_index_png, export_deeplab_pytorch

K = len(demo.DEMO_CLASSES)


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
