import json

import numpy as np
import pytest
from PIL import Image

from locseg.data.labels import labels_from_masks, read_labels, read_labels_file, write_labels
from locseg.data.voc import VocLayout, write_mask


def _tree(root):
    """Two images: one with classes 2 and 5 (+ ignore), one background only."""
    layout = VocLayout(root)
    layout.image_path("a").parent.mkdir(parents=True)
    for image_id, mask in (("a", [[0, 2, 2], [5, 255, 0]]), ("b", [[0, 0, 0], [0, 255, 255]])):
        Image.new("RGB", (3, 2)).save(layout.image_path(image_id))
        write_mask(layout.mask_path(image_id), np.array(mask, dtype=np.uint8))
    return layout


def test_labels_from_masks(tmp_path):
    assert labels_from_masks(_tree(tmp_path), ["a", "b"], 6) == {"a": [2, 5], "b": []}


def test_labels_from_masks_checks_size(tmp_path):
    layout = _tree(tmp_path)
    Image.new("RGB", (4, 2)).save(layout.image_path("b"))
    with pytest.raises(ValueError, match=r"b\.png.*\(2, 3\).*\(2, 4\)"):
        labels_from_masks(layout, ["a", "b"], 6)


def test_json_plain_and_stage_format(tmp_path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"a": [3, 1], "b": [], "extra": [2]}))
    assert read_labels_file(plain, ["a", "b"], 4) == {"a": [1, 3], "b": []}
    stage = tmp_path / "stage.json"
    write_labels(stage, {"b": [2], "a": [1]}, ["background", "x", "y", "z"])
    assert read_labels_file(stage, ["a", "b"], 4) == {"a": [1], "b": [2]}


def test_json_missing_id_and_bad_index(tmp_path):
    f = tmp_path / "l.json"
    f.write_text(json.dumps({"a": [1]}))
    with pytest.raises(ValueError, match=r"l\.json.*1 of 2.*\bb\b"):
        read_labels_file(f, ["a", "b"], 4)
    f.write_text(json.dumps({"a": [4]}))
    with pytest.raises(ValueError, match=r"l\.json.*image a"):
        read_labels_file(f, ["a"], 4)
    f.write_text(json.dumps({"a": [0]}))
    with pytest.raises(ValueError, match="image a"):
        read_labels_file(f, ["a"], 4)


def _irn_file(path):
    table = {2007000032: np.array([0, 1, 0, 1], dtype=np.float32), "x_y": np.array([1, 0, 0, 0])}
    np.save(path, table, allow_pickle=True)


def test_irn_npy_needs_opt_in(tmp_path):
    f = tmp_path / "cls_labels.npy"
    _irn_file(f)
    with pytest.raises(ValueError, match=r"cls_labels\.npy.*pickle.*allow_pickle=True"):
        read_labels_file(f, ["2007_000032"], 5)


def test_irn_npy(tmp_path):
    f = tmp_path / "cls_labels.npy"
    _irn_file(f)
    assert read_labels_file(f, ["2007_000032", "x_y"], 5, allow_pickle=True) == {"2007_000032": [2, 4], "x_y": [1]}
    with pytest.raises(ValueError, match="2007_000033"):
        read_labels_file(f, ["2007_000033"], 5, allow_pickle=True)
    with pytest.raises(ValueError, match="length 5"):
        read_labels_file(f, ["2007_000032"], 6, allow_pickle=True)


def test_write_read_round_trip(tmp_path):
    f = tmp_path / "labels.json"
    names = ["background", "p", "q"]
    write_labels(f, {"z": [2, 1], "a": []}, names)
    data = json.loads(f.read_text())
    assert data == {"class_names": names, "labels": {"a": [], "z": [1, 2]}}
    assert list(data["labels"]) == ["a", "z"]
    assert read_labels(f, names) == {"a": [], "z": [1, 2]}
    with pytest.raises(ValueError, match=r"labels\.json.*\['background', 'p', 'q'\].*\['background', 'p', 'r'\]"):
        read_labels(f, ["background", "p", "r"])


def test_write_rejects_out_of_range(tmp_path):
    with pytest.raises(ValueError, match="image a"):
        write_labels(tmp_path / "l.json", {"a": [3]}, ["background", "p", "q"])
    assert not (tmp_path / "l.json").exists()
