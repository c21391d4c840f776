"""Metrics checked against numbers worked out by hand (not recomputed with the module's formulas)."""
import json
import math
import re
import warnings

import numpy as np
import pytest

from locseg.metrics import IGNORE, ConfusionMatrix

# 2x3 example, K=3.  Confusion (rows GT, cols pred 0,1,2,255):
#   gt0: [1, 1, 0, 0]   gt1: [0, 2, 0, 0]   gt2: [1, 0, 1, 0]
# tp = 1,2,1   gt = 2,2,2   pred = 2,3,1
# IoU = 1/3, 2/3, 1/2 -> mIoU 0.5;  pixel acc 4/6;  mean acc (1/2+1+1/2)/3 = 2/3
# fw IoU = 2/6 * (1/3 + 2/3 + 1/2) = 0.5
GT = np.array([[0, 0, 1], [1, 2, 2]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0]], dtype=np.uint8)
NAMES3 = ["bg", "cat", "dog"]


def scores_of(k, pairs, names=None):
    cm = ConfusionMatrix(k)
    for gt, pred in pairs:
        cm.update(np.asarray(gt), np.asarray(pred))
    return cm.scores(names or [f"c{i}" for i in range(k)])


def test_small_example():
    s = scores_of(3, [(GT, PRED)], NAMES3)
    assert s["confusion"] == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0]]
    assert s["miou"] == pytest.approx(0.5)
    assert s["pixel_acc"] == pytest.approx(2 / 3)
    assert s["mean_acc"] == pytest.approx(2 / 3)
    assert s["fw_iou"] == pytest.approx(0.5)
    assert s["ignored_frac"] == 0.0
    expected = {
        "bg": (1 / 3, 1 / 2, 1 / 2),
        "cat": (2 / 3, 2 / 3, 1.0),
        "dog": (1 / 2, 1.0, 1 / 2),
    }
    for name, (iou, prec, rec) in expected.items():
        c = s["per_class"][name]
        assert (c["iou"], c["precision"], c["recall"]) == pytest.approx((iou, prec, rec))


def test_absent_class_is_nan_and_left_out_of_means():
    # Same pixels with K=4: class 3 never appears, so every mean must match the K=3 case.
    s = scores_of(4, [(GT, PRED)])
    c3 = s["per_class"]["c3"]
    assert math.isnan(c3["iou"]) and math.isnan(c3["precision"]) and math.isnan(c3["recall"])
    assert s["miou"] == pytest.approx(0.5)
    assert s["mean_acc"] == pytest.approx(2 / 3)
    assert s["fw_iou"] == pytest.approx(0.5)


def test_class_only_predicted_has_zero_iou():
    # gt all 0, pred has a false-positive 1: class 1 has a union, so IoU 0 (not NaN) and it counts.
    s = scores_of(2, [([0, 0, 0, 0], [0, 0, 0, 1])])
    assert s["per_class"]["c1"]["iou"] == 0.0
    assert math.isnan(s["per_class"]["c1"]["recall"])
    assert s["miou"] == pytest.approx((3 / 4 + 0.0) / 2)


def test_all_ignore_gt_contributes_nothing():
    cm = ConfusionMatrix(3)
    cm.update(GT, PRED)
    before = cm.matrix.copy()
    cm.update(np.full((4, 5), IGNORE, np.uint8), np.zeros((4, 5), np.uint8))
    np.testing.assert_array_equal(cm.matrix, before)
    assert cm.scores(NAMES3)["miou"] == pytest.approx(0.5)


def test_gt_ignore_pixels_skipped_within_image():
    gt = np.array([[0, IGNORE], [1, IGNORE]], np.uint8)
    pred = np.array([[0, 1], [1, IGNORE]], np.uint8)
    assert scores_of(2, [(gt, pred)])["confusion"] == [[1, 0, 0], [0, 1, 0]]


