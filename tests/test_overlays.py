"""Overlay grids (locseg/overlays.py): the same views for evaluate_masks, the report and `locseg show`."""

from __future__ import annotations

import numpy as np

from locseg import viz
from locseg.data.demo import generate
from locseg.data.voc import read_mask, read_split, write_mask
from locseg.overlays import cam_panel, overlay_grid, sample_ids
from locseg.store import StoreWriter
from tests.conftest import CLASSES


def test_sample_ids_spread_evenly_and_keep_short_lists():
    ids = [f"i{n}" for n in range(10)]
    assert sample_ids(ids, 4) == ["i0", "i2", "i5", "i7"]
    assert sample_ids(ids[:3], 8) == ids[:3]


def test_cam_panel_is_the_heatmap_of_the_class_maximum():
    image = np.zeros((3, 4, 3), np.uint8)
    maps = np.zeros((2, 3, 4), np.float32)
    maps[0, 0, 0], maps[1, 2, 3] = 1.0, 0.5
    expected = viz.heatmap(image, np.maximum(maps[0], maps[1]))
    np.testing.assert_array_equal(cam_panel(image, maps), expected)
    np.testing.assert_array_equal(cam_panel(image, maps[:0]), viz.heatmap(image, np.zeros((3, 4), np.float32)))


def test_overlay_grid(tmp_path):
    generate(tmp_path / "demo", seed=0, size="tiny")
    voc = tmp_path / "demo" / "voc"
    ids = read_split(voc / "ImageSets/Segmentation/val.txt")
    image_paths = {i: voc / "JPEGImages" / f"{i}.jpg" for i in ids}
    gt_paths = {i: voc / "SegmentationClass" / f"{i}.png" for i in ids}
    pred = tmp_path / "pred"

    shown = sample_ids(ids, 2)
    assert shown == [ids[0], ids[len(ids) // 2]]
    for i in shown[:1]:  # the second image has no prediction: a blank cell, not an error
        write_mask(pred / f"{i}.png", read_mask(gt_paths[i], len(CLASSES)))
    gt = read_mask(gt_paths[shown[0]], len(CLASSES))
    with StoreWriter(tmp_path / "cams.h5", "cam", CLASSES) as w:
        w.write(shown[0], np.full((1, *gt.shape), 0.5), [1])
    titles = overlay_grid(tmp_path / "grid.png", shown, image_paths, gt_paths, CLASSES,
                          cam_stores=[tmp_path / "cams.h5"], mask_dir=pred, pred_dirs={"pseudo": pred})
    assert titles == ["image", "ground truth", "CAM (max over classes)", "pseudo mask", "DeepLab (pseudo labels)"]
    assert overlay_grid(tmp_path / "plain.png", shown, image_paths, gt_paths, CLASSES) == ["image", "ground truth"]
    assert (tmp_path / "grid.png").stat().st_size > 0
