"""Tests for the class-agnostic segmenter stage and label assembly (locseg/reseg.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from locseg.batching import Compute
from locseg.cam import extract_cams, train_cam
from locseg.checkpoints import save_checkpoint
from locseg.data.transforms import normalize
from locseg.data.voc import image_size, read_mask
from locseg.masks import export_masks
from locseg.models.segmenter import Segmenter
import locseg.reseg as reseg_module
from locseg.reseg import (
    FEEDBACK,
    GROWTH,
    CueSet,
    degraded_cue,
    dilate,
    dice_bce_loss,
    load_segmenter,
    next_cue,
    perturbed_mask,
    resegment,
    resegment_batch,
    resegment_image,
    segmenter_loss,
    soft_dice,
    train_segmenter,
)
from locseg.store import ShardedStore, StoreReader
from tests.conftest import CLASSES, CPU, FAST, K


# ---------------------------------------------------------------- degraded_cue


def test_degraded_cue_peak_inside_mask():
    target = np.zeros((20, 30), np.uint8)
    target[5:12, 10:20] = 1
    target[0:3, 0:3] = 255  # crowd: never the centre
    for seed in range(5):
        cue = degraded_cue(target, np.random.default_rng(seed))
        assert cue.shape == (20, 30) and cue.dtype == np.float32
        assert cue.min() >= 0 and cue.max() <= 1
        y, x = np.unravel_index(cue.argmax(), cue.shape)
        assert target[y, x] == 1
        # a Gaussian bump of sigma = 0.25 * sqrt(70 object pixels) around the peak, not the full shape
        sigma = 0.25 * math.sqrt(70)
        yy, xx = np.mgrid[0:20, 0:30]
        np.testing.assert_allclose(cue, np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)), atol=1e-6)


def test_degraded_cue_empty_and_deterministic():
    empty = np.zeros((6, 7), np.uint8)
    empty[0, 0] = 255
    cue = degraded_cue(empty, np.random.default_rng(0))
    assert cue.shape == (6, 7) and not cue.any()
    target = np.zeros((16, 16), np.uint8)
    target[2:14, 3:9] = 1
    a = degraded_cue(target, np.random.default_rng(42))
    b = degraded_cue(target, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    others = [degraded_cue(target, np.random.default_rng(s)) for s in range(10)]
    assert any(not np.array_equal(a, o) for o in others)


def test_degraded_cue_value_hand_computed():
    target = np.zeros((3, 3), np.uint8)
    target[1, 1] = 1  # one pixel: centre fixed, sigma = 0.25
    cue = degraded_cue(target, np.random.default_rng(0))
    assert cue[1, 1] == pytest.approx(1.0)
    assert cue[1, 2] == pytest.approx(math.exp(-1 / (2 * 0.25**2)), rel=1e-5)
    assert cue[0, 0] == pytest.approx(math.exp(-2 / (2 * 0.25**2)), rel=1e-4)


# ---------------------------------------------------------------- dice_bce_loss


def test_dice_bce_hand_value():
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[1, 1], [0, 0]]])
    # BCE = ln 2; p = .5: inter 1, sum p 2, sum t 2 -> dice = 1 - 3/5
    assert dice_bce_loss(logits, target).item() == pytest.approx(math.log(2) + 0.4, rel=1e-5)
    ignored = torch.tensor([[[1, 0], [255, 255]]])
    # valid 2: BCE = ln 2; p sum 1, inter .5, t sum 1 -> dice = 1 - 2/3
    assert dice_bce_loss(logits, ignored).item() == pytest.approx(math.log(2) + 1 / 3, rel=1e-5)


def test_dice_bce_ignores_255():
    torch.manual_seed(0)
    target = torch.randint(0, 2, (2, 6, 6))
    target[:, :2] = 255
    logits = torch.randn(2, 1, 6, 6)
    other = logits.clone()
    other[:, 0, :2] = 50.0  # confidently "object" where ignored
    third = logits.clone()
    third[:, 0, :2] = -50.0
    base = dice_bce_loss(logits, target)
    assert dice_bce_loss(other, target).item() == pytest.approx(base.item(), rel=1e-6)
    assert dice_bce_loss(third, target).item() == pytest.approx(base.item(), rel=1e-6)


def test_dice_bce_perfect_vs_wrong():
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[0, 2:5, 2:6] = 1
    target[1, 0:3, :] = 1
    perfect = (target.float() * 40 - 20)[:, None]
    assert dice_bce_loss(perfect, target).item() < 1e-3
    wrong = -perfect
    assert dice_bce_loss(wrong, target).item() > 5
    assert dice_bce_loss(perfect, target).requires_grad is False  # plain tensors in, plain out


# ---------------------------------------------------------------- cue-robust training: second cue, consistency


def test_soft_dice_hand_value():
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.0]]])
    q = torch.tensor([[[1.0, 1.0], [0.0, 0.5]]])
    # inter 1.5, sums 1.5 + 2.5 -> 1 - (3 + 1) / (4 + 1)
    assert soft_dice(p, q).item() == pytest.approx(0.2, rel=1e-6)
    assert soft_dice(q, q).item() < soft_dice(p, q).item()


def _square(size=40, lo=12, hi=28):
    target = torch.zeros(size, size, dtype=torch.long)
    target[lo:hi, lo:hi] = 1
    return target


def test_dilate_is_the_square_max_by_hand():
    """Row pass then column pass = the max over the full (2r+1)^2 square, borders included (a wrong
    separable version, e.g. one pass only or swapped paddings, differs at corners of the square)."""
    m = torch.zeros(1, 1, 7, 9)
    m[0, 0, 3, 4] = 1
    m[0, 0, 0, 8] = 0.5
    got = dilate(m, 2)[0, 0]
    want = torch.zeros(7, 9)
    want[1:6, 2:7] = 1          # the square of side 5 around (3, 4), corners included
    want[0:3, 6:9] = torch.maximum(want[0:3, 6:9], torch.tensor(0.5))  # around the corner pixel, clipped
    torch.testing.assert_close(got, want)


def test_perturbed_mask_stays_near_the_object():
    """Grown or shrunk within GROWTH x sqrt(area) (+2 px blur): never farther out, never loses the core,
    peak in [0.6, 1]; over seeds it both grows and shrinks, and softens."""
    target = _square(60, 22, 38)  # 16 x 16 object
    target[0, :] = 255  # ignored pixels are not object
    out = round(GROWTH[1] * 16) + 2  # farthest reach outside the object
    core = round(-GROWTH[0] * 16) + 2  # deepest reach inside it
    assert 22 - out > 0 and 38 - core > 22 + core  # the checks below look at real pixels
    grew = shrank = False
    peaks = []
    for seed in range(40):
        cue = perturbed_mask(target, np.random.default_rng(seed))
        assert cue.shape == (1, 60, 60) and cue.dtype == torch.float32
        assert 0.0 <= cue.min() and 0.6 - 1e-6 <= cue.max() <= 1.0
        peaks.append(float(cue.max()))
        assert cue[0, :22 - out].abs().sum() == 0 and cue[0, 38 + out:].abs().sum() == 0
        assert cue[0, :, :22 - out].abs().sum() == 0 and cue[0, :, 38 + out:].abs().sum() == 0
        assert (cue[0, 22 + core:38 - core, 22 + core:38 - core] > 0).all()  # the core survives
        support = int((cue[0] > 0).sum())
        grew |= support > 16 * 16
        shrank |= support < 16 * 16
    assert grew and shrank and min(peaks) < 0.8


def test_perturbed_mask_deterministic_and_empty():
    target = _square()
    a = perturbed_mask(target, np.random.default_rng(3))
    b = perturbed_mask(target, np.random.default_rng(3))
    assert torch.equal(a, b)
    empty = perturbed_mask(torch.zeros(9, 9, dtype=torch.long), np.random.default_rng(0))
    assert empty.shape == (1, 9, 9) and empty.abs().sum() == 0


def test_cueset_second_cues(tiny):
    """The second cue never changes the first pass's sample; each entry of the mix is drawn."""
    coco = tiny["coco"]
    plain = CueSet(coco, None, 32, (0.7, 1.3), seed=0)
    mixed = CueSet(coco, None, 32, (0.7, 1.3), seed=0, second_cues=["prediction", "perturbed_mask"])
    flags = []
    for i in range(len(plain)):
        first, sample = plain[i], mixed[i]
        assert len(first) == 3 and len(sample) == 5
        for a, b in zip(first, sample[:3]):
            assert torch.equal(a, b)
        perturbed, flag = sample[3], sample[4]
        flags.append(float(flag))
        if flag:
            assert perturbed.abs().sum() == 0  # the loss puts the model's own prediction here
        else:
            assert perturbed.shape == (1, 32, 32)
            assert (perturbed > 0).sum() > 0 or (sample[2] == 1).sum() == 0
    assert set(flags) == {0.0, 1.0}
    only = CueSet(coco, None, 32, (0.7, 1.3), seed=0, second_cues=["perturbed_mask"])
    assert all(float(only[i][4]) == 0.0 for i in range(len(only)))
    with pytest.raises(ValueError, match="unknown second cue"):
        CueSet(coco, None, 32, (0.7, 1.3), seed=0, second_cues=["cam"])


