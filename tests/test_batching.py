"""Batched, streaming CAM extraction and resegmentation (locseg/batching.py and the stages using it).

With inference.canvas false (the default) images run at their own size, with it true padded to their
canvas; either way batch_size 1 must give exactly the per-image results, in size order (the workflow
tests compare stores byte for byte); workers must not change a byte; larger batches must agree within one
float16 step of the store (2/1024); with canvas, mixed sizes must share batches (they fill on a VOC-like
size mix), without it only identical sizes; the accelerated (CUDA) path must run on CPU; a failing write
must raise and leave no store behind.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from locseg.batching import (
    CPU_PASS_PIXELS,
    BackgroundWriter,
    Compute,
    StageItems,
    buckets,
    canvas,
    prefetch,
    run_size,
    run_stage,
    size_order,
    speed_settings,
)
from locseg.cam import extract_cams, infer_cams_batch
from locseg.data.transforms import normalize
from locseg.data.voc import read_image
from locseg.models.cam import CamNet
from locseg.models.segmenter import Segmenter
from locseg.reseg import resegment, resegment_batch
from locseg.store import StoreReader, StoreWriter, file_sha256
from locseg.checkpoints import save_checkpoint
from tests.conftest import CLASSES, CPU, K

# Runs of equal sizes, different sizes sharing the 48x64 canvas, interleaved with other canvases (portrait
# 64x48, lone ones), an image exactly canvas-sized.
SIZES = [(40, 56)] * 3 + [(70, 56)] + [(56, 40)] * 2 + [(40, 56)] * 5 + [(33, 50), (48, 64), (90, 100)] + [(56, 40)] * 2
SCALES = (1.0, 0.5, 1.5)
# float16 storage on a 1/1024 grid: two stores agree to one grid step when the float32 maps agree to ~1e-6.
TOL = 2 / 1024


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("batching")
    rng = np.random.default_rng(0)
    paths, labels = {}, {}
    for n, (h, w) in enumerate(SIZES):
        image_id = f"img_{n:02d}"
        # smooth-ish content so JPEG keeps structure and CAMs are not flat
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
        paths[image_id] = d / f"{image_id}.jpg"
        img.save(paths[image_id], quality=90)
        k = [1, 2, 3, 0][n % 4]  # 1-3 classes, and some images without any
        labels[image_id] = sorted(rng.choice(np.arange(1, K), size=k, replace=False).tolist())
    torch.manual_seed(0)
    cam = CamNet(K - 1).eval()
    with torch.no_grad():  # random-init CAMs are tiny; make the normalised maps non-trivial
        cam.classifier.weight.mul_(1000)
    save_checkpoint(d / "cam.pt", cam, "cam", {"class_names": CLASSES, "backbone": "small", "output_stride": 16})
    seg = Segmenter(width=16).eval()
    save_checkpoint(d / "seg.pt", seg, "segmenter",
                    {"class_names": CLASSES, "backbone": "small", "output_stride": 16, "width": 16,
                     "feedback": "cam_mean"})
    return {"dir": d, "paths": paths, "labels": labels, "ids": list(paths), "cam": cam, "seg": seg}


def _cams(data, out, stats=False, **kw):
    passes = extract_cams(data["dir"] / "cam.pt", data["paths"], data["labels"], data["ids"], CLASSES, out,
                          scales=SCALES, flip=True, device="cpu", **kw)
    return passes if stats else out


@pytest.fixture(scope="module")
def cams_b1(data):
    """Batch 1 stores, without and with canvas."""
    return {pad: _cams(data, data["dir"] / f"cams_b1_{pad}.h5", canvas=pad) for pad in (False, True)}


def _read_all(path):
    with StoreReader(path) as r:
        return r.ids, {i: (*r.read(i), r.read_extra(i, "rounds")) for i in r.ids}


def _assert_close_stores(a, b, tol):
    ids_a, ma = _read_all(a)
    ids_b, mb = _read_all(b)
    assert ids_a == ids_b
    for i in ids_a:
        (maps_a, cls_a, rounds_a), (maps_b, cls_b, rounds_b) = ma[i], mb[i]
        np.testing.assert_array_equal(cls_a, cls_b)
        assert maps_a.shape == maps_b.shape
        np.testing.assert_allclose(maps_a, maps_b, atol=tol, rtol=0, err_msg=i)
        assert (rounds_a is None) == (rounds_b is None)
        if rounds_a is not None:
            np.testing.assert_allclose(rounds_a, rounds_b, atol=tol, rtol=0, err_msg=i)


# ---------------------------------------------------------------- the per-image code before batching (verbatim)


def _on_canvas(image, pad):
    """Normalised [1,3,H,W], padded bottom/right with zeros to the canvas when `pad` (else no padding)."""
    h, w = image.shape[:2]
    ch, cw = canvas(h, w) if pad else (h, w)
    return F.pad(normalize(image), (0, cw - w, 0, ch - h)).unsqueeze(0)


@torch.no_grad()
def _reference_infer_cams(model, image, classes, scales, flip, device, pad):
    h, w = image.shape[:2]
    if not classes:
        return np.zeros((0, h, w), np.float32)
    x = _on_canvas(image, pad).to(device)
    ch, cw = x.shape[-2:]
    idx = torch.as_tensor([c - 1 for c in classes], device=device)
    total = torch.zeros(len(classes), ch, cw, device=device)
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(ch * s)), max(1, round(cw * s))),
                                              mode="bilinear", align_corners=False)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)])
        cams = model.cams(xs)[:, idx].float()
        cams = F.interpolate(cams, size=(ch, cw), mode="bilinear", align_corners=False)
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        total += cams[0]
    total = total[:, :h, :w]
    peak = total.flatten(1).max(1).values.view(-1, 1, 1)
    return (total / (peak + 1e-5)).cpu().numpy()


@torch.no_grad()
def _reference_resegment_image(model, image, cams, rounds, device, pad):
    k, h, w = cams.shape
    if k == 0:
        return np.zeros((rounds, 0, h, w), np.float32)
    x = _on_canvas(image, pad).expand(k, -1, -1, -1).to(device)
    ch, cw = x.shape[-2:]
    cue = F.pad(torch.from_numpy(cams), (0, cw - w, 0, ch - h)).unsqueeze(1).to(device)
    cam, out = cue, []
    for _ in range(rounds):
        probs = torch.sigmoid(model(x, cue).float())
        cue = (cam + probs) / 2  # the default feedback, cam_mean
        out.append(probs[:, 0, :h, :w])
    return torch.stack(out).cpu().numpy()


def _size_ordered(ids, pad):
    return [ids[j] for j in size_order(SIZES, pad)]


# ---------------------------------------------------------------- batch_size 1: exactly the per-image code


@pytest.mark.parametrize("pad", [False, True])
def test_extract_cams_batch1_is_byte_identical_to_per_image_loop(data, cams_b1, tmp_path, pad):
    ref = tmp_path / "ref.h5"
    sha = file_sha256(data["dir"] / "cam.pt")
    with StoreWriter(ref, "cam", CLASSES, scales=list(SCALES), model_sha256=sha) as w:
        for i in _size_ordered(data["ids"], pad):
            maps = _reference_infer_cams(data["cam"], read_image(data["paths"][i]), data["labels"][i], SCALES,
                                         True, CPU, pad)
            w.write(i, maps, data["labels"][i])
    assert ref.read_bytes() == cams_b1[pad].read_bytes()


@pytest.mark.parametrize("pad", [False, True])
def test_resegment_batch1_is_byte_identical_to_per_image_loop(data, cams_b1, tmp_path, pad):
    out = tmp_path / "prob.h5"
    resegment(data["dir"] / "seg.pt", cams_b1[pad], data["paths"], CLASSES, out, rounds=2, device="cpu", canvas=pad)
    ref = tmp_path / "ref.h5"
    with StoreReader(cams_b1[pad]) as cams, StoreWriter(ref, "prob", CLASSES, scales=cams.attrs["scales"],
                                                        model_sha256=file_sha256(data["dir"] / "seg.pt"),
                                                        rounds=2) as w:
        for i in _size_ordered(data["ids"], pad):
            maps, classes = cams.read(i)
            probs = _reference_resegment_image(data["seg"], read_image(data["paths"][i]), maps, 2, CPU, pad)
            w.write(i, probs[-1], classes, extra={"rounds": probs})
    assert ref.read_bytes() == out.read_bytes()


def test_canvas_changes_the_maps(cams_b1):
    """Padding is a result-changing choice (hence a Snakemake param), not a speed setting."""
    _, plain = _read_all(cams_b1[False])
    _, padded = _read_all(cams_b1[True])
    assert plain.keys() == padded.keys()
    assert any(np.abs(plain[i][0] - padded[i][0]).max() > 0.05 for i in plain if len(plain[i][1]))


# ---------------------------------------------------------------- batched + workers: same within rounding


@pytest.mark.parametrize("pad", [False, True])
def test_extract_cams_workers_change_no_byte(data, cams_b1, tmp_path, pad):
    out = _cams(data, tmp_path / "cams_w2.h5", workers=2, canvas=pad)
    assert out.read_bytes() == cams_b1[pad].read_bytes()


# 12 images with classes. canvas: 8 on the 48x64 canvas (3 batches of 4 with gaps, or 1), 3 on 64x48 (1), 1
# alone; no canvas: 7 of 40x56 (2 batches of 4 with a gap, or 1), 3 of 56x40 (1), 2 alone.
@pytest.mark.parametrize(("pad", "batch_size", "workers", "passes"),
                         [(True, 4, 2, 5), (True, 16, 0, 3), (True, 16, 2, 3), (False, 4, 2, 5), (False, 16, 0, 4)])
def test_extract_cams_batched_matches_batch1(data, cams_b1, tmp_path, pad, batch_size, workers, passes):
    out = tmp_path / "cams.h5"
    stats = _cams(data, out, batch_size=batch_size, workers=workers, canvas=pad, stats=True)
    _assert_close_stores(cams_b1[pad], out, TOL)
    assert stats["images"] == 12 and stats["forward_passes"] == passes


@pytest.mark.parametrize("keep_rounds", [True, False])
@pytest.mark.parametrize(("pad", "batch_size", "workers"), [(True, 4, 2), (True, 16, 0), (True, 1, 2), (False, 16, 2)])
def test_resegment_batched_with_workers_matches_batch1(data, cams_b1, tmp_path, keep_rounds, pad, batch_size,
                                                       workers):
    a, b = tmp_path / "b1.h5", tmp_path / "bn.h5"
    common = {"rounds": 3, "keep_rounds": keep_rounds, "device": "cpu", "canvas": pad}
    resegment(data["dir"] / "seg.pt", cams_b1[pad], data["paths"], CLASSES, a, **common)
    resegment(data["dir"] / "seg.pt", cams_b1[pad], data["paths"], CLASSES, b, batch_size=batch_size,
              workers=workers, **common)
    if batch_size == 1:
        assert a.read_bytes() == b.read_bytes()
    _assert_close_stores(a, b, TOL)
    with StoreReader(b) as r:
        assert (r.read_extra(r.ids[0], "rounds") is None) == (not keep_rounds)


# ---------------------------------------------------------------- the CUDA path (bf16, channels_last) on CPU


def test_extract_cams_accelerated_path_runs_on_cpu(data, cams_b1, tmp_path):
    """uint8 input normalised on the device + channels_last, at fp32: the same maps within rounding; with
    bf16 autocast on top: float32 maps of the same shapes, close to fp32. With canvas, as on a GPU."""
    fp32 = _cams(data, tmp_path / "cl.h5", batch_size=4, channels_last=True, bf16=False, canvas=True)
    _assert_close_stores(cams_b1[True], fp32, TOL)
    bf16 = _cams(data, tmp_path / "bf16.h5", batch_size=4, channels_last=True, bf16=True, canvas=True)
    _assert_close_stores(cams_b1[True], bf16, 0.15)
    _, want = _read_all(fp32)  # the same batches in fp32: differs from batch 1 by float rounding only (~1e-7)
    _, got = _read_all(bf16)
    err = np.mean([np.abs(got[i][0] - want[i][0]).mean() for i in want if len(want[i][1])])
    assert 1e-4 < err < 0.02  # bf16 did run (~1e-3 off fp32; 0 if autocast were off), and stays close


def test_resegment_accelerated_path_runs_on_cpu(data, cams_b1, tmp_path):
    a, b, c = tmp_path / "b1.h5", tmp_path / "cl.h5", tmp_path / "bf16.h5"
    common = {"rounds": 2, "device": "cpu", "canvas": True}
    resegment(data["dir"] / "seg.pt", cams_b1[True], data["paths"], CLASSES, a, **common)
    resegment(data["dir"] / "seg.pt", cams_b1[True], data["paths"], CLASSES, b, batch_size=4, channels_last=True,
              bf16=False, **common)
    resegment(data["dir"] / "seg.pt", cams_b1[True], data["paths"], CLASSES, c, batch_size=4, channels_last=True,
              bf16=True, **common)
    _assert_close_stores(a, b, TOL)
    _assert_close_stores(a, c, 0.05)


def test_accelerated_inputs_match_plain_inputs():
    from locseg.batching import to_input

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(40, 56), (33, 47)]]
    plain = to_input(images, (64, 64), Compute(CPU))
    fast = to_input([torch.from_numpy(im) for im in images], (64, 64), Compute(CPU, bf16=True, channels_last=True))
    assert fast.dtype == plain.dtype == torch.float32 and fast.shape == plain.shape == (2, 3, 64, 64)
    assert fast.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)
    assert plain[1, :, 33:].abs().max() == 0 and plain[1, :, :, 47:].abs().max() == 0  # padding: mean colour


@pytest.mark.parametrize("pad", [False, True])
def test_infer_cams_batch_matches_single_images_mixed_classes(data, pad):
    shared = ((40, 56), (33, 50), (48, 64)) if pad else ((40, 56),)  # one canvas / one size
    ids = [i for i, s in zip(data["ids"], SIZES) if s in shared][-4:]
    images = [read_image(data["paths"][i]) for i in ids]
    assert len({im.shape for im in images}) == (3 if pad else 1)
    classes = [[1, 3], [], [2], [1, 2, 4]]
    batched = infer_cams_batch(data["cam"].cams, images, classes, SCALES, True, Compute(CPU, canvas=pad))
    for im, c, got in zip(images, classes, batched):
        want = _reference_infer_cams(data["cam"], im, c, SCALES, True, CPU, pad)
        assert got.shape == want.shape == (len(c), *im.shape[:2]) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_padding_changes_nothing_for_a_canvas_sized_image(data):
    """A 64x64 image runs as is with canvas: its maps are the unpadded computation's."""
    image = np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got = infer_cams_batch(data["cam"].cams, [image], [[1, 2]], (1.0,), False, Compute(CPU, canvas=True))[0]
    with torch.no_grad():
        raw = F.interpolate(data["cam"].cams(normalize(image)[None])[:, :2], size=(64, 64), mode="bilinear",
                            align_corners=False)[0]
    want = (raw / (raw.flatten(1).max(1).values.view(-1, 1, 1) + 1e-5)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("pad", [False, True])
def test_resegment_batch_matches_single_images(data, pad):
    rng = np.random.default_rng(3)
    shapes = [(24, 32), (30, 20), (20, 28)] if pad else [(24, 32)] * 3  # all on the 32x32 canvas / one size
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in shapes]
    cams = [rng.random((k, *s)).astype(np.float32) for k, s in zip((2, 0, 3), shapes)]
    compute = Compute(CPU, canvas=pad)
    batched = resegment_batch(data["seg"], images, cams, 2, compute)
    last = resegment_batch(data["seg"], images, cams, 2, compute, keep_rounds=False)
    for im, c, got, got_last in zip(images, cams, batched, last):
        want = _reference_resegment_image(data["seg"], im, c, 2, CPU, pad)
        assert got.shape == want.shape and got_last.shape == (1, *c.shape)
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_allclose(got_last[0], want[-1], atol=1e-5)