def test_predicted_ignore_is_a_miss_and_reported():
    # gt0 x3, gt1 x1; two gt0 pixels left as 255.  Confusion [[1,0,2],[0,1,0]].
    s = scores_of(2, [([0, 0, 0, 1], [0, IGNORE, IGNORE, 1])])
    assert s["confusion"] == [[1, 0, 2], [0, 1, 0]]
    assert s["ignored_frac"] == pytest.approx(2 / 4)
    assert s["pixel_acc"] == pytest.approx(2 / 4)
    assert s["per_class"]["c0"]["recall"] == pytest.approx(1 / 3)
    assert s["per_class"]["c0"]["precision"] == 1.0
    assert s["per_class"]["c0"]["iou"] == pytest.approx(1 / 3)  # 1 / (3 + 1 - 1)
    assert s["per_class"]["c1"]["precision"] == 1.0  # a 255 is not a false positive for anyone
    assert s["miou"] == pytest.approx((1 / 3 + 1) / 2)
    # Had those two pixels been labelled 1, class 1 would pay in precision (1/3) instead.
    wrong = scores_of(2, [([0, 0, 0, 1], [0, 1, 1, 1])])
    assert wrong["per_class"]["c1"]["precision"] == pytest.approx(1 / 3)
    assert wrong["ignored_frac"] == 0.0


def test_merge_equals_single_pass():
    gt2 = np.array([[2, 2], [0, IGNORE]], np.uint8)
    pred2 = np.array([[2, IGNORE], [1, 0]], np.uint8)
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(GT, PRED)
    b.update(gt2, pred2)
    a += b
    # second image adds gt2->2, gt2->255, gt0->1 to the small example's matrix
    assert a.matrix.tolist() == [[1, 2, 0, 0], [0, 2, 0, 0], [1, 0, 2, 1]]
    both = ConfusionMatrix(3)
    both.update(np.concatenate([GT.ravel(), gt2.ravel()]), np.concatenate([PRED.ravel(), pred2.ravel()]))
    np.testing.assert_array_equal(a.matrix, both.matrix)


def test_merge_rejects_other_k():
    a = ConfusionMatrix(3)
    with pytest.raises(ValueError):
        a += ConfusionMatrix(4)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        ConfusionMatrix(3).update(GT, PRED.reshape(3, 2))


@pytest.mark.parametrize(
    "gt, pred, bad",
    [
        ([0, 3], [0, 0], "[3]"),  # gt class == K
        ([0, 1], [0, 254], "[254]"),  # pred neither a class nor 255
        ([0, -1], [0, 0], "[-1]"),
    ],
)
def test_out_of_range_raises(gt, pred, bad):
    with pytest.raises(ValueError, match=re.escape(bad)):
        ConfusionMatrix(3).update(np.array(gt), np.array(pred))


def test_float_labels_rejected():
    with pytest.raises(ValueError, match="integer"):
        ConfusionMatrix(3).update(np.array([0.0, 1.5]), np.array([0, 1]))


def test_perfect_prediction():
    s = scores_of(3, [(GT, GT)], NAMES3)
    for key in ("miou", "pixel_acc", "mean_acc", "fw_iou"):
        assert s[key] == 1.0
    for c in s["per_class"].values():
        assert c == {"iou": 1.0, "precision": 1.0, "recall": 1.0}
    assert s["ignored_frac"] == 0.0


def test_fw_iou_hand_example():
    # gt 0,0,0,1 pred 0,0,1,1: IoU0 = 2/3, IoU1 = 1/2; weights 3/4, 1/4 -> 1/2 + 1/8
    s = scores_of(2, [([0, 0, 0, 1], [0, 0, 1, 1])])
    assert s["fw_iou"] == pytest.approx(0.625)
    assert s["miou"] == pytest.approx(7 / 12)


def test_empty_matrix_is_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = ConfusionMatrix(2).scores(["a", "b"])
    for key in ("miou", "pixel_acc", "mean_acc", "fw_iou"):
        assert math.isnan(s[key])
    assert s["ignored_frac"] == 0.0
    assert all(math.isnan(v) for c in s["per_class"].values() for v in c.values())
    assert s["confusion"] == [[0, 0, 0], [0, 0, 0]]


def test_plain_python_types_and_json():
    s = scores_of(4, [(GT, PRED)])
    for key in ("miou", "pixel_acc", "mean_acc", "fw_iou", "ignored_frac"):
        assert type(s[key]) is float
    assert all(type(v) is float for c in s["per_class"].values() for v in c.values())
    assert all(type(v) is int for row in s["confusion"] for v in row)
    back = json.loads(json.dumps(s))  # NaN for the absent class survives the round trip
    assert math.isnan(back["per_class"]["c3"]["iou"])
    assert back["miou"] == pytest.approx(0.5)


def test_wrong_number_of_names_raises():
    with pytest.raises(ValueError):
        ConfusionMatrix(3).scores(["a", "b"])
