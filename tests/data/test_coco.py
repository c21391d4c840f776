import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from locseg.data.coco import CocoSplit

CLASSES = ["background", "dog", "cat"]
CMAP = {"hound": "dog", "puppy": "dog", "kitty": "cat"}


def _rle(mask):
    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}


def _annotations(tmp_path, extra=()):
    """Image 10 (6x8): hound polygon, puppy RLE, dog crowd, a cat; image 4: only an unmapped 'car'.
    `extra` annotations are added as given."""
    puppy = np.zeros((6, 8), dtype=np.uint8)
    puppy[4:6, 6:8] = 1
    crowd = np.zeros((6, 8), dtype=np.uint8)
    crowd[0:3, 4:8] = 1  # overlaps the hound polygon at column 4
    cat = np.zeros((6, 8), dtype=np.uint8)
    cat[5, 0] = 1
    data = {
        "info": {}, "licenses": [],
        "images": [{"id": 10, "file_name": "ten.jpg", "height": 6, "width": 8},
                   {"id": 4, "file_name": "four.jpg", "height": 6, "width": 8}],
        "categories": [{"id": 5, "name": "hound", "supercategory": "a"}, {"id": 9, "name": "puppy", "supercategory": "a"},
                       {"id": 2, "name": "kitty", "supercategory": "a"}, {"id": 30, "name": "car", "supercategory": "v"}],
        "annotations": [
            # rectangle covering pixels x 1..4, y 1..3 (pycocotools' polygon convention)
            {"id": 1, "image_id": 10, "category_id": 5, "iscrowd": 0, "area": 12, "bbox": [1, 1, 4, 3],
             "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]]},
            {"id": 2, "image_id": 10, "category_id": 9, "iscrowd": 0, "area": 4, "bbox": [6, 4, 2, 2],
             "segmentation": _rle(puppy)},
            {"id": 3, "image_id": 10, "category_id": 5, "iscrowd": 1, "area": 12, "bbox": [4, 0, 4, 3],
             "segmentation": _rle(crowd)},
            {"id": 4, "image_id": 10, "category_id": 2, "iscrowd": 0, "area": 1, "bbox": [0, 5, 1, 1],
             "segmentation": _rle(cat)},
            {"id": 5, "image_id": 4, "category_id": 30, "iscrowd": 0, "area": 4, "bbox": [0, 0, 2, 2],
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},
            *extra,
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def test_ids_labels_paths(tmp_path, capsys):
    split = CocoSplit(_annotations(tmp_path), tmp_path / "img", CMAP, CLASSES)
    assert capsys.readouterr().out == ""
    assert split.ids == ["10"]  # image 4 holds only the unmapped category
    assert split.labels("10") == [1, 2]
    assert split.size("10") == (6, 8)
    assert split.image_path("10") == tmp_path / "img" / "ten.jpg"


def test_target_pixels(tmp_path):
    split = CocoSplit(_annotations(tmp_path), tmp_path, CMAP, CLASSES)
    expected = np.array([
        [0, 0, 0, 0, 255, 255, 255, 255],
        [0, 1, 1, 1, 1, 255, 255, 255],
        [0, 1, 1, 1, 1, 255, 255, 255],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 0, 1, 1],
        [0, 0, 0, 0, 0, 0, 1, 1],
    ], dtype=np.uint8)
    target = split.target("10", 1)
    assert target.dtype == np.uint8
    np.testing.assert_array_equal(target, expected)
    cat = np.zeros((6, 8), dtype=np.uint8)
    cat[5, 0] = 1
    np.testing.assert_array_equal(split.target("10", 2), cat)


def test_check_images(tmp_path):
    (tmp_path / "img").mkdir()
    split = CocoSplit(_annotations(tmp_path), tmp_path / "img", CMAP, CLASSES)
    problems = split.check_images()
    assert len(problems) == 1 and "ten.jpg" in problems[0] and "image 10" in problems[0]
    (tmp_path / "img" / "ten.jpg").write_bytes(b"x")
    assert split.check_images() == []


def test_bad_category_map(tmp_path):
    path = _annotations(tmp_path)
    with pytest.raises(ValueError, match=r"\['doggo'\].*valid: \['car', 'hound', 'kitty', 'puppy'\]"):
        CocoSplit(path, tmp_path, {"doggo": "dog"}, CLASSES)
    with pytest.raises(ValueError, match=r"\['horse'\].*valid: \['dog', 'cat'\]"):
        CocoSplit(path, tmp_path, {"hound": "horse"}, CLASSES)


def test_bad_annotation_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json"):
        CocoSplit(bad, tmp_path, CMAP, CLASSES)
    bad.write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match=r"bad\.json.*annotations"):
        CocoSplit(bad, tmp_path, CMAP, CLASSES)
    with pytest.raises(FileNotFoundError, match=r"none\.json"):
        CocoSplit(tmp_path / "none.json", tmp_path, CMAP, CLASSES)


def _ann(ann_id, segmentation, image_id=10, category_id=5):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "iscrowd": 0, "area": 1,
            "bbox": [0, 0, 1, 1], "segmentation": segmentation}


def test_well_formed_annotations_have_no_problems(tmp_path):
    assert CocoSplit(_annotations(tmp_path), tmp_path, CMAP, CLASSES).annotation_problems() == {}


@pytest.mark.parametrize("ann, words", [
    # a 4-number polygon: pycocotools would even read it as a box
    (_ann(71, [[1, 1, 5, 1]]), ["2 point(s)", "at least 3"]),
    (_ann(72, [[1, 1, 5, 1, 5, 4, 1]]), ["odd number of coordinates (7)"]),
    (_ann(73, {"size": [8, 6], "counts": "abc"}), ["RLE size [8, 6]", "image size [6, 8]"]),
    (_ann(74, {"size": [6, 8], "counts": [40, 7]}), ["47 pixels", "48"]),
    (_ann(75, [[1, 1, 5, 1, 5, 4]], category_id=99), ["unknown category id 99"]),
    (_ann(76, [[1, 1, 5, 1, 5, 4]], image_id=12345), ["no image with this id"]),
    (_ann(77, None), ["neither a polygon list nor an RLE"]),
])
def test_each_malformed_annotation_is_named_with_its_ids_and_file(tmp_path, ann, words):
    problems = CocoSplit(_annotations(tmp_path, [ann]), tmp_path, CMAP, CLASSES).annotation_problems()
    assert list(problems) == [str(ann["image_id"])]
    [message] = problems[str(ann["image_id"])]
    assert f"annotation {ann['id']}, image {ann['image_id']}" in message and "instances.json" in message
    for word in words:
        assert word in message


def test_unused_categories_are_not_decoded(tmp_path):
    """Only annotations of mapped categories are used, so only theirs must decode ('car' is unmapped)."""
    split = CocoSplit(_annotations(tmp_path, [_ann(78, [[1, 1]], category_id=30)]), tmp_path, CMAP, CLASSES)
    assert split.annotation_problems() == {}