# ---------------------------------------------------------------- failures leave no store


@pytest.mark.parametrize("workers", [0, 2])
def test_failing_write_raises_and_leaves_no_store(data, tmp_path, workers):
    labels = dict(data["labels"])
    labels[data["ids"][6]] = [2, 2]  # computes fine; the store refuses repeated classes (in the writer thread)
    out = tmp_path / "bad.h5"
    with pytest.raises(ValueError, match="repeated class indices"):
        extract_cams(data["dir"] / "cam.pt", data["paths"], labels, data["ids"], CLASSES, out, device="cpu",
                     batch_size=4, workers=workers)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()
    assert not any(t.name == "locseg-store-writer" for t in threading.enumerate())


def test_failing_write_in_resegment_leaves_no_store(data, cams_b1, tmp_path, monkeypatch):
    calls = []

    def write(self, image_id, *args, **kw):
        calls.append(image_id)
        if len(calls) == 5:
            raise OSError(f"disk full at {image_id}")
        return original(self, image_id, *args, **kw)

    original = StoreWriter.write
    monkeypatch.setattr(StoreWriter, "write", write)
    out = tmp_path / "bad.h5"
    with pytest.raises(OSError, match="disk full"):
        resegment(data["dir"] / "seg.pt", cams_b1[False], data["paths"], CLASSES, out, rounds=1, device="cpu",
                  batch_size=2)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


