"""Tests for config validation (locseg/config.py, locseg/config.schema.yaml)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from locseg.config import ConfigError, load_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "locseg" / "config.schema.yaml"
DEFAULT = ROOT / "config" / "config.yaml"


@pytest.fixture
def config():
    return yaml.safe_load(DEFAULT.read_text())


def _error(config) -> str:
    with pytest.raises(ConfigError) as e:
        validate_config(config, SCHEMA)
    msg = str(e.value)
    assert "\n" not in msg  # one line, however many problems
    return msg


@pytest.fixture
def real_tree(tmp_path):
    """A minimal on-disk VOC + COCO layout for demo.enabled: false."""
    voc = tmp_path / "voc"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    for split in ("train", "val"):
        (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("a\n")
    (tmp_path / "coco/images").mkdir(parents=True)
    (tmp_path / "coco/instances.json").write_text("{}")
    return tmp_path


def _real(config, root):
    config["demo"]["enabled"] = False
    config["dataset"]["root"] = str(root / "voc")
    config["coco"]["image_dir"] = str(root / "coco/images")
    config["coco"]["annotations"] = str(root / "coco/instances.json")
    return config


def test_default_config_passes(config):
    before = copy.deepcopy(config)
    out = validate_config(config, SCHEMA)
    assert out is config
    def leaves(d, prefix=""):
        for k, v in d.items():
            yield from leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [(prefix + k, v)]

    got = dict(leaves(out))
    for key, value in leaves(before):  # every given value untouched
        assert got[key] == value, key
    assert out["cam"]["epochs"] == before["cam"]["epochs"]


def test_every_key_is_required_and_named_when_missing(config):
    """One source of defaults (config/config.yaml): the schema fills nothing in, a missing key is an error."""
    del config["num_workers"]
    del config["reseg"]["rounds"]
    del config["cam"]["flip"]
    msg = _error(config)
    assert "(top level): 'num_workers' is a required property" in msg
    assert "reseg: 'rounds' is a required property" in msg
    assert "cam: 'flip' is a required property" in msg


def test_schema_holds_no_defaults():
    text = SCHEMA.read_text()
    assert "default:" not in text


def test_paper_config_is_complete():
    """Run alone with --replace-workflow-config, it must hold every key itself (paths aside)."""
    from locseg.config import schema_problems

    assert schema_problems(yaml.safe_load((ROOT / "config" / "voc12_coco.yaml").read_text()), SCHEMA) == []


def test_wrong_type_names_key(config):
    config["cam"]["epochs"] = "ten"
    msg = _error(config)
    assert "cam.epochs" in msg and "ten" in msg


def test_several_problems_one_line(config):
    config["cam"]["epochs"] = "ten"
    config["reseg"]["bg_score"] = 1.5
    msg = _error(config)
    assert "cam.epochs" in msg and "reseg.bg_score" in msg


def test_unknown_keys(config):
    config["bogus"] = 1
    msg = _error(config)
    assert "bogus" in msg
    del config["bogus"]
    config["cam"]["epoch"] = 3  # typo of a known key
    msg = _error(config)
    assert "cam" in msg and "'epoch'" in msg


def test_missing_required(config):
    del config["classes"]
    assert "classes" in _error(config)


def test_category_map_value_not_a_class(config):
    config["coco"]["category_map"]["cervid"] = "deer"
    msg = _error(config)
    assert "coco.category_map.cervid" in msg and "deer" in msg


def test_background_first_and_coco_split_reserved(config):
    config["dataset"]["splits"]["val"] = "coco"
    assert "dataset.splits.val" in _error(config)
    config["dataset"]["splits"]["val"] = "val"
    config["classes"] = ["ant", "background", "bat", "cow", "elk"]
    assert "index 0 must be 'background'" in _error(config)


def test_demo_paths_must_follow_demo_out(config):
    config["demo"]["out"] = "elsewhere/demo"
    msg = _error(config)
    assert "dataset.root" in msg and "coco.image_dir" in msg and "coco.annotations" in msg
    assert "elsewhere/demo" in msg


def test_demo_classes_and_splits(config):
    config["classes"] = ["background", "ant", "bat", "cow", "yak"]
    config["coco"]["category_map"]["cervid"] = "yak"
    assert "classes" in _error(config)


def test_real_dataset_paths_exist(config, real_tree):
    validate_config(_real(config, real_tree), SCHEMA)


def test_real_dataset_missing_root(config, real_tree):
    config = _real(config, real_tree)
    config["dataset"]["root"] = str(real_tree / "nowhere")
    msg = _error(config)
    assert "dataset.root" in msg and "nowhere" in msg


def test_real_dataset_missing_split_and_weights(config, real_tree):
    config = _real(config, real_tree)
    config["dataset"]["splits"]["val"] = "test"
    config["segmenter"]["weights"] = str(real_tree / "r101.pth")
    msg = _error(config)
    assert "dataset.splits.val" in msg and "test.txt" in msg
    assert "segmenter.weights" in msg and "r101.pth" in msg


def test_imagenet_weights(config, real_tree):
    config = _real(config, real_tree)
    config["cam"].update(backbone="resnet50", weights="imagenet")  # a name, not a path: no existence check
    config["deeplab"]["weights"] = None  # not the demo's `cam`: that needs the CAM net's backbone
    validate_config(copy.deepcopy(config), SCHEMA)
    config["segmenter"]["weights"] = "imagenet"  # the small demo backbone has no ImageNet weights
    config["cam"]["source"] = "weights"  # a released CAM net is a checkpoint file, not an initialisation
    msg = _error(config)
    assert "segmenter.weights: 'imagenet' exists for resnet18, resnet50, resnet101, not 'small'" in msg
    assert "cam.weights: cam.source 'weights' needs a trained CAM checkpoint file, not 'imagenet'" in msg


def test_cam_weights_need_the_cam_nets_backbone(config, real_tree):
    config = _real(config, real_tree)
    config["segmenter"]["weights"] = config["deeplab"]["weights"] = "cam"  # a name, not a path: no existence check
    validate_config(copy.deepcopy(config), SCHEMA)
    config["deeplab"]["backbone"] = "resnet50"
    config["cam"]["weights"] = "cam"
    msg = _error(config)
    assert "deeplab.weights: 'cam' needs the CAM net's backbone ('small'), not 'resnet50'" in msg
    assert "cam.weights: 'cam' (the trained CAM net's backbone) is for the segmenter and DeepLab" in msg
    assert "segmenter.weights" not in msg


def test_segmenter_passes_and_consistency(config):
    validate_config(copy.deepcopy(config), SCHEMA)
    for passes, second, consistency in ((2, ["perturbed_mask"], 1.0), (1, ["perturbed_mask"], 0.0), (1, [], 0.0)):
        config["segmenter"].update(passes=passes, second_cues=second, consistency=consistency)
        validate_config(copy.deepcopy(config), SCHEMA)
    config["segmenter"].update(passes=1, second_cues=["prediction"], consistency=0.5)
    msg = _error(config)
    assert "segmenter.consistency: the Dice term between two passes needs passes: 2" in msg
    assert "segmenter.second_cues: with passes: 1 there is no first pass" in msg
    config["segmenter"].update(passes=2, second_cues=[], consistency=0.5)
    assert "segmenter.consistency" in _error(config)
    config["segmenter"]["passes"] = 3
    assert "segmenter.passes" in _error(config)


def test_load_config(tmp_path, config):
    good = tmp_path / "c.yaml"
    good.write_text(yaml.safe_dump(config))
    assert load_config(good, SCHEMA)["classes"][0] == "background"
    bad = tmp_path / "bad.yaml"
    bad.write_text("cam: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad, SCHEMA)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst, SCHEMA)
    with pytest.raises(ConfigError, match="absent.yaml"):
        load_config(tmp_path / "absent.yaml", SCHEMA)
    typo = tmp_path / "typo.yaml"
    config["deeplab"]["epochs"] = 0
    typo.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="deeplab.epochs"):
        load_config(typo, SCHEMA)


def test_merged_into_demo_default_names_the_cause(config, real_tree):
    """`--configfile mine.yaml` without --replace-workflow-config: the demo's map keys survive the merge."""
    from snakemake.utils import update_config

    mine = _real({"demo": {}, "dataset": {}, "coco": {}}, real_tree)
    mine["classes"] = ["background", "fox", "owl"]
    mine["coco"]["category_map"] = {"fox": "fox", "owl": "owl"}
    update_config(config, mine)
    msg = _error(config)
    assert "still holds the demo's keys formicid, chiropteran, bull, heifer, cervid" in msg
    assert "--replace-workflow-config" in msg and "locseg init-config" in msg
    assert "coco.category_map.formicid" not in msg  # the cause, not five symptoms
    for key in ("formicid", "chiropteran", "bull", "heifer", "cervid"):
        del config["coco"]["category_map"][key]
    validate_config(config, SCHEMA)


def test_quick_config_merges_into_a_valid_config_of_its_own(config):
    """config/quick.yaml over the default: valid, on the quick demo, and nothing written under the full
    demo's paths (its outdir and demo.out hold every output, so the full demo's results stay)."""
    from snakemake.utils import update_config

    quick = yaml.safe_load((ROOT / "config" / "quick.yaml").read_text())
    update_config(config, quick)
    validate_config(config, SCHEMA)
    assert config["demo"]["size"] == "quick" and config["outdir"] != "results"
    assert config["demo"]["out"].startswith(config["outdir"] + "/")
