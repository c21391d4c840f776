"""config/voc12_coco.yaml itself, with its real models, on images at the real datasets' sizes, end to end.

The tree (tests/workflow/paper_tree.py, demo preset `real`) is laid out and named like VOCdevkit/VOC2012 +
SegmentationClassAug + COCO train2017, with ten VOC sizes (500x375, 375x500, 500x333, 333x500, 500x281, ...)
and four COCO sizes (640x480, 480x640, 640x427, 427x640), COCO masks as polygons, RLE and uncompressed RLE.
Overridden: paths, `device: cpu`, `weights: null` (offline), one epoch and training batches of 2 (and, outside
the config, Snakemake's --set-threads: one thread per job, two jobs at a time on 2 cores).
Everything else is the paper's: ResNet-50 CAMs at 4 scales + flip, `inference.canvas: true` with batches of 16, 8 shards,
the ResNet-101 DeepLabv3+ segmenter on RGB + CAM at crop 448 with two passes, three resegmentation rounds
with flip at max_side 640, the ResNet-101 DeepLab at crop 321 with poly SGD. Random initialisation makes the
mIoU meaningless, so formats and completeness are checked, not quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from PIL import Image

from locseg.data.voc import VOC_CLASSES
from tests.workflow.conftest import REPO
from tests.workflow.paper_tree import CLASS_MAP, OFFLINE, build_tree, data_paths, run_snakemake

pytestmark = [pytest.mark.slow, pytest.mark.paper]

VOC_LABELS = set(CLASS_MAP.values())
METRIC_KEYS = {"miou", "pixel_acc", "mean_acc", "fw_iou", "per_class", "ignored_frac", "split", "n_images",
               "confusion"}


def _overrides(root: Path) -> dict:
    training = {"weights": None, "epochs": 1, "batch_size": 2}
    return {"device": "cpu", **data_paths(root), **{stage: dict(training) for stage in ("cam", "segmenter", "deeplab")}}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_tree")
    splits = build_tree(root, size="real", n_train=1)  # train is re-extracted and resegmented: keep it short
    workdir = tmp_path_factory.mktemp("real_run")
    override = workdir / "cpu_overrides.yaml"
    override.write_text(yaml.safe_dump(_overrides(root)))
    # One thread per job, so two jobs share the 2 cores (with device: cpu no job holds the one-GPU cap of
    # profiles/default): with a job's threads split between the model and DataLoader workers, its model would
    # run on one thread while the worker idles.
    one_thread = [f"{rule}=1" for rule in ("train_cam", "extract_cams", "train_segmenter", "resegment",
                                           "train_deeplab", "evaluate_deeplab")]
    run_snakemake(workdir, "--set-threads", *one_thread,
                  configs=[REPO / "config/voc12_coco.yaml", override], env=OFFLINE)
    return workdir, root, splits


def _image_size(root: Path, image_id: str) -> tuple[int, int]:
    with Image.open(root / f"VOCdevkit/VOC2012/JPEGImages/{image_id}.jpg") as img:
        return img.height, img.width


def test_the_tree_has_the_real_sizes_and_mask_encodings(real_run):
    _, root, splits = real_run
    voc = {_image_size(root, i) for ids in splits.values() for i in ids}
    assert len(voc) >= 5 and any(h > w for h, w in voc) and any(w > h for h, w in voc), voc
    data = json.loads((root / "coco/annotations/instances_train2017.json").read_text())
    coco = {(img["height"], img["width"]) for img in data["images"]}
    assert {(480, 640), (640, 480), (427, 640)} <= coco
    kinds = {"polygon" if isinstance(a["segmentation"], list) else
             "rle" if isinstance(a["segmentation"]["counts"], str) else "uncompressed rle" for a in data["annotations"]}
    assert kinds == {"polygon", "rle", "uncompressed rle"}


def test_the_paper_models_ran(real_run):
    import torch

    workdir, _, _ = real_run
    backbones = {name: torch.load(workdir / f"results/models/{name}.pt", weights_only=True)["meta"]["backbone"]
                 for name in ("cam", "segmenter", "deeplab_pseudo", "deeplab_gt")}
    assert backbones == {"cam": "resnet50", "segmenter": "resnet101", "deeplab_pseudo": "resnet101",
                         "deeplab_gt": "resnet101"}


def test_reaches_the_report_and_leaves_nothing_half_written(real_run):
    workdir, _, _ = real_run
    for rel in ("results/report.html", "results/report.md", "results/eval/supervision_gap_val.json"):
        assert (workdir / rel).is_file(), rel
    assert not list(workdir.glob("results/**/*.tmp"))
    assert "resnet101" in (workdir / "results/report.md").read_text()


def test_masks_are_palette_pngs_at_image_size(real_run):
    workdir, root, splits = real_run
    for split in ("train_aug", "train"):
        assert sorted(p.stem for p in (workdir / f"results/masks/{split}").glob("*.png")) == sorted(splits[split])
        for image_id in splits[split]:
            with Image.open(workdir / f"results/masks/{split}/{image_id}.png") as img:
                assert img.mode == "P" and img.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
                mask = np.asarray(img)
            assert mask.shape == _image_size(root, image_id), image_id
            assert set(np.unique(mask).tolist()) <= VOC_LABELS


def _store_groups(workdir: Path, stage: str, split: str) -> dict[str, h5py.Group]:
    groups = {}
    for path in sorted((workdir / f"results/{stage}/{split}").glob("*.h5")):
        f = h5py.File(path, "r")
        assert f.attrs["format"] == "locseg.store" and tuple(f.attrs["class_names"]) == tuple(VOC_CLASSES)
        for key in f:
            if not key.startswith("_"):
                assert key not in groups, f"{key} in two shards"
                groups[key] = f[key]
    return groups


@pytest.mark.parametrize("stage, split", [("cams", "train_aug"), ("cams", "train"), ("cams", "coco"),
                                          ("reseg", "train_aug"), ("reseg", "train")])
def test_stores_are_complete_with_maps_at_image_size(real_run, stage, split):
    workdir, root, splits = real_run
    assert len(list((workdir / f"results/{stage}/{split}").glob("*.h5"))) == 8  # the config's 8 shards
    groups = _store_groups(workdir, stage, split)
    expected = (workdir / f"results/splits/{split}.txt").read_text().split()
    assert sorted(groups) == sorted(expected) and expected
    for image_id, g in groups.items():
        maps = g["maps"][()]
        assert maps.dtype == np.float16 and np.isfinite(maps).all()
        assert maps.min() >= 0 and maps.max() <= 1
        h, w = int(g.attrs["height"]), int(g.attrs["width"])
        assert maps.shape[-2:] == (h, w)
        if split != "coco":
            assert (h, w) == _image_size(root, image_id)
            labels = set(np.unique(np.asarray(Image.open(
                root / f"VOCdevkit/VOC2012/SegmentationClassAug/{image_id}.png"))).tolist()) - {0, 255}
            assert sorted(g["classes"][()].tolist()) == sorted(labels), image_id


def test_canvas_batches_mixed_sizes(real_run):
    """Shard 000 of train_aug holds a 500x375 and a 500x333 image: with canvas they run as one batch."""
    workdir, root, splits = real_run
    ids = splits["train_aug"][0::8]
    assert {_image_size(root, i) for i in ids} == {(375, 500), (333, 500)}
    log = (workdir / "results/logs/extract_cams/train_aug/000.log").read_text()
    assert "2.00 images per batch" in log, log[-600:]


@pytest.mark.parametrize("rel, split", [("eval/cams_train.json", "train"), ("eval/masks_train.json", "train"),
                                        ("eval/deeplab_pseudo_val.json", "val"), ("eval/deeplab_gt_val.json", "val")])
def test_metrics_jsons_are_valid(real_run, rel, split):
    workdir, _, splits = real_run
    result = json.loads((workdir / "results" / rel).read_text())
    assert METRIC_KEYS <= set(result)
    assert result["split"] == split and result["n_images"] == len(splits[split])
    assert set(result["per_class"]) == set(VOC_CLASSES)
    confusion = np.asarray(result["confusion"])  # GT rows, prediction columns and a last one for predicted 255
    assert confusion.shape == (21, 22) and confusion.sum() > 0
    for key in ("miou", "pixel_acc", "mean_acc", "fw_iou", "ignored_frac"):
        assert 0 <= result[key] <= 1, key