def test_failing_decode_in_worker_leaves_no_store(data, tmp_path):
    paths = dict(data["paths"])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    paths[data["ids"][3]] = broken
    out = tmp_path / "bad.h5"
    with pytest.raises(Exception, match="broken.jpg"):
        extract_cams(data["dir"] / "cam.pt", paths, data["labels"], data["ids"], CLASSES, out, device="cpu",
                     batch_size=4, workers=2)
    assert not out.exists() and not out.with_name(out.name + ".tmp").exists()


# ---------------------------------------------------------------- the pieces


def test_canvas_and_size_order():
    assert canvas(375, 500) == canvas(333, 500) == (384, 512) and canvas(640, 427) == (640, 448)
    assert canvas(96, 100) == (96, 112) and canvas(130, 64) == (160, 64) and canvas(5, 33) == (16, 48)
    sizes = [(375, 500), (500, 375), (333, 500), (100, 100), (500, 333), (360, 480), (375, 500)]
    # by canvas ((128,128) < (384,512) < (512,384)), input order within a canvas
    assert size_order(sizes, True) == [3, 0, 2, 5, 6, 1, 4]
    # by size, input order within a size
    assert size_order(sizes, False) == [3, 2, 5, 0, 6, 4, 1]


def test_images_of_different_run_sizes_never_share_a_pass():
    images = [np.zeros((40, 56, 3), np.uint8), np.zeros((33, 50, 3), np.uint8)]  # one canvas, two sizes
    cams = [np.zeros((1, 40, 56), np.float32), np.zeros((1, 33, 50), np.float32)]
    seg = Segmenter(width=16).eval()
    with pytest.raises(ValueError, match="do not share one run size"):
        resegment_batch(seg, images, cams, 1, Compute(CPU))
    assert [p.shape for p in resegment_batch(seg, images, cams, 1, Compute(CPU, canvas=True))] == \
        [(1, 1, 40, 56), (1, 1, 33, 50)]


