"""Segment Anything as the segmenter: prompts from CAMs (hand-computed cases) and SAM inference on a tiny,
randomly initialised SAM (the shapes and the batching; no released weights can be fetched here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from locseg.batching import Compute
from locseg.sam import MASK_GAIN, mask_prompt, peak_points, region_boxes
from tests.conftest import CPU, TINY_SAM


def test_box_of_a_cam_blob():
    cam = torch.zeros(2, 10, 12)
    cam[0, 2:6, 3:8] = 0.9  # rows 2..5, columns 3..7
    cam[0, 8, 0] = 0.2  # below the threshold: not in the box
    boxes, empty = region_boxes(cam, 0.3)
    assert boxes[0].tolist() == [3, 2, 7, 5]  # x0, y0, x1, y1, inclusive
    assert boxes[1].tolist() == [0, 0, 11, 9] and empty.tolist() == [False, True]  # nothing: the whole image


def test_peak_points():
    cam = torch.zeros(1, 10, 12)
    cam[0, 2, 3], cam[0, 2, 4] = 1.0, 0.95  # the second is within the first one's square: never a point
    cam[0, 7, 9] = 0.8
    cam[0, 9, 0] = 0.1  # outside both squares, but below the threshold
    coords, labels = peak_points(cam, 3, threshold=0.5, separation=2)
    assert coords[0, :2].tolist() == [[3, 2], [9, 7]]  # (x, y), highest first
    assert labels[0].tolist() == [1, 1, -1]


def test_the_first_point_is_kept_below_the_threshold():
    cam = torch.full((1, 4, 4), 0.1)
    cam[0, 1, 2] = 0.2
    coords, labels = peak_points(cam, 2, threshold=0.5, separation=1)
    assert coords[0, 0].tolist() == [2, 1] and labels[0].tolist() == [1, -1]


def test_mask_prompt_is_the_cam_in_sams_low_resolution_frame():
    # an 8 x 16 image runs at 32 x 64 in a 64 px SAM: its mask frame is 16 x 16, the CAM fills its top 8 x 16
    cam = torch.zeros(1, 8, 16)
    cam[0, :, :8] = 1.0
    logits = mask_prompt(cam, (32, 64), 64, threshold=0.25)
    assert logits.shape == (1, 1, 16, 16)
    expected = torch.full((16, 16), -0.25 * MASK_GAIN)  # outside the CAM and in the padding: background
    expected[:8, :8] = 0.75 * MASK_GAIN
    assert torch.allclose(logits[0, 0], expected)


def test_mask_prompt_of_a_voc_image_for_the_released_models():
    # 375 x 500 runs at 768 x 1024 in SAM's 1024 px frame: a 192 x 256 CAM, padded to SAM's 256 x 256 logits
    logits = mask_prompt(torch.ones(2, 375, 500), (768, 1024), 1024, threshold=0.3)
    assert logits.shape == (2, 1, 256, 256)
    assert torch.allclose(logits[:, :, :192], torch.tensor(0.7 * MASK_GAIN))
    assert torch.allclose(logits[:, :, 192:], torch.tensor(-0.3 * MASK_GAIN))


# --------------------------------------------------------------------------- inference


@pytest.fixture(scope="module")
def tiny_sam():
    pytest.importorskip("segment_anything")
    from locseg.sam import build_sam

    torch.manual_seed(0)
    return build_sam(TINY_SAM).eval()


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (40, 52, 3), dtype=np.uint8) for _ in range(3)]
    cams = [rng.random((2, 40, 52), dtype=np.float32), np.zeros((0, 40, 52), np.float32),
            rng.random((1, 40, 52), dtype=np.float32)]
    return images, cams


def test_sam_batch_shapes_and_calls(tiny_sam):
    from locseg.sam import sam_batch

    calls = {"encoder": [], "decoder": []}
    hooks = [part.register_forward_hook(lambda m, args, kwargs, out, name=name: calls[name].append(
                 args[0] if args else kwargs["image_embeddings"]), with_kwargs=True)
             for part, name in ((tiny_sam.image_encoder, "encoder"), (tiny_sam.mask_decoder, "decoder"))]
    images, cams = _inputs()
    out = sam_batch(tiny_sam, images, cams, 2, Compute.on(CPU))
    for hook in hooks:
        hook.remove()
    assert [o.shape for o in out] == [(2, 2, 40, 52), (2, 0, 40, 52), (2, 1, 40, 52)]
    assert all(o.dtype == np.float32 and ((o > 0) & (o < 1)).all() for o in out if o.size)
    # one encoder pass for the two images with a class; per image and round one decoder call for all classes
    assert len(calls["encoder"]) == 1 and calls["encoder"][0].shape[0] == 2
    assert [e.shape[0] for e in calls["decoder"]] == [1] * 4  # 2 images x 2 rounds, one embedding each
    last = sam_batch(tiny_sam, images, cams, 2, Compute.on(CPU), keep_rounds=False)
    assert all(np.array_equal(a[-1:], b) for a, b in zip(out, last))


def test_later_rounds_prompt_with_the_previous_mask(tiny_sam):
    from locseg.sam import sam_batch

    images, cams = _inputs()
    for prompts in (["mask"], ["box", "mask"]):
        out = sam_batch(tiny_sam, images, cams, 3, Compute.on(CPU), prompts=prompts)[0]
        assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])
    # points alone: every round has the same prompts, so the same masks
    out = sam_batch(tiny_sam, images, cams, 2, Compute.on(CPU), prompts=["points"], points=2)[0]
    assert np.array_equal(out[0], out[1])


def test_prompt_mix_matters_and_is_checked(tiny_sam):
    from locseg.sam import sam_batch

    images, cams = _inputs()
    outs = [sam_batch(tiny_sam, images, cams, 1, Compute.on(CPU), prompts=p)[0]
            for p in (["box"], ["points"], ["mask"], ["box", "points", "mask"])]
    assert all(not np.allclose(a, b) for i, a in enumerate(outs) for b in outs[i + 1:])
    with pytest.raises(ValueError, match="prompts"):
        sam_batch(tiny_sam, images, cams, 1, Compute.on(CPU), prompts=["scribble"])


def test_bf16_path_runs_on_cpu(tiny_sam):
    """The CUDA path (bf16 autocast) on CPU: float32 probabilities near the fp32 ones."""
    from locseg.sam import sam_batch

    images, cams = _inputs()
    fp32 = sam_batch(tiny_sam, images, cams, 2, Compute.on(CPU))
    bf16 = sam_batch(tiny_sam, images, cams, 2, Compute.on(CPU, bf16=True))
    for a, b in zip(fp32, bf16):
        assert b.dtype == np.float32 and a.shape == b.shape
        assert not a.size or np.abs(a - b).max() < 0.05
    assert any(not np.array_equal(a, b) for a, b in zip(fp32, bf16) if a.size), "bf16 autocast did not run"


def test_saved_sam_loads_with_its_architecture(tiny_sam, tmp_path):
    from locseg.sam import load_sam, save_sam

    path = tmp_path / "tiny.pt"
    save_sam(tiny_sam, TINY_SAM, path)
    loaded = load_sam(path, "vit_b", CPU)  # the file's own architecture wins over `model`
    assert all(torch.equal(a, b) for a, b in zip(tiny_sam.state_dict().values(), loaded.state_dict().values()))
    torch.save(tiny_sam.state_dict(), tmp_path / "bare.pt")  # a bare state dict must be the release's shapes
    with pytest.raises(ValueError, match="bare.pt: not a SAM vit_b checkpoint"):
        load_sam(tmp_path / "bare.pt", "vit_b", CPU)
