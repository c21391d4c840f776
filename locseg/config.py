"""Config validation before any job runs: the JSON schema, then the checks a schema cannot express (paths
that must exist, names that must agree). One line per problem.

The schema requires every key and holds no defaults: config/config.yaml is the one place defaults live
(other config files are merged over it, or are complete configs run alone)."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import jsonschema
import yaml

from locseg.weights import CAM_NET, IMAGENET, IMAGENET_BACKBONES


# Shipped inside the package, so the workflow, the `locseg` command and a Snakemake module that includes
# the rules from elsewhere all validate against the same file.
SCHEMA = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    pass


def _where(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate_config(config: dict, schema_path) -> dict:
    """Validate and return config; raise ConfigError naming every bad or missing key."""
    problems = schema_problems(config, schema_path) or semantic_problems(config)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return config


def schema_problems(config: dict, schema_path) -> list[str]:
    """JSON-schema errors, one line each."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_where(e)}: {e.message}" for e in errors]


def _demo_leftovers(config: dict) -> list[str]:
    """A config given with plain --configfile is merged key by key into the demo default, so the demo's
    category map entries survive next to the user's: name that cause, not its symptoms."""
    from locseg.data.demo import DEMO_COCO_CATEGORY_MAP  # local: the schema check stays light

    left = [k for k, v in config["coco"]["category_map"].items()
            if DEMO_COCO_CATEGORY_MAP.get(k) == v and v not in config["classes"]]
    if not left:
        return []
    return [f"coco.category_map still holds the demo's keys {', '.join(left)}: this config was merged key by key "
            "into the demo default (config/config.yaml); run a complete config alone with "
            "--replace-workflow-config (`locseg init-config` writes one for your data)"]


def semantic_problems(config: dict) -> list[str]:
    """What a schema cannot say (paths that must exist, names that must agree); needs a schema-valid config."""
    leftovers = _demo_leftovers(config)
    if leftovers:
        return leftovers  # every other complaint would follow from the merge
    problems = []
    classes = config["classes"]
    if classes[0] != "background":
        problems.append(f"classes: index 0 must be 'background', found {classes[0]!r}")
    for coco_name, cls in config["coco"]["category_map"].items():
        if cls not in classes[1:]:
            problems.append(f"coco.category_map.{coco_name}: {cls!r} is not one of the object classes {classes[1:]}")
    splits = config["dataset"]["splits"]
    for key, split in splits.items():
        if split == "coco":
            problems.append(f"dataset.splits.{key}: 'coco' is reserved for the external (COCO-layout) split")
    cam = config["cam"]
    if cam["source"] == "weights" and not cam["weights"]:
        problems.append("cam.weights: cam.source 'weights' needs a weights file")
    for stage in ("cam", "segmenter", "deeplab"):
        backbone = config[stage]["backbone"]
        if config[stage]["weights"] == IMAGENET and backbone not in IMAGENET_BACKBONES:
            problems.append(f"{stage}.weights: 'imagenet' exists for {', '.join(IMAGENET_BACKBONES)}, not {backbone!r}")
    if cam["weights"] == CAM_NET:
        problems.append("cam.weights: 'cam' (the trained CAM net's backbone) is for the segmenter and DeepLab")
    for stage in ("segmenter", "deeplab"):
        if config[stage]["weights"] == CAM_NET and config[stage]["backbone"] != cam["backbone"]:
            problems.append(f"{stage}.weights: 'cam' needs the CAM net's backbone ({cam['backbone']!r}), "
                            f"not {config[stage]['backbone']!r}")
    if cam["source"] == "weights" and cam["weights"] == IMAGENET:
        problems.append("cam.weights: cam.source 'weights' needs a trained CAM checkpoint file, not 'imagenet'")
    seg = config["segmenter"]
    if seg["consistency"] and (seg["passes"] == 1 or not seg["second_cues"]):
        problems.append("segmenter.consistency: the Dice term between two passes needs passes: 2 and a second cue; "
                        "set it to 0")
    if seg["passes"] == 1 and "prediction" in seg["second_cues"]:
        problems.append("segmenter.second_cues: with passes: 1 there is no first pass whose prediction could be "
                        "a cue; use [perturbed_mask]")
    problems += _sam_problems(seg)
    if cam["source"] == "import":
        if not cam["import_dir"]:
            problems.append("cam.import_dir: cam.source 'import' needs a directory of .npy CAMs")
        elif not Path(cam["import_dir"]).is_dir():
            problems.append(f"cam.import_dir: path {cam['import_dir']} does not exist")
        if not cam["allow_pickle"]:
            problems.append("cam.allow_pickle: IRN/SEAM .npy CAMs are pickles; set it to true for files you trust")
    if config["demo"]["enabled"]:
        problems += _demo_problems(config)
    else:
        problems += _missing_paths(config)
    return problems


