"""The DAG's first step: each bad input is named (file + problem), fail stops, skip leaves it out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from locseg.data.coco import CocoSplit
from locseg.data.demo import DEMO_CLASSES, DEMO_COCO_CATEGORY_MAP, generate
from locseg.data.voc import VocLayout, read_split
from locseg.validate import gate_splits

K = len(DEMO_CLASSES)


@pytest.fixture()
def tree(tmp_path_factory):
    src = tmp_path_factory.getbasetemp() / "validate_demo"
    if not src.exists():
        generate(src, seed=3, size="tiny")
    dst = tmp_path_factory.mktemp("tree")
    shutil.copytree(src, dst, dirs_exist_ok=True)
    return dst


def _layout(tree):
    return VocLayout(tree / "voc", "JPEGImages", "SegmentationClass", "ImageSets/Segmentation")


def _coco(tree):
    return CocoSplit(tree / "coco/annotations/instances_train.json", tree / "coco/images",
                     DEMO_COCO_CATEGORY_MAP, list(DEMO_CLASSES))


def _break(tree):
    """One of each problem, on distinct train ids; returns {id: words the message must contain}."""
    layout = _layout(tree)
    ids = read_split(layout.split_file("train"))
    missing, rgb, big, bad_value, truncated = ids[:5]
    layout.image_path(missing).unlink()
    mask = np.asarray(Image.open(layout.mask_path(rgb)).convert("RGB"))
    Image.fromarray(mask).save(layout.mask_path(rgb))
    Image.open(layout.mask_path(big)).resize((200, 10)).save(layout.mask_path(big))
    with Image.open(layout.mask_path(bad_value)) as m:
        arr = np.asarray(m).copy()
        pal = m.getpalette()
    arr[0, 0] = 77
    out = Image.fromarray(arr, mode="P")
    out.putpalette(pal)
    out.save(layout.mask_path(bad_value))
    data = layout.image_path(truncated).read_bytes()
    layout.image_path(truncated).write_bytes(data[: len(data) // 2])
    return {missing: ["not found"], rgb: ["colour"], big: ["size"], bad_value: ["77"], truncated: ["truncated", ".jpg"]}


def test_clean_tree_keeps_every_id(tree):
    kept, report = gate_splits(_layout(tree), ["train", "val"], K, _coco(tree), "fail")
    assert kept["train"] == read_split(_layout(tree).split_file("train"))
    assert kept["coco"] == _coco(tree).ids and report["problems"] == []


def test_fail_lists_every_problem_naming_file_and_id(tree):
    expected = _break(tree)
    with pytest.raises(ValueError) as err:
        gate_splits(_layout(tree), ["train", "val"], K, _coco(tree), "fail")
    lines = str(err.value).splitlines()[1:]
    for image_id, words in expected.items():
        line = next((ln for ln in lines if f"[{image_id}]" in ln), None)
        assert line is not None, f"{image_id} not reported"
        assert all(w.lower() in line.lower() for w in words), line


def test_skip_leaves_bad_ids_out_and_reports_them(tree):
    expected = _break(tree)
    kept, report = gate_splits(_layout(tree), ["train", "val"], K, _coco(tree), "skip")
    assert sorted(report["skipped"]["train"]) == sorted(expected)
    assert not set(expected) & set(kept["train"])
    assert len(kept["train"]) == len(read_split(_layout(tree).split_file("train"))) - len(expected)


def test_missing_coco_image_is_named_and_skipped(tree):
    coco = _coco(tree)
    victim = coco.ids[0]
    coco.image_path(victim).unlink()
    kept, report = gate_splits(_layout(tree), ["val"], K, coco, "skip")
    assert report["skipped"]["coco"] == [victim] and victim not in kept["coco"]
    assert any(f"[{victim}]" in p and "not found" in p for p in report["problems"])


def test_odd_image_modes_are_converted_not_rejected(tree):
    layout = _layout(tree)
    ids = read_split(layout.split_file("val"))
    for image_id, mode in zip(ids, ["L", "CMYK", "I;16"]):
        with Image.open(layout.image_path(image_id)) as img:
            converted = img.convert("L").convert("I;16") if mode == "I;16" else img.convert(mode)
        converted.save(layout.image_path(image_id), format="PNG" if mode == "I;16" else "JPEG")
    kept, report = gate_splits(layout, ["val"], K, None, "fail")
    assert kept["val"] == ids and report["problems"] == []


def test_a_split_left_empty_always_fails(tree):
    layout = _layout(tree)
    for image_id in read_split(layout.split_file("val")):
        layout.image_path(image_id).unlink()
    with pytest.raises(ValueError, match="no usable image left in split"):
        gate_splits(layout, ["val"], K, None, "skip")


def _bad_annotation(tree):
    """A degenerate (2-point) polygon added to a used COCO image, and an annotation of an image id the file
    does not have (annotation 999998); returns (image id, annotation id) of the first."""
    path = tree / "coco/annotations/instances_train.json"
    data = json.loads(path.read_text())
    image_id = _coco(tree).ids[0]
    category = next(c["id"] for c in data["categories"] if c["name"] in DEMO_COCO_CATEGORY_MAP)
    data["annotations"] += [
        {"id": 999999, "image_id": int(image_id), "category_id": category, "iscrowd": 0, "area": 1,
         "bbox": [0, 0, 1, 1], "segmentation": [[0, 0, 3, 3]]},
        {"id": 999998, "image_id": 987654, "category_id": category, "iscrowd": 0, "area": 1,
         "bbox": [0, 0, 1, 1], "segmentation": [[0, 0, 3, 0, 3, 3]]}]
    path.write_text(json.dumps(data))
    return image_id, 999999


def test_bad_annotation_fails_naming_annotation_image_and_file(tree):
    image_id, ann_id = _bad_annotation(tree)
    _break(tree)
    with pytest.raises(ValueError) as err:
        gate_splits(_layout(tree), ["train", "val"], K, _coco(tree), "fail")
    message = str(err.value)
    assert f"instances_train.json: annotation {ann_id}, image {image_id}: polygon 0 has 2 point(s)" in message
    assert "annotation 999998, image 987654: no image with this id" in message
    assert "7 dataset problem(s)" in message  # listed together with the five VOC problems


def test_skip_leaves_the_bad_annotations_image_out(tree):
    image_id, ann_id = _bad_annotation(tree)
    kept, report = gate_splits(_layout(tree), ["val"], K, _coco(tree), "skip")
    assert report["skipped"]["coco"] == [image_id] and image_id not in kept["coco"]
    assert len(kept["coco"]) == len(_coco(tree).ids) - 1
    assert any(f"annotation {ann_id}, image {image_id}" in p for p in report["problems"])
    assert any("annotation 999998, image 987654" in p for p in report["problems"])  # nothing to skip: listed