def test_cueset_one_pass_mixes_second_round_cues(tiny):
    """passes: 1: a sample is (image, cue, target) with the plain sample's image and target; its cue is the
    plain CAM-like cue or, for about half of the samples, the mean of it and a perturbed object mask."""
    coco = tiny["coco"]
    plain = CueSet(coco, None, 32, (0.7, 1.3), seed=0)
    one = CueSet(coco, None, 32, (0.7, 1.3), seed=0, second_cues=["perturbed_mask"], one_pass="cam_mean")
    mixed = 0
    for i in range(len(plain)):
        (image, cue, target), sample = plain[i], one[i]
        assert len(sample) == 3 and torch.equal(sample[0], image) and torch.equal(sample[2], target)
        if torch.equal(sample[1], cue):
            continue
        mixed += 1
        second = (2 * sample[1] - cue)[0]  # the perturbed mask that was mixed in
        assert second.min() >= -1e-5 and second.max() <= 1 + 1e-5
        if (target == 1).any() and (target == 0).any():
            assert second[target == 1].mean() > second[target == 0].mean()
    assert 0.25 * len(plain) <= mixed <= 0.75 * len(plain)
    with pytest.raises(ValueError, match="perturbed_mask cues only"):
        CueSet(coco, None, 32, (0.7, 1.3), seed=0, second_cues=["prediction"], one_pass="cam_mean")