def test_speed_settings_are_inference_without_canvas():
    cfg = {"inference": {"batch_size": 4, "workers": 2, "compile": False, "canvas": True}}
    assert speed_settings(cfg) == {"batch_size": 4, "workers": 2, "compile": False}


def test_cpu_runs_a_batch_as_calls_of_bounded_pixels_cuda_as_one():
    cpu = Compute(torch.device("cpu"), pass_pixels=100)
    assert [len(c) for c in cpu.calls(list(range(9)), (5, 5))] == [4, 4, 1]  # 4 x 25 px fit 100
    assert [len(c) for c in cpu.calls(list(range(3)), (20, 20))] == [1, 1, 1]  # larger than the budget: one each
    assert [len(c) for c in Compute(torch.device("cpu")).calls(list(range(9)), (500, 500))] == [9]
    assert Compute.on(torch.device("cpu")).pass_pixels == CPU_PASS_PIXELS
    assert Compute.on(torch.device("cuda")).pass_pixels is None


class _Items(StageItems):
    def cue(self, image_id, image):
        return image_id, [1] if image_id != "none" else []


def test_run_stage_counts_images_per_batch_and_per_call(tmp_path):
    """Six same-size images and batch 4: batches [4, 2]; with a budget of two images per call, calls
    [2, 2, 2]; an image without classes needs no call's room in the count."""
    paths = {}
    for i in ["a", "b", "c", "none", "e", "f"]:
        paths[i] = tmp_path / f"{i}.jpg"
        Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(paths[i])
    seen, written = [], []

    class Store:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, image_id, maps, classes, extra):
            written.append((image_id, maps, list(classes), extra))

    compute = Compute(torch.device("cpu"), pass_pixels=40)
    passes = run_stage(_Items(list(paths), paths), Store, lambda images, cues: seen.append(cues) or cues, compute,
                       batch_size=4, workers=0, desc="test", to_write=lambda r: (r.upper(), None))
    assert seen == [["a", "b"], ["c", "none"], ["e", "f"]]
    assert written == [(i, i.upper(), [] if i == "none" else [1], None) for i in paths]
    assert passes.summary() == {"images": 5, "batches": 2, "images_per_batch": 2.5, "forward_passes": 3,
                                "images_per_pass": round(5 / 3, 2)}


