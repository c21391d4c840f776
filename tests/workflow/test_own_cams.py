"""Bring your own CAMs (cam.source: import): IRN- and SEAM-style .npy dicts feed the rest of the DAG.

The demo data is generated into the working directory's results/demo beforehand (same seed and size as
rule demo_data), so the .npy files can be made from its GT masks; the DAG must then not regenerate it.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from locseg.data.demo import generate
from tests.workflow.conftest import planned_jobs, snakemake, stored_maps

pytestmark = [pytest.mark.slow]

TARGET = "results/eval/masks_train.json"


def _demo(workdir):
    """The tiny demo tree exactly where (and as) rule demo_data would write it (config.yaml + tiny.yaml)."""
    generate(workdir / "results/demo", seed=0, size="tiny")
    return (workdir / "results/demo/voc/ImageSets/Segmentation/train.txt").read_text().split()


def _gt(workdir, image_id):
    with Image.open(workdir / f"results/demo/voc/SegmentationClass/{image_id}.png") as img:
        return np.asarray(img)


def _fake_cam(gt, c, rng):
    """A CAM-like map for class c: the object blurred, cut to a random part, peak-normalised into [0, 1]."""
    obj = (gt == c).astype(np.float32)
    h, w = obj.shape
    keep = np.ones_like(obj)
    if rng.random() < 0.5:
        keep[:, : w // 2] = 0.3  # partial: one half only weakly
    blurred = gaussian_blur(torch.from_numpy(obj * keep)[None], kernel_size=17, sigma=2.0)[0].numpy()
    m = blurred + 0.02 * rng.random((h, w), dtype=np.float32)
    return (m / m.max()).astype(np.float32)


def _write_npy(workdir, ids, out_dir, style):
    """IRN {"keys", "high_res"} or SEAM {0-based fg index: HxW} dicts from the GT masks; returns what was saved."""
    out_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    saved = {}
    for image_id in ids:
        gt = _gt(workdir, image_id)
        classes = [int(c) for c in np.unique(gt) if c not in (0, 255)]
        assert classes, image_id
        maps = np.stack([_fake_cam(gt, c, rng) for c in classes])
        keys = np.array(classes, dtype=np.int64) - 1
        if style == "irn":
            obj = {"keys": keys, "high_res": maps}
        else:
            obj = {int(k): m for k, m in zip(keys, maps)}
        np.save(out_dir / f"{image_id}.npy", obj, allow_pickle=True)
        saved[image_id] = (maps, np.array(classes, dtype=np.int64))
    return saved


def _import(npy_dir, allow_pickle=True):
    return {"cam": {"source": "import", "import_dir": str(npy_dir), "allow_pickle": allow_pickle}}


@pytest.mark.parametrize("style", ["irn", "seam"])
def test_imported_cams_feed_the_dag(tmp_path, style):
    ids = _demo(tmp_path)
    saved = _write_npy(tmp_path, ids, tmp_path / "npy", style)
    overrides = _import(tmp_path / "npy")

    # The pre-made demo data is used as it is: no demo_data job, and no CAMs extracted for train.
    jobs = planned_jobs(tmp_path, overrides, TARGET)
    assert "demo_data" not in jobs, jobs
    assert jobs["extract_cams"] == 4 and jobs["train_cam"] == 1, jobs  # 2 shards x {train (import), coco}

    snakemake(tmp_path, TARGET, overrides=overrides)

    stored = stored_maps(tmp_path, "train")
    assert sorted(stored) == sorted(ids)
    for image_id, (maps, classes) in saved.items():
        got_maps, got_classes = stored[image_id]
        assert got_maps.dtype == np.float16
        np.testing.assert_array_equal(got_classes, classes)
        assert got_maps.shape == maps.shape
        np.testing.assert_allclose(got_maps.astype(np.float32), maps, rtol=0, atol=1 / 2048 + 1e-7, err_msg=image_id)
    for path in (tmp_path / "results/cams/train").glob("*.h5"):
        with h5py.File(path, "r") as f:
            assert json.loads(f.attrs["config"])["cam"]["source"] == "import"

    masks = sorted(p.stem for p in (tmp_path / "results/masks/train").glob("*.png"))
    assert masks == sorted(ids)
    result = json.loads((tmp_path / TARGET).read_text())
    assert result["split"] == "train" and result["n_images"] == len(ids)
    log = (tmp_path / "results/logs/demo_data.log")
    assert not log.exists(), "the DAG regenerated the demo data"


def test_import_without_allow_pickle_fails_before_any_job(tmp_path):
    ids = _demo(tmp_path)
    _write_npy(tmp_path, ids[:1], tmp_path / "npy", "irn")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*"))
    proc = snakemake(tmp_path, TARGET, overrides=_import(tmp_path / "npy", allow_pickle=False), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "cam.allow_pickle" in out, out[-3000:]
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "results").rglob("*"))
    assert after == before, "a job ran although the config is invalid"