class CueModel(torch.nn.Module):
    """logit = w * (image channel 0) + 4 * cue - 2: its output depends on the cue, and it has a weight."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))
        self.cues = []

    def forward(self, image, cue):
        self.cues.append(cue.detach().clone())
        return self.w * image[:, :1] + 4 * cue - 2


def _batch():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 6, 6, generator=g)
    cues = torch.rand(2, 1, 6, 6, generator=g)
    targets = torch.randint(0, 2, (2, 6, 6), generator=g)
    targets[:, 0] = 255
    perturbed = torch.rand(2, 1, 6, 6, generator=g)
    use_prediction = torch.tensor([1.0, 0.0])
    return images, cues, targets, perturbed, use_prediction


@pytest.mark.parametrize("feedback", FEEDBACK)
def test_segmenter_loss_second_pass_cues_and_value(feedback):
    """Sample 0's second output is the first pass's own (detached) probability, sample 1's the perturbed
    mask; the second pass gets what a second round would feed (with cam_mean: the mean with the first cue);
    the loss is both passes' Dice + BCE plus consistency x Dice between their outputs."""
    images, cues, targets, perturbed, use_prediction = batch = _batch()
    model = CueModel()
    loss = segmenter_loss(model, batch, consistency=0.7, feedback=feedback)
    first_cue, second_cue = model.cues
    assert torch.equal(first_cue, cues)
    with torch.no_grad():
        first = model.w * images[:, :1] + 4 * cues - 2
        fed = [torch.sigmoid(first[0]), perturbed[1]]
        for i in (0, 1):
            want = fed[i] if feedback == "output" else (cues[i] + fed[i]) / 2
            torch.testing.assert_close(second_cue[i], want)
        second = model.w * images[:, :1] + 4 * second_cue - 2
        valid = (targets != 255).float()
        consistency = soft_dice(torch.sigmoid(first[:, 0]) * valid, torch.sigmoid(second[:, 0]) * valid)
        expected = dice_bce_loss(first, targets) + dice_bce_loss(second, targets) + 0.7 * consistency
    assert consistency.item() > 0.01
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert segmenter_loss(CueModel(), batch[:3]).item() == pytest.approx(dice_bce_loss(first, targets).item(), rel=1e-6)