def test_batches_fill_on_a_voc_like_size_mix():
    """The acceptance mix: >= 30 distinct sizes, the most common <= 40%, 500 images, batch 16, canvas: >= 12
    images per forward pass (bucketing alone: the stages bucket exactly like this)."""
    from collections import Counter

    from benchmarks.bench_inference import size_mix

    sizes = size_mix("voc", 500, np.random.default_rng(0))
    counts = Counter(sizes)
    assert len(counts) >= 30 and counts.most_common(1)[0][1] <= 0.4 * len(sizes)
    order = size_order(sizes, True)
    passes = list(buckets([sizes[i] for i in order], 16, key=lambda s: run_size(*s, True)))
    assert len(sizes) / len(passes) >= 12
    naive = list(buckets(sizes, 16, key=lambda s: s))  # runs of equal sizes in input order, as before
    assert len(sizes) / len(naive) < 2


def test_buckets_are_consecutive_same_key_runs():
    keys = [1, 1, 1, 2, 2, 1, 1, 1, 1, 1, 3]
    got = [[k for _, k in b] for b in buckets(list(enumerate(keys)), 4, key=lambda item: item[1])]
    assert got == [[1, 1, 1], [2, 2], [1, 1, 1, 1], [1], [3]]
    order = [i for b in buckets(list(enumerate(keys)), 4, key=lambda item: item[1]) for i, _ in b]
    assert order == list(range(len(keys)))
    assert [len(b) for b in buckets(range(5), 1, key=lambda _: 0)] == [1] * 5
    with pytest.raises(ValueError):
        next(buckets([1], 0, key=lambda _: 0))


