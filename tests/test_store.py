"""Tests for the HDF5 CAM / probability store (locseg/store.py)."""

from __future__ import annotations

import errno
import pickle
import subprocess
import sys
import tracemalloc

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from locseg import store as st
from locseg.fsutil import DiskFull
from locseg.store import (FORMAT, VERSION, ShardedStore, StoreReader, StoreWriter, export_npy, file_sha256,
                          import_npy)

NAMES = ["background", "cat", "dog", "car", "person"]
# The documented precision, written out here rather than imported from the code under test: values are
# rounded to a 1/1024 grid (error <= 1/2048), and every grid point in [0, 1] is exact in float16.
F16_TOL = 1 / 2048 + 1e-7


def cam_like(rng, k, h, w):
    """Smooth CAM-like maps: ReLU of a spatially correlated stride-16 map, bilinearly upsampled,
    max-normalised per class (about a quarter of the pixels end up exactly 0, as ReLU'd CAMs do)."""
    low = torch.from_numpy(rng.normal(size=(1, k, h // 16 + 1, w // 16 + 1)).astype(np.float32))
    low = F.avg_pool2d(F.pad(low, (1, 1, 1, 1), mode="replicate"), 3, 1)
    up = F.interpolate(torch.relu(low), size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
    up /= up.reshape(k, -1).max(1)[:, None, None] + 1e-5
    return up


def make_images(seed=0, n=5, k_max=3):
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        k = int(rng.integers(1, k_max + 1))
        h, w = int(rng.integers(20, 60)), int(rng.integers(20, 60))
        classes = np.sort(rng.choice(np.arange(1, len(NAMES)), size=k, replace=False))
        out[f"img_{9 - i}"] = (cam_like(rng, k, h, w), classes)  # names sort opposite to insertion
    return out


def write_store(path, images, **kw):
    kw.setdefault("kind", "cam")
    kw.setdefault("class_names", NAMES)
    with StoreWriter(path, **kw) as w:
        for iid, (maps, classes) in images.items():
            w.write(iid, maps, classes)


def test_round_trip_values_classes_attrs_and_order(tmp_path):
    images = make_images()
    p = tmp_path / "s.h5"
    write_store(p, images, scales=(1.0, 0.5), model_sha256="ab" * 32, config={"cam": {"scales": [1.0, 0.5]}})
    with StoreReader(p, kind="cam", class_names=NAMES) as r:
        assert r.ids == list(images)  # insertion order, not HDF5's alphabetical order
        assert list(r) == list(images) and len(r) == len(images)
        assert "img_9" in r and "nope" not in r
        assert r.attrs == {"format": FORMAT, "version": VERSION, "kind": "cam", "class_names": NAMES,
                           "scales": [1.0, 0.5], "model_sha256": "ab" * 32,
                           "config": {"cam": {"scales": [1.0, 0.5]}}, "rounds": 0}
        for iid, (maps, classes) in images.items():
            m, c = r.read(iid)
            assert m.dtype == np.float32 and c.dtype == np.int64
            np.testing.assert_array_equal(c, classes)
            np.testing.assert_allclose(m, maps, atol=F16_TOL, rtol=0)
            assert r.size(iid) == maps.shape[1:]
        with pytest.raises(KeyError, match="nope"):
            r.read("nope")


def test_values_are_rounded_to_the_1024_grid_not_truncated(tmp_path):
    """Hand-computed: grid points come back exactly (odd multiples of 1/1024 too, so a coarser grid fails),
    and off-grid values go to the nearest grid point (truncation would give 7/1024 for 7.6/1024)."""
    given = np.array([[[0.0, 1 / 1024, 513 / 1024, 1.0, 7.6 / 1024, 7.4 / 1024, 0.3, 1023.7 / 1024]]],
                     np.float32)
    expected = np.array([[[0.0, 1 / 1024, 513 / 1024, 1.0, 8 / 1024, 7 / 1024, 307 / 1024, 1.0]]], np.float32)
    p = tmp_path / "grid.h5"
    write_store(p, {"x": (given, np.array([1]))})
    with StoreReader(p, kind="cam", class_names=NAMES) as r:
        np.testing.assert_array_equal(r.read("x")[0], expected)


def test_file_layout_with_plain_h5py(tmp_path):
    images = make_images(n=2)
    p = tmp_path / "s.h5"
    with StoreWriter(p, "prob", NAMES, scales=[1.0], config={"a": 1}, rounds=2) as w:
        for iid, (maps, classes) in images.items():
            w.write(iid, maps, classes, extra={"rounds": np.stack([maps, maps * 0.5])})
    with h5py.File(p, "r") as f:
        a = f.attrs
        assert set(a) == {"format", "version", "kind", "class_names", "scales", "model_sha256", "config", "rounds"}
        assert a["rounds"] == 2
        assert a["format"] == "locseg.store" and a["version"] == 1 and a["kind"] == "prob"
        assert list(a["class_names"]) == NAMES and list(a["scales"]) == [1.0]
        assert a["model_sha256"] == "" and a["config"] == '{"a": 1}'
        assert set(f) == set(images) | {"_ids"}
        assert [s.decode() for s in f["_ids"][()]] == list(images)
        for iid, (maps, _) in images.items():
            g = f[iid]
            assert set(g) == {"maps", "classes", "rounds"}
            assert (g.attrs["height"], g.attrs["width"]) == maps.shape[1:]
            assert g["maps"].dtype == np.float16 and g["classes"].dtype == np.int16
            assert g["maps"].shape == maps.shape
            assert g["maps"].chunks == (1,) + maps.shape[1:]
            assert g["maps"].compression == "gzip" and g["maps"].shuffle
            assert g["rounds"].dtype == np.float16 and g["rounds"].shape == (2,) + maps.shape
            assert g["rounds"].chunks == (1, 1) + maps.shape[1:] and g["rounds"].compression == "gzip"
    with StoreReader(p) as r:
        iid, (maps, _) = next(iter(images.items()))
        np.testing.assert_allclose(r.read_extra(iid, "rounds")[1], maps * 0.5, atol=F16_TOL, rtol=0)
        assert r.read_extra(iid, "missing") is None


def test_foreign_and_non_hdf5_files_refused(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match=r"foreign\.h5.*not a locseg\.store file"):
        StoreReader(foreign)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["format"] = "something.else"
    with pytest.raises(ValueError, match="something.else"):
        StoreReader(other)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match=r"text\.h5.*not a readable HDF5"):
        StoreReader(text)
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        StoreReader(tmp_path / "missing.h5")


def test_wrong_version_refused(tmp_path):
    p = tmp_path / "s.h5"
    write_store(p, make_images(n=1))
    with h5py.File(p, "a") as f:
        f.attrs["version"] = 2
    with pytest.raises(ValueError, match=r"s\.h5.*version 2 found, version 1 expected"):
        StoreReader(p)


def test_kind_and_class_names_mismatch_refused(tmp_path):
    p = tmp_path / "s.h5"
    write_store(p, make_images(n=1))
    with pytest.raises(ValueError, match=r"s\.h5.*kind is 'cam', expected 'prob'"):
        StoreReader(p, kind="prob")
    other = NAMES[:-1] + ["bus"]
    with pytest.raises(ValueError, match=r"s\.h5.*class_names differ.*person.*bus"):
        StoreReader(p, class_names=other)


def test_exception_inside_writer_leaves_nothing(tmp_path):
    p = tmp_path / "s.h5"
    images = make_images(n=2)
    with pytest.raises(RuntimeError, match="boom"):
        with StoreWriter(p, "cam", NAMES) as w:
            iid, (maps, classes) = next(iter(images.items()))
            w.write(iid, maps, classes)
            assert (tmp_path / "s.h5.tmp").exists() and not p.exists()  # only the temporary while writing
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_does_not_replace_existing_store(tmp_path):
    p = tmp_path / "s.h5"
    write_store(p, make_images(n=1))
    before = p.read_bytes()
    with pytest.raises(ValueError):
        with StoreWriter(p, "cam", NAMES) as w:
            w.write("a", np.full((1, 4, 4), 2.0), [1])
    assert p.read_bytes() == before and not (tmp_path / "s.h5.tmp").exists()


def test_write_validation(tmp_path):
    with StoreWriter(tmp_path / "s.h5", "cam", NAMES) as w:
        ok = np.full((2, 4, 5), 0.5, np.float32)
        w.write("a", ok, [1, 2])
        with pytest.raises(ValueError, match="'a'.*duplicate"):
            w.write("a", ok, [1, 2])
        with pytest.raises(ValueError, match=r"outside 1\.\.4"):
            w.write("b", ok, [1, 5])
        with pytest.raises(ValueError, match=r"outside 1\.\.4"):
            w.write("b", ok, [0, 1])  # background never has a map
        with pytest.raises(ValueError, match="repeated"):
            w.write("b", ok, [2, 2])
        with pytest.raises(ValueError, match="2 classes for 1 maps"):
            w.write("b", ok[:1], [1, 2])
        with pytest.raises(ValueError, match=r"\[k, H, W\]"):
            w.write("b", ok[0], [1])
        with pytest.raises(ValueError, match="NaN"):
            w.write("b", np.full((1, 4, 5), np.nan), [1])
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            w.write("b", np.full((1, 4, 5), 1.5), [1])
        with pytest.raises(ValueError, match="not usable"):
            w.write("x/y", ok, [1, 2])
        with pytest.raises(ValueError, match="not usable"):
            w.write("_ids", ok, [1, 2])
        with pytest.raises(ValueError, match="extra 'rounds'"):
            w.write("b", ok, [1, 2], extra={"rounds": np.zeros((2, 3, 3))})
        # tiny float error just outside [0, 1] is clipped, not refused
        w.write("c", np.array([[[-1e-6, 1 + 1e-6]]]), [3])
    with StoreReader(tmp_path / "s.h5") as r:
        assert r.ids == ["a", "c"]
        np.testing.assert_array_equal(r.read("c")[0], [[[0.0, 1.0]]])
    with pytest.raises(ValueError, match="kind"):
        StoreWriter(tmp_path / "t.h5", "mask", NAMES)


def test_image_without_classes(tmp_path):
    p = tmp_path / "s.h5"
    with StoreWriter(p, "prob", NAMES) as w:
        w.write("empty", np.zeros((0, 7, 9), np.float32), [], extra={"rounds": np.zeros((3, 0, 7, 9))})
    with StoreReader(p) as r:
        m, c = r.read("empty")
        assert m.shape == (0, 7, 9) and c.shape == (0,) and c.dtype == np.int64
        assert r.size("empty") == (7, 9)
        assert r.read_extra("empty", "rounds").shape == (3, 0, 7, 9)


def test_sharded_store_equals_one_store(tmp_path):
    images = make_images(n=7)
    items = list(images.items())
    write_store(tmp_path / "all.h5", images)
    shards = [tmp_path / f"{i}.h5" for i in range(3)]
    for i, p in enumerate(shards):
        write_store(p, dict(items[i::3]))
    with StoreReader(tmp_path / "all.h5") as one, ShardedStore(shards, kind="cam", class_names=NAMES) as many:
        assert sorted(many.ids) == sorted(one.ids) and len(many) == len(one)
        assert many.ids == [iid for i in range(3) for iid, _ in items[i::3]]
        assert many.attrs == one.attrs
        for iid in one:
            assert iid in many
            m1, c1 = one.read(iid)
            m2, c2 = many.read(iid)
            np.testing.assert_array_equal(m1, m2)
            np.testing.assert_array_equal(c1, c2)
            assert one.size(iid) == many.size(iid)
        with pytest.raises(KeyError, match="nope"):
            many.read("nope")


def test_sharded_store_refuses_overlap_and_mismatch(tmp_path):
    images = make_images(n=2)
    write_store(tmp_path / "a.h5", images)
    write_store(tmp_path / "b.h5", dict(list(images.items())[:1]))
    with pytest.raises(ValueError, match=r"in two shards: .*a\.h5 and .*b\.h5"):
        ShardedStore([tmp_path / "a.h5", tmp_path / "b.h5"])
    write_store(tmp_path / "c.h5", {"zz": (np.zeros((1, 3, 3)), [1])}, kind="prob")
    with pytest.raises(ValueError, match=r"kind differs between shards: .*a\.h5.*c\.h5"):
        ShardedStore([tmp_path / "a.h5", tmp_path / "c.h5"])


def _irn_dir(tmp_path, images):
    d = tmp_path / "irn"
    d.mkdir()
    for iid, (maps, classes) in images.items():
        strided = torch.from_numpy(maps[:, ::4, ::4].copy())
        np.save(d / f"{iid}.npy", {"keys": classes - 1, "cam": strided, "high_res": maps.astype(np.float32)})
    return d


def _seam_dir(tmp_path, images):
    d = tmp_path / "seam"
    d.mkdir()
    for iid, (maps, classes) in images.items():
        np.save(d / f"{iid}.npy", {int(c) - 1: m.astype(np.float32) for c, m in zip(classes, maps)})
    return d


def test_irn_import_export_round_trip(tmp_path):
    images = make_images(n=4)
    src = _irn_dir(tmp_path, images)
    store_path = tmp_path / "cams.h5"
    import_npy(src, list(images), store_path, NAMES, allow_pickle=True, config={"source": "irn"})
    with StoreReader(store_path, kind="cam") as r:
        assert r.ids == list(images) and r.attrs["config"] == {"source": "irn"}
    out = tmp_path / "out"
    export_npy([store_path], out, style="irn")
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{i}.npy" for i in images)
    for iid in images:
        a = np.load(src / f"{iid}.npy", allow_pickle=True).item()
        b = np.load(out / f"{iid}.npy", allow_pickle=True).item()
        assert set(b) == {"keys", "high_res"}
        np.testing.assert_array_equal(b["keys"], a["keys"])
        assert b["keys"].dtype == np.int64 and b["high_res"].dtype == np.float32
        np.testing.assert_allclose(b["high_res"], a["high_res"], atol=F16_TOL, rtol=0)


def test_seam_import_export_round_trip(tmp_path):
    images = make_images(n=4)
    src = _seam_dir(tmp_path, images)
    store_path = tmp_path / "cams.h5"
    import_npy(src, list(images), store_path, NAMES, allow_pickle=True)
    out = tmp_path / "out"
    export_npy([store_path], out, style="seam")
    for iid in images:
        a = np.load(src / f"{iid}.npy", allow_pickle=True).item()
        b = np.load(out / f"{iid}.npy", allow_pickle=True).item()
        assert sorted(b) == sorted(a) and all(type(k) is int for k in b)
        for k in a:
            assert b[k].dtype == np.float32
            np.testing.assert_allclose(b[k], a[k], atol=F16_TOL, rtol=0)


def test_import_normalises_raw_cams(tmp_path):
    d = tmp_path / "seam"
    d.mkdir()
    raw = np.array([[[-2.0, 0.0], [3.0, 6.0]]], np.float32)
    np.save(d / "x.npy", {0: raw[0]})
    import_npy(d, ["x"], tmp_path / "s.h5", NAMES, allow_pickle=True)
    with StoreReader(tmp_path / "s.h5") as r:
        np.testing.assert_allclose(r.read("x")[0], [[[0, 0], [0.5, 1.0]]], atol=F16_TOL)


def test_import_refusals(tmp_path):
    images = make_images(n=2)
    src = _irn_dir(tmp_path, images)
    with pytest.raises(ValueError, match="allow_pickle=True"):
        import_npy(src, list(images), tmp_path / "s.h5", NAMES)
    with pytest.raises(FileNotFoundError, match=r"ghost\.npy.*'ghost'"):
        import_npy(src, ["ghost"], tmp_path / "s.h5", NAMES, allow_pickle=True)
    iid = list(images)[0]
    np.save(src / f"{iid}.npy", {"keys": np.array([0]), "cam": torch.zeros(1, 3, 3)})
    with pytest.raises(ValueError, match=rf"{iid}\.npy.*no 'high_res'"):
        import_npy(src, [iid], tmp_path / "s.h5", NAMES, allow_pickle=True)
    np.save(src / f"{iid}.npy", {0: np.zeros((4, 5)), 1: np.zeros((4, 6))})
    with pytest.raises(ValueError, match=rf"{iid}\.npy.*one size"):
        import_npy(src, [iid], tmp_path / "s.h5", NAMES, allow_pickle=True)
    np.save(src / f"{iid}.npy", {"keys": np.array([7]), "high_res": np.zeros((1, 3, 3))})
    with pytest.raises(ValueError, match=rf"{iid}\.npy.*outside 1\.\.4"):
        import_npy(src, [iid], tmp_path / "s.h5", NAMES, allow_pickle=True)
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.tmp").exists()


def test_compressed_size_at_most_quarter_of_float32(tmp_path):
    rng = np.random.default_rng(1)
    images = {f"i{i}": (cam_like(rng, 3, 375, 500), np.array([1, 2, 3])) for i in range(4)}
    npy_bytes = 0
    for iid, (maps, _) in images.items():
        np.save(tmp_path / f"{iid}.npy", maps.astype(np.float32))
        npy_bytes += (tmp_path / f"{iid}.npy").stat().st_size
    write_store(tmp_path / "s.h5", images)
    h5_bytes = (tmp_path / "s.h5").stat().st_size
    ratio = h5_bytes / npy_bytes
    assert ratio <= 0.25, f"store is {ratio:.3f} of float32 .npy bytes ({1 / ratio:.1f}x smaller), expected <= 0.25"


def test_reader_reads_one_image_at_a_time(tmp_path):
    rng = np.random.default_rng(2)
    n, shape = 20, (3, 200, 300)
    p = tmp_path / "s.h5"
    with StoreWriter(p, "prob", NAMES) as w:
        for i in range(n):
            w.write(f"i{i}", rng.random(shape, dtype=np.float32), [1, 2, 3])  # noise: compresses badly
    one_image = int(np.prod(shape)) * 4
    assert p.stat().st_size > 5 * one_image  # the file is much bigger than one decoded image
    tracemalloc.start()
    try:
        r = StoreReader(p)
        _, peak_open = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for iid in r:
            m, c = r.read(iid)
            assert m.shape == shape and list(c) == [1, 2, 3]
            del m
        _, peak_read = tracemalloc.get_traced_memory()
        r.close()
    finally:
        tracemalloc.stop()
    assert peak_open < one_image / 10, f"opening allocated {peak_open} bytes"
    # float16 buffer + float32 copy of one image, never the whole file
    assert peak_read < 2 * one_image, f"reading one image at a time peaked at {peak_read} bytes"


def test_reader_survives_pickling(tmp_path):
    images = make_images(n=2)
    write_store(tmp_path / "s.h5", images)
    with StoreReader(tmp_path / "s.h5") as r:
        r2 = pickle.loads(pickle.dumps(r))
        iid = r.ids[0]
        np.testing.assert_array_equal(r2.read(iid)[0], r.read(iid)[0])
        r2.close()


def _sum_in_child(store, iid):
    return float(store.read(iid)[0].sum())


def test_sharded_store_usable_in_forked_workers(tmp_path):
    """DataLoader workers fork with the store open: each process must use its own HDF5 handle."""
    import multiprocessing as mp
    images = make_images(n=3)
    write_store(tmp_path / "s.h5", images)
    with ShardedStore([tmp_path / "s.h5"]) as store:
        expect = [float(store.read(i)[0].sum()) for i in store.ids]  # handle opened in the parent
        with mp.get_context("fork").Pool(2) as pool:
            got = pool.starmap(_sum_in_child, [(store, i) for i in store.ids])
        assert got == expect
        assert pickle.loads(pickle.dumps(store)).ids == store.ids


def test_file_sha256(tmp_path):
    import hashlib
    p = tmp_path / "m.pt"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)
    p.write_bytes(data)
    assert file_sha256(p) == hashlib.sha256(data).hexdigest()
    assert file_sha256(p, chunk_size=1000) == hashlib.sha256(data).hexdigest()


def test_compression_choice_is_recorded():
    assert st.COMPRESSION == {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    assert "Choice: gzip level 4" in st.__doc__


def test_disk_full_leaves_no_temporary_and_estimates_the_size(tmp_path, monkeypatch):
    """Fault-injected: the third image's write fails with ENOSPC."""
    create, calls = st._create_maps, []

    def fill_up(group, name, data):
        calls.append(name)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        create(group, name, data)

    monkeypatch.setattr(st, "_create_maps", fill_up)
    p = tmp_path / "s.h5"
    with pytest.raises(DiskFull, match=f"no space left on device writing {p}: it needs about .* written when"):
        write_store(p, make_images(n=5), expected=20)
    assert list(tmp_path.iterdir()) == []


_FILL = """
import sys, numpy as np
from locseg.fsutil import DiskFull
from locseg.store import StoreWriter
try:
    with StoreWriter(sys.argv[1], "cam", ["bg", "a", "b"], expected=50) as w:
        for i in range(50):
            w.write(f"im{i}", np.random.default_rng(i).random((2, 40, 40)), [1, 2])
except DiskFull as e:
    print(e)
"""


def test_store_on_a_full_filesystem(tmp_path, small_fs):
    """A real full disk: one DiskFull, no h5py destructor noise, no crash, nothing left on the disk."""
    disk = small_fs(tmp_path / "disk", "32k")
    proc = subprocess.run([sys.executable, "-c", _FILL, str(disk / "s.h5")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith(f"no space left on device writing {disk / 's.h5'}: it needs about")
    assert proc.stderr == ""
    assert list(disk.iterdir()) == []