def test_segmenter_loss_own_prediction_is_detached():
    """No gradient flows back through the first pass into the cue of the second: the gradient is that of
    the two passes with the cue taken as a constant."""
    batch = _batch()
    model = CueModel()
    segmenter_loss(model, batch, consistency=0.0).backward()
    images, cues, targets, perturbed, use_prediction = batch
    w = torch.tensor(0.5, requires_grad=True)
    first = w * images[:, :1] + 4 * cues - 2
    fed = torch.where(use_prediction.view(-1, 1, 1, 1) > 0, torch.sigmoid(first.detach()), perturbed)
    cue2 = (cues + fed) / 2
    (dice_bce_loss(first, targets) + dice_bce_loss(w * images[:, :1] + 4 * cue2 - 2, targets)).backward()
    assert model.w.grad.item() == pytest.approx(w.grad.item(), rel=1e-5)


def test_next_cue_by_hand():
    cam, out = torch.tensor([0.0, 0.2, 1.0]), torch.tensor([1.0, 0.6, 0.0])
    torch.testing.assert_close(next_cue(cam, out, "cam_mean"), torch.tensor([0.5, 0.4, 0.5]))
    torch.testing.assert_close(next_cue(cam, out, "running_mean"), torch.tensor([0.5, 0.4, 0.5]))
    assert next_cue(cam, out, "output") is out
    with pytest.raises(ValueError, match="unknown feedback 'mean'"):
        next_cue(cam, out, "mean")


def test_train_segmenter_refuses_consistency_without_second_cue(tiny, tmp_path):
    for bad in ({"second_cues": []}, {"passes": 1}):
        with pytest.raises(ValueError, match="needs two passes and at least one second cue"):
            train_segmenter(tiny["coco"], None, CLASSES, tmp_path / "s.pt", consistency=1.0, **bad, **FAST)
    assert not (tmp_path / "s.pt").exists()


def test_train_segmenter_one_pass(tiny, tmp_path):
    summary = train_segmenter(tiny["coco"], None, CLASSES, tmp_path / "s.pt", passes=1, consistency=0.0,
                              width=16, **FAST)
    assert summary["passes"] == 1 and np.isfinite(summary["loss_per_epoch"]).all()


# ---------------------------------------------------------------- resegment_image


