"""Tests for the evaluation stages (locseg/evaluate.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import torch
from PIL import Image

from locseg.data.voc import read_mask, write_mask
from locseg.evaluate import eval_cams, evaluate_deeplab, evaluate_masks, supervision_gap
from locseg.fsutil import write_json
from locseg.models.deeplab import build_deeplab
from locseg.store import StoreWriter
from locseg.checkpoints import save_checkpoint

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


# ---------------------------------------------------------------- evaluate_masks (hand-computed)

# Round 1 separates image x exactly at bg_score 0.45; round 2 spills class a over the whole first row.
ROUND_1 = np.array([[[0.9, 0.5, 0.4, 0.1], [0.7, 0.2, 0.1, 0.0]]], np.float32)
ROUND_2 = np.array([[[0.9, 0.9, 0.9, 0.9], [0.9, 0.1, 0.1, 0.1]]], np.float32)
MASK_X = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], np.uint8)  # the pseudo mask scored as "miou"


def _images(tmp_path):
    paths = {}
    for image_id, hw in (("x", (2, 4)), ("y", (1, 2))):
        paths[image_id] = tmp_path / f"{image_id}.jpg"
        Image.fromarray(np.full((*hw, 3), 128, np.uint8)).save(paths[image_id])
    return paths


def _probs(tmp_path, rounds_run, keep_rounds):
    path = tmp_path / f"probs_{rounds_run}_{keep_rounds}.h5"
    with StoreWriter(path, "prob", NAMES, scales=[1.0], rounds=rounds_run) as w:
        w.write("x", ROUND_2, [1], extra={"rounds": np.stack([ROUND_1, ROUND_2])} if keep_rounds else None)
        w.write("y", np.zeros((0, 1, 2), np.float32), [],
                extra={"rounds": np.zeros((2, 0, 1, 2), np.float32)} if keep_rounds else None)
    return path


def _evaluate_masks(hand_store, tmp_path, probs):
    cams, gt = hand_store
    masks = tmp_path / "masks"
    masks.mkdir(exist_ok=True)
    write_mask(masks / "x.png", MASK_X)
    write_mask(masks / "y.png", np.zeros((1, 2), np.uint8))
    out = tmp_path / "m.json", tmp_path / "m.png", tmp_path / "m_overlay.png"
    result = evaluate_masks(masks, _images(tmp_path), gt, NAMES, "train", *out, prob_store_paths=[probs],
                            cam_store_paths=[cams], bg_score=0.45, band=0.0)
    return result, out


def test_evaluate_masks_hand_computed_with_every_round(hand_store, tmp_path):
    result, (out_json, out_plot, out_overlay) = _evaluate_masks(hand_store, tmp_path, _probs(tmp_path, 2, True))
    # mask: a: TP 2, FP 1, FN 1 -> 2/4; background: x 4 of union 6, y 2 of 2 -> 6/8; b never present
    assert result["miou"] == pytest.approx((0.5 + 0.75) / 2)
    assert result["per_class"]["a"]["iou"] == pytest.approx(0.5)
    assert result["per_class"]["background"]["iou"] == pytest.approx(0.75)
    assert result["n_images"] == 2 and result["split"] == "train"
    # round 1 exact (1.0); round 2: a TP 3 FP 2 -> 3/5, background 5 of 7
    assert [r["round"] for r in result["rounds"]] == [1, 2]
    assert result["rounds"][0]["miou"] == pytest.approx(1.0)
    assert result["rounds"][1]["miou"] == pytest.approx((3 / 5 + 5 / 7) / 2)
    assert json.loads(out_json.read_text())["miou"] == pytest.approx(0.625)
    assert out_plot.is_file() and out_overlay.is_file()


def test_evaluate_masks_numbers_the_only_stored_round_as_the_last(hand_store, tmp_path):
    """keep_rounds off (the paper config): the store holds round 3's maps only, and it is round 3."""
    result, _ = _evaluate_masks(hand_store, tmp_path, _probs(tmp_path, 3, False))
    assert len(result["rounds"]) == 1
    assert result["rounds"][0]["round"] == 3
    assert result["rounds"][0]["miou"] == pytest.approx((3 / 5 + 5 / 7) / 2)  # ROUND_2's maps, scored


# ---------------------------------------------------------------- evaluate_deeplab


def test_evaluate_deeplab_scores_its_own_predictions(tmp_path):
    """The JSON must agree with plain pixel counting over the prediction PNGs it wrote."""
    torch.manual_seed(0)
    ckpt = tmp_path / "dl.pt"
    save_checkpoint(ckpt, build_deeplab(len(NAMES), "small"), "deeplab", {"class_names": NAMES, "backbone": "small"})
    rng = np.random.default_rng(0)
    images, gts = {}, {}
    for n, hw in enumerate([(24, 32), (17, 21), (32, 16)]):
        images[f"i{n}"] = tmp_path / f"i{n}.jpg"
        Image.fromarray(rng.integers(0, 256, (*hw, 3), dtype=np.uint8)).save(images[f"i{n}"])
        gt = rng.integers(0, len(NAMES), hw).astype(np.uint8)
        gt[0, :4] = 255
        gts[f"i{n}"] = tmp_path / f"gt{n}.png"
        write_mask(gts[f"i{n}"], gt)
    preds = tmp_path / "pred"
    result = evaluate_deeplab(ckpt, images, gts, NAMES, "val", tmp_path / "d.json", tmp_path / "d.png", preds,
                              device="cpu")
    inter, union = np.zeros(len(NAMES)), np.zeros(len(NAMES))
    for image_id, gt_path in gts.items():
        gt = read_mask(gt_path, len(NAMES))
        pred = read_mask(preds / f"{image_id}.png", len(NAMES))
        assert pred.shape == gt.shape
        valid = gt != 255
        for c in range(len(NAMES)):
            inter[c] += ((pred == c) & (gt == c) & valid).sum()
            union[c] += (((pred == c) | (gt == c)) & valid).sum()
    assert result["miou"] == pytest.approx(float(np.mean(inter[union > 0] / union[union > 0])), abs=1e-12)
    assert result["n_images"] == 3 and result["split"] == "val"
    assert json.loads((tmp_path / "d.json").read_text())["miou"] == pytest.approx(result["miou"])


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
