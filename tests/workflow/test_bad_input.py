"""Bad input stops the DAG at its first step, naming the file; with skip, the image is left out everywhere."""

from __future__ import annotations

import json

import pytest

from locseg.data.coco import CocoSplit
from locseg.data.demo import DEMO_CLASSES, DEMO_COCO_CATEGORY_MAP, generate
from tests.workflow.conftest import snakemake

pytestmark = pytest.mark.slow


def _external_demo(tmp_path):
    """A tiny demo tree outside results/ and the config overrides that point at it."""
    data = tmp_path / "data"
    generate(data, seed=0, size="tiny")
    overrides = {"demo": {"enabled": False},
                 "dataset": {"root": str(data / "voc")},
                 "coco": {"image_dir": str(data / "coco/images"),
                          "annotations": str(data / "coco/annotations/instances_train.json")}}
    return data, overrides


@pytest.fixture()
def broken(tmp_path):
    """The external tiny demo tree with one train image deleted."""
    data, overrides = _external_demo(tmp_path)
    victim = (data / "voc/ImageSets/Segmentation/train.txt").read_text().split()[1]
    (data / "voc/JPEGImages" / f"{victim}.jpg").unlink()
    return tmp_path, victim, overrides


def test_bad_image_fails_before_any_work(broken):
    workdir, victim, overrides = broken
    proc = snakemake(workdir, overrides=overrides, check=False)
    assert proc.returncode != 0
    log = (workdir / "results/logs/validate_dataset.log").read_text()
    assert f"[{victim}]" in log and f"{victim}.jpg: file not found" in log
    assert not (workdir / "results/labels").exists() and not (workdir / "results/models").exists()
    assert not (workdir / "results/splits").exists()


def test_skip_leaves_the_bad_image_out_of_later_stages(broken):
    workdir, victim, overrides = broken
    overrides["on_bad_image"] = "skip"
    snakemake(workdir, "results/labels/train.json", overrides=overrides)
    report = json.loads((workdir / "results/validate/report.json").read_text())
    assert report["skipped"]["train"] == [victim]
    labels = json.loads((workdir / "results/labels/train.json").read_text())["labels"]
    assert victim not in labels and len(labels) == report["kept"]["train"]


@pytest.fixture()
def bad_annotations(tmp_path):
    """The external tiny demo tree with one malformed COCO annotation of each kind; returns (workdir,
    {annotation id: (image id, words of its message)}, overrides)."""
    data, overrides = _external_demo(tmp_path)
    path = data / "coco/annotations/instances_train.json"
    coco = json.loads(path.read_text())
    used = next(c["id"] for c in coco["categories"] if c["name"] in DEMO_COCO_CATEGORY_MAP)
    images = [int(i) for i in CocoSplit(path, data / "coco/images", DEMO_COCO_CATEGORY_MAP, list(DEMO_CLASSES)).ids]
    h, w = next((img["height"], img["width"]) for img in coco["images"] if img["id"] == images[2])
    kinds = {  # annotation id: (image id, category id, segmentation, message words)
        901: (images[0], used, [[1, 1, 9, 1]], "has 2 point(s)"),
        902: (images[1], used, [[1, 1, 9, 1, 9, 9, 1]], "odd number of coordinates"),
        903: (images[2], used, {"size": [h + 1, w], "counts": [(h + 1) * w]}, "differs from the image size"),
        904: (images[3], 4242, [[1, 1, 9, 1, 9, 9]], "unknown category id 4242"),
        905: (99999, used, [[1, 1, 9, 1, 9, 9]], "no image with this id"),
    }
    coco["annotations"] += [{"id": ann_id, "image_id": image_id, "category_id": category, "iscrowd": 0,
                             "area": 1.0, "bbox": [1, 1, 8, 8], "segmentation": seg}
                            for ann_id, (image_id, category, seg, _) in kinds.items()]
    path.write_text(json.dumps(coco))
    return tmp_path, {a: (str(i), words) for a, (i, _, _, words) in kinds.items()}, overrides


def test_every_bad_annotation_is_listed_before_any_cam_job(bad_annotations):
    workdir, kinds, overrides = bad_annotations
    proc = snakemake(workdir, overrides=overrides, check=False)
    assert proc.returncode != 0
    log = (workdir / "results/logs/validate_dataset.log").read_text()
    for ann_id, (image_id, words) in kinds.items():
        line = next(line for line in log.splitlines() if f"annotation {ann_id}, image {image_id}:" in line)
        assert "instances_train.json" in line and words in line, line
    assert not (workdir / "results/models").exists() and not (workdir / "results/cams").exists()


def test_skip_completes_without_the_bad_annotations_images(bad_annotations):
    workdir, kinds, overrides = bad_annotations
    overrides["on_bad_image"] = "skip"
    for stage in ("cam", "segmenter", "deeplab"):
        overrides[stage] = {"epochs": 1}
    snakemake(workdir, overrides=overrides)
    report = json.loads((workdir / "results/validate/report.json").read_text())
    images = {image_id for ann_id, (image_id, _) in kinds.items() if ann_id != 905}
    assert set(report["skipped"]["coco"]) == images
    kept = (workdir / "results/splits/coco.txt").read_text().split()
    assert kept and not images & set(kept)
    md = (workdir / "results/report.md").read_text()
    for ann_id, (image_id, _) in kinds.items():
        assert f"annotation {ann_id}, image {image_id}:" in md