class RecordingModel:
    """logit = 2 * cue - 1, recording every (image, cue) it was called with."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, cue):
        self.calls.append((x.clone(), cue.clone()))
        return cue * 2 - 1


@pytest.mark.parametrize("feedback", FEEDBACK)
def test_resegment_image_feeds_rounds_back(feedback):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cams = rng.random((2, 5, 7)).astype(np.float32)
    model = RecordingModel()
    out = resegment_image(model, image, cams, rounds=3, device=CPU, feedback=feedback)
    assert out.shape == (3, 2, 5, 7) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    # hand recurrence: o_r = sigmoid(2 c_r - 1); round r's p_r = o_r, or with running_mean the mean of o_1..o_r;
    # c_{r+1} = p_r (output) or (cam + p_r) / 2 (cam_mean, running_mean)
    cam = c = cams.astype(np.float64)
    cues, raw = [], []
    for r in range(3):
        cues.append(c)
        raw.append(1 / (1 + np.exp(-(2 * c - 1))))
        p = np.mean(raw, axis=0) if feedback == "running_mean" else raw[-1]
        np.testing.assert_allclose(out[r], p, atol=1e-5)
        c = p if feedback == "output" else (cam + p) / 2
    assert len(model.calls) == 3
    for r in range(3):
        np.testing.assert_allclose(model.calls[r][1][:, 0].numpy(), cues[r], atol=1e-6)
    x = model.calls[0][0]
    assert x.shape == (2, 3, 5, 7)
    torch.testing.assert_close(x[1], normalize(image))


class RampModel:
    """logit = 2 * cue - 1 + the column index / 4: not mirror-symmetric, so a flip shows in the output."""

    def __call__(self, x, cue):
        return cue * 2 - 1 + torch.arange(x.shape[-1], dtype=torch.float32) / 4


def test_resegment_flip_averages_the_mirrored_run():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    cams = rng.random((1, 4, 6)).astype(np.float32)
    out = resegment_image(RampModel(), image, cams, rounds=2, device=CPU, feedback="output", flip=True)
    ramp = np.arange(6) / 4
    c = cams.astype(np.float64)
    for r in range(2):
        # the mirrored view sees the cue mirrored, so pixel j gets column 5 - j's ramp value
        p = (1 / (1 + np.exp(-(2 * c - 1 + ramp))) + 1 / (1 + np.exp(-(2 * c - 1 + ramp[::-1])))) / 2
        np.testing.assert_allclose(out[r], p, atol=1e-5)
        c = p
    no_flip = resegment_image(RampModel(), image, cams, rounds=1, device=CPU, feedback="output")
    assert np.abs(no_flip[0] - out[0]).max() > 0.05


def test_resegment_with_canvas_pads_image_and_cue_and_crops_back():
    """inference.canvas: image and cue run padded (zeros) to the 16x16 canvas, the outputs cropped back."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    cams = rng.random((2, 5, 7)).astype(np.float32)
    model = RecordingModel()
    out = resegment_batch(model, [image], [cams], 2, Compute(CPU, canvas=True), feedback="output")[0]
    assert out.shape == (2, 2, 5, 7)
    np.testing.assert_allclose(out[0], 1 / (1 + np.exp(-(2 * cams.astype(np.float64) - 1))), atol=1e-5)
    cue = model.calls[0][1][:, 0].numpy()
    assert cue.shape == (2, 16, 16) and not cue[:, 5:].any() and not cue[:, :, 7:].any()
    np.testing.assert_allclose(cue[:, :5, :7], cams, atol=0)
    np.testing.assert_allclose(model.calls[1][1][:, 0, :5, :7].numpy(), out[0], atol=1e-6)
    x = model.calls[0][0]
    assert x.shape == (2, 3, 16, 16) and x[:, :, 5:].abs().max() == 0
    torch.testing.assert_close(x[1, :, :5, :7], normalize(image))


def test_resegment_image_no_classes_and_real_model():
    out = resegment_image(RecordingModel(), np.zeros((4, 6, 3), np.uint8), np.zeros((0, 4, 6), np.float32), 2, CPU)
    assert out.shape == (2, 0, 4, 6)
    torch.manual_seed(0)
    model = Segmenter().eval()
    rng = np.random.default_rng(1)
    out = resegment_image(model, rng.integers(0, 256, (19, 23, 3), dtype=np.uint8),
                          rng.random((3, 19, 23)).astype(np.float32), 2, CPU)
    assert out.shape == (2, 3, 19, 23) and out.min() >= 0 and out.max() <= 1


# ---------------------------------------------------------------- training and the stage on the tiny demo


@pytest.fixture(scope="module")
def stage(tiny, tmp_path_factory):
    """CAM net -> CAMs of the COCO split and of the train split -> segmenter on CAM cues."""
    d = tmp_path_factory.mktemp("stage")
    train_cam(tiny["image_paths"], tiny["labels"], CLASSES, d / "cam.pt", seed=0, **FAST)
    coco = tiny["coco"]
    extract_cams(d / "cam.pt", {i: coco.image_path(i) for i in coco.ids}, {i: coco.labels(i) for i in coco.ids},
                 coco.ids, CLASSES, d / "cams_coco.h5", device="cpu")
    half = len(tiny["ids"]) // 2
    shards = [d / "cams_train_0.h5", d / "cams_train_1.h5"]
    for path, ids in zip(shards, (tiny["ids"][:half], tiny["ids"][half:])):
        extract_cams(d / "cam.pt", tiny["image_paths"], tiny["labels"], ids, CLASSES, path, device="cpu")
    summary = train_segmenter(coco, [d / "cams_coco.h5"], CLASSES, d / "seg.pt", seed=5, width=16, **FAST)
    return {"dir": d, "cam_shards": shards, "seg": d / "seg.pt", "summary": summary}


