"""Batched, streaming CAM extraction and resegmentation (locseg/batching.py and the stages using it).

batch_size 1 must give exactly the per-image results (the workflow tests compare stores byte for byte);
larger batches and DataLoader workers must agree within float rounding; a failing write must raise and
leave no store behind; runs of different image sizes must be handled.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from locseg.batching import BackgroundWriter, buckets, prefetch
from locseg.cam import extract_cams, infer_cams_batch
from locseg.data.transforms import normalize
from locseg.data.voc import read_image
from locseg.models.cam import CamNet
from locseg.models.segmenter import Segmenter
from locseg.reseg import resegment, resegment_batch
from locseg.store import StoreReader, StoreWriter, file_sha256
from locseg.checkpoints import save_checkpoint
from tests.conftest import CLASSES, CPU, K

# Runs of equal sizes (buckets), size changes mid-batch, a lone size, a portrait/landscape pair.
SIZES = [(40, 56)] * 3 + [(56, 40)] * 2 + [(40, 56)] * 5 + [(33, 47)] + [(56, 40)] * 2
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
                    {"class_names": CLASSES, "backbone": "small", "output_stride": 16, "width": 16})
    return {"dir": d, "paths": paths, "labels": labels, "ids": list(paths), "cam": cam, "seg": seg}


def _cams(data, out, **kw):
    extract_cams(data["dir"] / "cam.pt", data["paths"], data["labels"], data["ids"], CLASSES, out,
                 scales=SCALES, flip=True, device="cpu", **kw)
    return out


@pytest.fixture(scope="module")
def cams_b1(data):
    return _cams(data, data["dir"] / "cams_b1.h5")


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


@torch.no_grad()
def _reference_infer_cams(model, image, classes, scales, flip, device):
    h, w = image.shape[:2]
    if not classes:
        return np.zeros((0, h, w), np.float32)
    x = normalize(image).unsqueeze(0).to(device)
    idx = torch.as_tensor([c - 1 for c in classes], device=device)
    total = torch.zeros(len(classes), h, w, device=device)
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                              mode="bilinear", align_corners=False)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)])
        cams = model.cams(xs)[:, idx].float()
        cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        total += cams[0]
    peak = total.flatten(1).max(1).values.view(-1, 1, 1)
    return (total / (peak + 1e-5)).cpu().numpy()


@torch.no_grad()
def _reference_resegment_image(model, image, cams, rounds, device):
    k, h, w = cams.shape
    if k == 0:
        return np.zeros((rounds, 0, h, w), np.float32)
    x = normalize(image).unsqueeze(0).expand(k, -1, -1, -1).to(device)
    cue = torch.from_numpy(cams).unsqueeze(1).to(device)
    out = []
    for _ in range(rounds):
        cue = torch.sigmoid(model(x, cue).float())
        out.append(cue[:, 0])
    return torch.stack(out).cpu().numpy()


# ---------------------------------------------------------------- batch_size 1: exactly as before


def test_extract_cams_batch1_is_byte_identical_to_per_image_loop(data, cams_b1, tmp_path):
    ref = tmp_path / "ref.h5"
    sha = file_sha256(data["dir"] / "cam.pt")
    with StoreWriter(ref, "cam", CLASSES, scales=list(SCALES), model_sha256=sha) as w:
        for i in data["ids"]:
            maps = _reference_infer_cams(data["cam"], read_image(data["paths"][i]), data["labels"][i], SCALES,
                                         True, CPU)
            w.write(i, maps, data["labels"][i])
    assert ref.read_bytes() == cams_b1.read_bytes()


def test_resegment_batch1_is_byte_identical_to_per_image_loop(data, cams_b1, tmp_path):
    out = tmp_path / "prob.h5"
    resegment(data["dir"] / "seg.pt", cams_b1, data["paths"], CLASSES, out, rounds=2, device="cpu")
    ref = tmp_path / "ref.h5"
    with StoreReader(cams_b1) as cams, StoreWriter(ref, "prob", CLASSES, scales=cams.attrs["scales"],
                                                   model_sha256=file_sha256(data["dir"] / "seg.pt")) as w:
        for i in cams.ids:
            maps, classes = cams.read(i)
            probs = _reference_resegment_image(data["seg"], read_image(data["paths"][i]), maps, 2, CPU)
            w.write(i, probs[-1], classes, extra={"rounds": probs})
    assert ref.read_bytes() == out.read_bytes()


# ---------------------------------------------------------------- batched + workers: same within rounding


def test_extract_cams_batched_with_workers_matches_batch1(data, cams_b1, tmp_path):
    out = _cams(data, tmp_path / "cams_b4.h5", batch_size=4, workers=2)
    _assert_close_stores(cams_b1, out, TOL)


@pytest.mark.parametrize("keep_rounds", [True, False])
def test_resegment_batched_with_workers_matches_batch1(data, cams_b1, tmp_path, keep_rounds):
    a, b = tmp_path / "b1.h5", tmp_path / "b4.h5"
    common = {"rounds": 3, "keep_rounds": keep_rounds, "device": "cpu"}
    resegment(data["dir"] / "seg.pt", cams_b1, data["paths"], CLASSES, a, **common)
    resegment(data["dir"] / "seg.pt", cams_b1, data["paths"], CLASSES, b, batch_size=4, workers=2, **common)
    _assert_close_stores(a, b, TOL)
    with StoreReader(b) as r:
        assert (r.read_extra(r.ids[0], "rounds") is None) == (not keep_rounds)


def test_infer_cams_batch_matches_single_images_mixed_classes(data):
    ids = [i for i, s in zip(data["ids"], SIZES) if s == (40, 56)][:4]
    images = [read_image(data["paths"][i]) for i in ids]
    classes = [[1, 3], [], [2], [1, 2, 4]]
    batched = infer_cams_batch(data["cam"].cams, images, classes, SCALES, True, CPU)
    for im, c, got in zip(images, classes, batched):
        want = _reference_infer_cams(data["cam"], im, c, SCALES, True, CPU)
        assert got.shape == want.shape == (len(c), 40, 56) and got.dtype == np.float32
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_resegment_batch_matches_single_images(data):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(3)]
    cams = [rng.random((k, 24, 32)).astype(np.float32) for k in (2, 0, 3)]
    batched = resegment_batch(data["seg"], images, cams, 2, CPU)
    last = resegment_batch(data["seg"], images, cams, 2, CPU, keep_rounds=False)
    for im, c, got, got_last in zip(images, cams, batched, last):
        want = _reference_resegment_image(data["seg"], im, c, 2, CPU)
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
        resegment(data["dir"] / "seg.pt", cams_b1, data["paths"], CLASSES, out, rounds=1, device="cpu",
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
    dev = torch.device("cpu")
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
        assert tuple(seen[0]) == (21, 32)