def _sam_problems(seg: dict) -> list[str]:
    """`kind: sam` needs the optional package, and a local checkpoint that exists (in demo runs too)."""
    if seg["kind"] != "sam":
        return []
    problems = []
    if importlib.util.find_spec("segment_anything") is None:
        problems.append("segmenter.kind: 'sam' needs the segment-anything package: pip install -e \".[sam]\"")
    checkpoint = seg["sam"]["checkpoint"]
    if checkpoint and not Path(checkpoint).is_file():
        problems.append(f"segmenter.sam.checkpoint: path {checkpoint} does not exist")
    return problems


def _demo_problems(config: dict) -> list[str]:
    from locseg.data.demo import DEMO_CLASSES  # local: the schema check stays light

    out = Path(config["demo"]["out"])
    expected = {
        "dataset.root": (config["dataset"]["root"], out / "voc"),
        "coco.image_dir": (config["coco"]["image_dir"], out / "coco" / "images"),
        "coco.annotations": (config["coco"]["annotations"], out / "coco" / "annotations" / "instances_train.json"),
    }
    problems = [f"{key}: with demo.enabled it must be {want} (demo.out is {out}), found {got}"
                for key, (got, want) in expected.items() if Path(got) != want]
    if list(config["classes"]) != list(DEMO_CLASSES):
        problems.append(f"classes: the demo data has classes {list(DEMO_CLASSES)}, config lists {config['classes']}")
    if config["dataset"]["splits"]["cam"] not in ("train", "val") or any(
            s not in ("train", "val") for s in config["dataset"]["splits"].values()):
        problems.append(f"dataset.splits: the demo data has splits train and val, found {config['dataset']['splits']}")
    return problems


def _missing_paths(config: dict) -> list[str]:
    ds, coco = config["dataset"], config["coco"]
    root = Path(ds["root"])
    checks = {
        "dataset.root": root,
        "dataset.image_dir": root / ds["image_dir"],
        "dataset.mask_dir": root / ds["mask_dir"],
        "coco.image_dir": Path(coco["image_dir"]),
        "coco.annotations": Path(coco["annotations"]),
    }
    for key, split in ds["splits"].items():
        checks[f"dataset.splits.{key}"] = root / ds["split_dir"] / f"{split}.txt"
    if ds["labels_file"]:
        checks["dataset.labels_file"] = Path(ds["labels_file"])
    for stage in ("cam", "segmenter", "deeplab"):
        if config[stage]["weights"] not in (None, IMAGENET, CAM_NET):
            checks[f"{stage}.weights"] = Path(config[stage]["weights"])
    return [f"{key}: path {path} does not exist" for key, path in checks.items() if not path.exists()]


def load_config(path, schema_path) -> dict:
    """For tools outside Snakemake (the `locseg` command): read YAML and validate it the same way."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read config ({e})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: a config must be a mapping")
    return validate_config(config, schema_path)


def config_hash(obj) -> str:
    """Short stable hash of a JSON-able config section, recorded in checkpoints and stores."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]