def test_cueset_degraded(tiny):
    coco = tiny["coco"]
    data = CueSet(coco, None, crop=32, scale_range=(0.7, 1.3), seed=0)
    assert len(data) == sum(len(coco.labels(i)) for i in coco.ids)
    image, cue, target = data[0]
    assert image.shape == (3, 32, 32) and cue.shape == (1, 32, 32) and target.shape == (32, 32)
    assert target.dtype == torch.long
    assert set(target.unique().tolist()) <= {0, 1, 255}
    assert cue.min() >= 0 and cue.max() <= 1 + 1e-6


def test_cueset_refuses_incomplete_store(tiny, stage):
    with ShardedStore([stage["cam_shards"][0]], kind="cam", class_names=CLASSES) as cams, \
            pytest.raises(ValueError, match="lacks"):
        CueSet(tiny["coco"], cams, 32, (0.7, 1.3), 0)


def test_train_segmenter_checkpoint(stage):
    payload = torch.load(stage["seg"], map_location="cpu", weights_only=True)
    assert payload["kind"] == "segmenter" and payload["meta"]["cue"] == "cam"
    assert payload["meta"]["second_cues"] == ["perturbed_mask"] and payload["meta"]["consistency"] == 1.0
    assert stage["summary"]["width"] == 16 and np.isfinite(stage["summary"]["loss_per_epoch"][0])
    assert payload["meta"]["feedback"] == "cam_mean"
    model, feedback = load_segmenter(stage["seg"], CLASSES, CPU)
    assert isinstance(model, Segmenter) and not model.training and feedback == "cam_mean"


def test_segmenter_from_before_feedback_rounds_feeds_its_output(tmp_path):
    """Checkpoints written before `feedback` existed were trained for the output as the next cue."""
    save_checkpoint(tmp_path / "old.pt", Segmenter(width=16), "segmenter",
                    {"class_names": CLASSES, "backbone": "small", "output_stride": 16, "width": 16})
    assert load_segmenter(tmp_path / "old.pt", CLASSES, CPU)[1] == "output"


def test_train_segmenter_deterministic_degraded(tiny, tmp_path):
    a_path, b_path = tmp_path / "a.pt", tmp_path / "b.pt"
    sa = train_segmenter(tiny["coco"], None, CLASSES, a_path, seed=1, width=16, **FAST)
    train_segmenter(tiny["coco"], None, CLASSES, b_path, seed=1, width=16, **FAST)
    assert sa["cue"] == "degraded_gt"
    a = torch.load(a_path, weights_only=True)["state_dict"]
    b = torch.load(b_path, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    train_segmenter(tiny["coco"], None, CLASSES, tmp_path / "c.pt", seed=2, width=16, **FAST)
    c = torch.load(tmp_path / "c.pt", weights_only=True)["state_dict"]
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())  # the seed is used


def test_train_segmenter_learns(tiny, tmp_path):
    """A trainer must be seen to learn: Dice + BCE on the tiny external set falls clearly in 20 epochs
    (random crops of every (image, class) pair keep it from collapsing to zero; a frozen model stays at
    its first-epoch loss within a few percent)."""
    summary = train_segmenter(tiny["coco"], None, CLASSES, tmp_path / "s.pt", seed=0, width=16, crop=32,
                              batch_size=4, epochs=20, lr=3e-3, scale_range=(1.0, 1.0), device="cpu")
    losses = summary["loss_per_epoch"]
    assert np.mean(losses[-3:]) < 0.85 * losses[0], losses


