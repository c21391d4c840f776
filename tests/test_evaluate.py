"""Tests for the evaluation stages (locseg/evaluate.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from locseg.data.voc import write_mask
from locseg.evaluate import eval_cams, supervision_gap
from locseg.fsutil import write_json
from locseg.store import StoreWriter

NAMES = ["background", "a", "b"]


@pytest.fixture
def hand_store(tmp_path):
    """Image x (2x4) with class 1, image y (1x2) with no class at all."""
    gt_x = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], np.uint8)
    cam_x = np.array([[[0.9, 0.5, 0.4, 0.1], [0.7, 0.2, 0.1, 0.0]]], np.float32)
    gt_y = np.zeros((1, 2), np.uint8)
    store = tmp_path / "cams" / "0.h5"
    with StoreWriter(store, "cam", NAMES, scales=[1.0]) as w:
        w.write("x", cam_x, [1])
        w.write("y", np.zeros((0, 1, 2), np.float32), [])
    write_mask(tmp_path / "x.png", gt_x)
    write_mask(tmp_path / "y.png", gt_y)
    return store, {"x": tmp_path / "x.png", "y": tmp_path / "y.png"}


def test_eval_cams_hand_computed(hand_store, tmp_path):
    store, gt = hand_store
    out_json, out_plot = tmp_path / "cams.json", tmp_path / "cams.png"
    result = eval_cams([store], gt, NAMES, "train", out_json, out_plot, thresholds=[0.3, 0.6, 0.8])
    # t=.3: fg = .9 .5 .4 .7 -> class a: TP 3 FP 1 -> 3/4; bg: 6 of union 7 -> 6/7; class b absent (nan)
    # t=.6: fg = .9 .7 -> a: 2/3; bg: 7/8.   t=.8: fg = .9 -> a: 1/3; bg: 7/9
    want = [(6 / 7 + 3 / 4) / 2, (7 / 8 + 2 / 3) / 2, (7 / 9 + 1 / 3) / 2]
    got = [s["miou"] for s in result["sweep"]]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert [s["threshold"] for s in result["sweep"]] == [0.3, 0.6, 0.8]
    assert result["best_threshold"] == 0.3
    assert result["miou"] == pytest.approx(want[0])
    assert result["per_class"]["a"]["iou"] == pytest.approx(0.75)
    assert result["per_class"]["background"]["iou"] == pytest.approx(6 / 7)
    assert math.isnan(result["per_class"]["b"]["iou"])
    assert result["split"] == "train" and result["n_images"] == 2
    on_disk = json.loads(out_json.read_text())
    assert on_disk["best_threshold"] == 0.3 and on_disk["miou"] == pytest.approx(want[0])
    assert out_plot.is_file() and out_plot.stat().st_size > 0


def test_eval_cams_best_is_not_the_first(hand_store, tmp_path):
    store, gt = hand_store
    # t=.45 separates exactly: mIoU 1 (class b never present)
    result = eval_cams([store], gt, NAMES, "train", tmp_path / "c.json", tmp_path / "c.png",
                       thresholds=[0.8, 0.45, 0.3])
    assert result["best_threshold"] == 0.45 and result["miou"] == pytest.approx(1.0)


def test_eval_cams_id_missing_from_store(hand_store, tmp_path):
    store, gt = hand_store
    write_mask(tmp_path / "z.png", np.zeros((2, 2), np.uint8))
    gt = {**gt, "z": tmp_path / "z.png"}
    with pytest.raises(ValueError, match="'z'"):
        eval_cams([store], gt, NAMES, "train", tmp_path / "c.json", tmp_path / "c.png", thresholds=[0.5])
    assert not (tmp_path / "c.json").exists()


def test_supervision_gap(tmp_path):
    write_json(tmp_path / "p.json", {"split": "val", "miou": 0.6})
    write_json(tmp_path / "g.json", {"split": "val", "miou": 0.8})
    result = supervision_gap(tmp_path / "p.json", tmp_path / "g.json", tmp_path / "gap.json")
    assert result["ratio"] == pytest.approx(0.75)
    assert result["miou_pseudo"] == 0.6 and result["miou_gt"] == 0.8 and result["split"] == "val"
    assert json.loads((tmp_path / "gap.json").read_text())["ratio"] == pytest.approx(0.75)


def test_supervision_gap_refuses_other_splits(tmp_path):
    write_json(tmp_path / "p.json", {"split": "train", "miou": 0.6})
    write_json(tmp_path / "g.json", {"split": "val", "miou": 0.8})
    with pytest.raises(ValueError, match="'train'.*'val'"):
        supervision_gap(tmp_path / "p.json", tmp_path / "g.json", tmp_path / "gap.json")
    assert not (tmp_path / "gap.json").exists()


def test_supervision_gap_zero_gt(tmp_path):
    write_json(tmp_path / "p.json", {"split": "val", "miou": 0.1})
    write_json(tmp_path / "g.json", {"split": "val", "miou": 0.0})
    assert math.isnan(supervision_gap(tmp_path / "p.json", tmp_path / "g.json", tmp_path / "gap.json")["ratio"])