class _Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 7

    def __getitem__(self, i):
        return i, torch.full((2, 2), i * i)


@pytest.mark.parametrize("workers", [0, 2])
def test_prefetch_keeps_order(workers):
    got = [(i, int(t[0, 0])) for i, t in prefetch(_Squares(), workers)]
    assert got == [(i, i * i) for i in range(7)]


def test_background_writer_keeps_order_and_reraises():
    class Sink:
        def __init__(self):
            self.seen = []

        def write(self, image_id, maps, classes, extra=None):
            if image_id == "bad":
                raise ValueError("bad image")
            self.seen.append(image_id)

    sink = Sink()
    with BackgroundWriter(sink, max_pending=2) as w:
        for n in range(20):
            w.write(f"i{n}", None, None)
    assert sink.seen == [f"i{n}" for n in range(20)]

    sink = Sink()
    with pytest.raises(ValueError, match="bad image"), BackgroundWriter(sink, max_pending=1) as w:
        for name in ["a", "bad", *[f"x{n}" for n in range(50)]]:
            w.write(name, None, None)
    assert sink.seen == ["a"]  # nothing written after the failure


def test_inference_scale_caps_the_longer_side():
    from locseg.data.transforms import inference_scale

    assert inference_scale(100, 50, 40) == pytest.approx(0.4)
    assert inference_scale(30, 20, 40) == 1.0 and inference_scale(500, 375, None) == 1.0


def test_max_side_runs_smaller_but_returns_image_size_maps():
    """Both per-image stages honour max_side: same output shapes and range, a different (smaller) run."""
    from locseg.models.cam import CamNet
    from locseg.models.segmenter import Segmenter
    from locseg.reseg import resegment_batch

    torch.manual_seed(0)
    image = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    cam_net, seg = CamNet(4).eval(), Segmenter().eval()
    dev = Compute(torch.device("cpu"))
    with torch.no_grad():
        full = infer_cams_batch(cam_net.cams, [image], [[1, 3]], (1.0, 0.5), True, dev)[0]
        capped = infer_cams_batch(cam_net.cams, [image], [[1, 3]], (1.0, 0.5), True, dev, max_side=32)[0]
        assert full.shape == capped.shape == (2, 60, 90)
        assert 0 <= capped.min() and capped.max() <= 1 and not np.allclose(full, capped)
        probs = resegment_batch(seg, [image], [capped], 2, dev, max_side=32)[0]
        assert probs.shape == (2, 2, 60, 90) and 0 <= probs.min() and probs.max() <= 1
        seen = []
        seg.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[-2:]))
        resegment_batch(seg, [image], [capped], 1, dev, max_side=32)
        assert tuple(seen[0]) == (21, 32)  # the 64x96 canvas, its longer side capped at 32