def test_resegment_and_export(tiny, stage, tmp_path):
    probs = []
    for n, shard in enumerate(stage["cam_shards"]):
        out = tmp_path / f"prob_{n}.h5"
        resegment(stage["seg"], shard, tiny["image_paths"], CLASSES, out, rounds=2, device="cpu")
        probs.append(out)
    with StoreReader(probs[0], kind="prob", class_names=CLASSES) as r, \
            StoreReader(stage["cam_shards"][0], kind="cam") as cams:
        assert r.ids == cams.ids
        for i in r.ids:
            maps, classes = r.read(i)
            rounds = r.read_extra(i, "rounds")
            assert list(classes) == list(cams.read(i)[1])
            assert rounds.shape == (2, *maps.shape)
            np.testing.assert_allclose(rounds[-1], maps, atol=1e-3)
            assert maps.min() >= 0 and maps.max() <= 1
    n = export_masks(probs, CLASSES, tmp_path / "masks", bg_score=0.5, band=0.1)
    assert n == len(tiny["ids"])
    pngs = sorted((tmp_path / "masks").iterdir())
    assert [p.stem for p in pngs] == sorted(tiny["ids"])
    for p in pngs:
        with Image.open(p) as img:
            assert img.mode == "P"
        mask = read_mask(p, K, image_size(tiny["image_paths"][p.stem]))
        assert set(np.unique(mask).tolist()) <= set(range(K)) | {255}
        # only the image's present classes can appear
        assert set(np.unique(mask).tolist()) <= {0, 255, *tiny["labels"][p.stem]}
    assert not (tmp_path / "masks.tmp").exists()


def test_resegment_single_round_keeps_no_rounds(tiny, stage, tmp_path):
    out = tmp_path / "p.h5"
    resegment(stage["seg"], stage["cam_shards"][1], tiny["image_paths"], CLASSES, out, rounds=1, device="cpu")
    with StoreReader(out) as r:
        assert r.read_extra(r.ids[0], "rounds") is None
    with pytest.raises(ValueError, match="rounds"):
        resegment(stage["seg"], stage["cam_shards"][1], tiny["image_paths"], CLASSES, tmp_path / "q.h5", rounds=0)


def test_resegment_refuses_other_classes(tiny, stage, tmp_path):
    other = CLASSES[:-1] + ["yak"]
    with pytest.raises(ValueError, match="yak"):
        resegment(stage["seg"], stage["cam_shards"][0], tiny["image_paths"], other, tmp_path / "p.h5", device="cpu")
    assert not (tmp_path / "p.h5").exists()


def test_resegment_feedback_overrides_the_checkpoints_rule(tiny, stage, tmp_path, monkeypatch):
    """`feedback` replaces the rule the checkpoint was trained for (cam_mean here): round 1 is the same
    under every rule, round 2 under `running_mean` is the mean of round 1 and cam_mean's round 2."""
    shard, used = stage["cam_shards"][0], []
    real = reseg_module.resegment_batch
    monkeypatch.setattr(reseg_module, "resegment_batch", lambda *a, **kw: used.append(kw["feedback"]) or real(*a, **kw))
    rounds = {}
    for rule in (None, "running_mean"):
        out = tmp_path / f"{rule}.h5"
        resegment(stage["seg"], shard, tiny["image_paths"], CLASSES, out, rounds=2, feedback=rule, device="cpu")
        with StoreReader(out, kind="prob", class_names=CLASSES) as r:
            rounds[rule] = {i: r.read_extra(i, "rounds") for i in r.ids}
    assert set(used) == {"cam_mean", "running_mean"} and used[0] == "cam_mean"
    for i, trained in rounds[None].items():
        damped = rounds["running_mean"][i]
        np.testing.assert_allclose(damped[0], trained[0], atol=1e-3)
        np.testing.assert_allclose(damped[1], (trained[0] + trained[1]) / 2, atol=2e-3)
    with pytest.raises(ValueError, match="unknown feedback 'mean'"):
        resegment(stage["seg"], shard, tiny["image_paths"], CLASSES, tmp_path / "x.h5", feedback="mean", device="cpu")
    assert not (tmp_path / "x.h5").exists()
