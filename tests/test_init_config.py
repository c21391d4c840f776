"""`locseg init-config` (locseg/init_config.py): a complete, commented config read from the user's data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from locseg.cli import main
from locseg.config import validate_config
from locseg.data.demo import DEMO_COCO_CATEGORY_MAP, generate
from locseg.data.voc import VOC_CLASSES, write_mask
from locseg.init_config import InitConfigError, choose_classes, propose_category_map, render, run_command

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "locseg" / "config.schema.yaml"
# The tiny demo's COCO categories renamed; "ewe" and "tortoise" match no class.
RENAME = {"formicid": "Fox", "chiropteran": "owl", "bull": "ram", "heifer": "ewe", "cervid": "yak"}
OWN_CLASSES = ["fox", "owl", "ram", "yak"]  # mask indices 1..4 of the demo


def own_tree(root: Path) -> dict[str, Path]:
    """A VOC tree and a COCO file whose class names are not the demo's (the tiny demo, renamed)."""
    generate(root, seed=0, size="tiny")
    ann = root / "coco" / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    for cat in data["categories"]:
        cat["name"] = RENAME.get(cat["name"], cat["name"])
    ann.write_text(json.dumps(data))
    return {"voc": root / "voc", "images": root / "coco" / "images", "annotations": ann}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    return own_tree(tmp_path_factory.mktemp("own") / "data")


def init(capsys, tree, out, *extra) -> tuple[int, str, str]:
    rc = main(["init-config", "--voc-root", str(tree["voc"]), "--coco-images", str(tree["images"]),
               "--coco-annotations", str(tree["annotations"]), "--out", str(out), *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_category_map_from_matching_names():
    classes = ["background", "aeroplane", "dining_table", "tvmonitor"]
    mapping, unmatched = propose_category_map(["airplane", "Dining Table", "tv", "zebra"], classes,
                                              known={"airplane": "aeroplane", "tv": "tvmonitor", "zebra": "horse"})
    assert mapping == {"airplane": "aeroplane", "Dining Table": "dining_table", "tv": "tvmonitor"}
    assert unmatched == ["zebra"]  # known maps it to a class this config does not have


def test_classes_from_masks(tmp_path):
    mask_dir = tmp_path / "masks"
    assert choose_classes(None, 20, mask_dir) == list(VOC_CLASSES)  # PASCAL VOC's 21 indices
    with pytest.raises(InitConfigError, match=r"indices 0\.\.4; name them with --classes"):
        choose_classes(None, 4, mask_dir)
    assert choose_classes(["a", "b"], 2, mask_dir) == ["background", "a", "b"]
    assert choose_classes(["background", "a", "b"], 1, mask_dir) == ["background", "a", "b"]
    with pytest.raises(InitConfigError, match="class index 3.*only 3 classes"):
        choose_classes(["a", "b"], 3, mask_dir)


def test_voc_names_read_from_masks(tmp_path):
    """No --classes: a tree whose masks hold index 20 gets PASCAL VOC's names."""
    voc = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for i, split in enumerate(["train", "val"]):
        write_mask(voc / f"SegmentationClass/{split}1.png", np.full((4, 4), 20 - i, np.uint8))
        (voc / f"ImageSets/Segmentation/{split}.txt").write_text(f"{split}1\n")
    coco = tmp_path / "coco.json"
    coco.write_text(json.dumps({"categories": [{"id": 1, "name": "person"}, {"id": 5, "name": "airplane"}]}))
    out = tmp_path / "c.yaml"
    assert main(["init-config", "--voc-root", str(voc), "--coco-images", str(tmp_path),
                 "--coco-annotations", str(coco), "--out", str(out)]) == 0
    config = yaml.safe_load(out.read_text())
    assert config["classes"] == list(VOC_CLASSES)
    assert config["coco"]["category_map"] == {"person": "person", "airplane": "aeroplane"}  # via the paper map
    assert config["dataset"]["splits"] == {"cam": "train", "pseudo": "train", "pseudo_eval": "train", "val": "val"}
    assert config["cam"]["backbone"] == "resnet50"  # the rest: the paper's setting


def test_writes_complete_commented_config(tree, tmp_path, capsys):
    out = tmp_path / "mine.yaml"
    rc, stdout, _ = init(capsys, tree, out, "--classes", ",".join(OWN_CLASSES),
                         "--base", str(REPO / "config" / "config.yaml"))
    assert rc == 0 and run_command(out) in stdout
    text = out.read_text()
    config = yaml.safe_load(text)
    assert config["classes"] == ["background", *OWN_CLASSES]
    assert config["coco"]["category_map"] == {"Fox": "fox", "owl": "owl", "ram": "ram", "yak": "yak"}
    assert not set(config["coco"]["category_map"]) & set(DEMO_COCO_CATEGORY_MAP)
    assert "ewe, tortoise" in text  # the unmapped categories are listed for the user to map
    assert config["demo"]["enabled"] is False and config["dataset"]["root"] == str(tree["voc"].resolve())
    assert config["dataset"]["mask_dir"] == "SegmentationClass"
    assert "# split whose image labels train the CAM net" in text  # schema descriptions as comments
    assert run_command(out) in text
    validate_config(config, SCHEMA)  # complete: valid alone, not merged into anything


def test_render_round_trips_every_value_type():
    schema = yaml.safe_load(SCHEMA.read_text())
    config = validate_config(yaml.safe_load((REPO / "config" / "config.yaml").read_text()), SCHEMA)
    config["classes"] = ["background", *(f"class number {i}" for i in range(30))]  # long list: block style
    config["coco"]["category_map"]["dining table"] = "class number 3"
    assert yaml.safe_load(render(config, schema)) == config


def test_errors_name_the_problem(tree, tmp_path, capsys):
    rc, _, err = init(capsys, tree, tmp_path / "x.yaml")
    assert rc == 1 and "indices 0..4; name them with --classes" in err
    rc, _, err = init(capsys, {**tree, "voc": tmp_path / "nowhere"}, tmp_path / "x.yaml", "--classes", "a,b,c,d")
    assert rc == 1 and "nowhere: directory not found" in err
    assert not (tmp_path / "x.yaml").exists()
