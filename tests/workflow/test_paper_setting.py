"""The paper's config (config/voc12_coco.yaml, used alone) on a tiny tree laid out and named like the real data.

The raw material is the tiny demo set, rewritten into VOCdevkit/VOC2012 (SegmentationClassAug, train_aug /
train / val lists, VOC ids like 2007_000032, 4 of the 21 VOC class indices) and COCO train2017 (real category
ids and names, 12-digit file names, non-contiguous image ids). Only the model sizes, epochs and paths are
overridden: splits, class list, category map, thresholds and the rest come from the real config.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from locseg.data.demo import generate
from locseg.data.voc import VOC_CLASSES, write_mask
from tests.workflow.conftest import REPO

pytestmark = [pytest.mark.slow]

# demo class index -> VOC class index: ant -> aeroplane, bat -> cat, cow -> dog, elk -> person
CLASS_MAP = {0: 0, 1: 1, 2: 8, 3: 12, 4: 15, 255: 255}
# demo COCO category name -> (real COCO id, real COCO name); both demo "cow" categories become dog
COCO_RENAME = {"formicid": (5, "airplane"), "chiropteran": (17, "cat"), "bull": (18, "dog"),
               "heifer": (18, "dog"), "cervid": (1, "person"), "tortoise": (24, "zebra")}
# Every COCO category that config/voc12_coco.yaml maps (real ids), plus the unmapped zebra.
COCO_CATEGORIES = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
                   9: "boat", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 24: "zebra",
                   44: "bottle", 62: "chair", 63: "couch", 64: "potted plant", 67: "dining table", 72: "tv"}
N_TRAIN = 8  # train.txt: the first 8 of train_aug (the tiny demo has 12 train images)


def _voc_id(i: int) -> str:
    return f"{2007 + i // 10}_{32 + 7 * i:06d}"


def _build_tree(root: Path) -> dict[str, list[str]]:
    """VOCdevkit/VOC2012 + coco/ under root; returns the split lists written."""
    demo = root / "demo"
    generate(demo, seed=0, size="tiny")
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    demo_splits = {s: (demo / f"voc/ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val")}
    rename = {d: _voc_id(i) for i, d in enumerate(demo_splits["train"] + demo_splits["val"])}
    lut = np.full(256, 255, dtype=np.uint8)
    for src, dst in CLASS_MAP.items():
        lut[src] = dst
    for old, new in rename.items():
        (demo / f"voc/JPEGImages/{old}.jpg").rename(voc / f"JPEGImages/{new}.jpg")
        with Image.open(demo / f"voc/SegmentationClass/{old}.png") as img:
            assert img.mode == "P"
            label = np.asarray(img)
        assert set(np.unique(label).tolist()) <= set(CLASS_MAP)
        write_mask(voc / f"SegmentationClassAug/{new}.png", lut[label])
    splits = {"train_aug": [rename[i] for i in demo_splits["train"]],
              "val": [rename[i] for i in demo_splits["val"]]}
    splits["train"] = splits["train_aug"][:N_TRAIN]
    for name, ids in splits.items():
        (voc / f"ImageSets/Segmentation/{name}.txt").write_text("".join(f"{i}\n" for i in ids))

    coco = root / "coco"
    (coco / "train2017").mkdir(parents=True)
    (coco / "annotations").mkdir()
    data = json.loads((demo / "coco/annotations/instances_train.json").read_text())
    old_cats = {c["id"]: c["name"] for c in data["categories"]}
    new_image_id = {}
    for k, img in enumerate(data["images"]):
        new = 9 + 16 * k + k * k  # non-contiguous, like COCO's
        new_image_id[img["id"]] = new
        file_name = f"{new:012d}.jpg"
        (demo / "coco/images" / img["file_name"]).rename(coco / "train2017" / file_name)
        img.update(id=new, file_name=file_name)
    for ann in data["annotations"]:
        ann["category_id"] = COCO_RENAME[old_cats[ann["category_id"]]][0]
        ann["image_id"] = new_image_id[ann["image_id"]]
    data["categories"] = [{"id": cid, "name": name, "supercategory": "thing"}
                          for cid, name in sorted(COCO_CATEGORIES.items())]
    (coco / "annotations/instances_train2017.json").write_text(json.dumps(data))
    return splits


def _overrides(root: Path) -> dict:
    train = {"backbone": "small", "weights": None, "crop": 48, "batch_size": 4, "epochs": 2, "optimizer": "adamw",
             "lr": 0.002}
    return {
        "device": "cpu",  # the paper config asks for cuda; this machine may have none
        "shards": 2,
        "num_workers": 0,
        "dataset": {"root": str(root / "VOCdevkit/VOC2012")},
        "coco": {"image_dir": str(root / "coco/train2017"),
                 "annotations": str(root / "coco/annotations/instances_train2017.json")},
        "cam": {**train, "epochs": 2, "scales": [1.0]},
        "segmenter": {**train, "width": 32},
        "deeplab": dict(train),
        "reseg": {"keep_rounds": True},
        "inference": {"batch_size": 1, "workers": 0},
        "report": {"overlay_images": 3},
    }


def _snakemake(workdir: Path, *args: str, configs: list[Path], check: bool = True, env: dict | None = None):
    # --configfile takes every following word: targets and flags must come before it.
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2", *args,
           "--configfile", *map(str, configs)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """The tiny real-names tree, built once for this module (runs only read it)."""
    root = tmp_path_factory.mktemp("paper_data")
    return root, _build_tree(root)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, paper_data):
    data, splits = paper_data
    workdir = tmp_path_factory.mktemp("paper_setting")
    override = workdir / "small_models.yaml"
    override.write_text(yaml.safe_dump(_overrides(data)))
    # The real config is the only base: the Snakefile's own configfile (config/config.yaml, resolved
    # against the working directory) does not exist here, so nothing of the demo config leaks in.
    assert not (workdir / "config").exists()
    _snakemake(workdir, configs=[REPO / "config/voc12_coco.yaml", override])
    return workdir, splits


def _json(workdir: Path, rel: str) -> dict:
    return json.loads((workdir / rel).read_text())


def test_whole_dag_completes(paper_run):
    workdir, _ = paper_run
    for rel in ["results/report.html", "results/eval/supervision_gap_val.json", "results/eval/cams_train.json",
                "results/export/deeplab-pytorch/ImageSets/SegmentationAug/train_aug.txt"]:
        assert (workdir / rel).is_file(), rel
    assert not list(workdir.glob("results/**/*.tmp"))
    assert not (workdir / "results/demo").exists(), "demo.enabled is false in the real config"


def test_pseudo_masks_scored_on_train(paper_run):
    workdir, splits = paper_run
    result = _json(workdir, "results/eval/masks_train.json")
    assert result["split"] == "train" and result["n_images"] == len(splits["train"]) == N_TRAIN
    cams = _json(workdir, "results/eval/cams_train.json")
    assert cams["split"] == "train" and cams["n_images"] == N_TRAIN


def test_masks_for_every_train_aug_image(paper_run):
    workdir, splits = paper_run
    masks = sorted(p.stem for p in (workdir / "results/masks/train_aug").glob("*.png"))
    assert masks == sorted(splits["train_aug"])
    present = set()
    for image_id in splits["train_aug"]:
        with Image.open(workdir / f"results/masks/train_aug/{image_id}.png") as img:
            assert img.mode == "P"
            present |= set(np.unique(np.asarray(img)).tolist())
    # only the four mapped VOC classes (and background / ignore) can be predicted
    assert present <= {0, 1, 8, 12, 15, 255}
    export = (workdir / "results/export/deeplab-pytorch/ImageSets/SegmentationAug/train_aug.txt").read_text()
    assert len(export.splitlines()) == len(splits["train_aug"])


def test_deeplab_scored_on_val(paper_run):
    workdir, splits = paper_run
    for labels in ("pseudo", "gt"):
        result = _json(workdir, f"results/eval/deeplab_{labels}_val.json")
        assert result["split"] == "val" and result["n_images"] == len(splits["val"])
    gap = _json(workdir, "results/eval/supervision_gap_val.json")
    assert gap["split"] == "val" and 0 <= gap["miou_pseudo"] <= 1 and 0 <= gap["miou_gt"] <= 1


def test_metrics_use_the_21_voc_classes(paper_run):
    workdir, _ = paper_run
    for rel in ("results/eval/cams_train.json", "results/eval/masks_train.json", "results/eval/deeplab_gt_val.json"):
        # JSON is written with sorted keys, so compare as sets (and count: no extra or missing class)
        per_class = _json(workdir, rel)["per_class"]
        assert len(per_class) == 21 and set(per_class) == set(VOC_CLASSES), rel
    assert len(VOC_CLASSES) == 21


# --------------------------------------------------------------------------- weights: imagenet

# Any download goes to a closed local port: a test that tried to reach the internet fails instead.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}
MODELS = ["results/models/cam.pt", "results/models/segmenter.pt", "results/models/deeplab_gt.pt"]


def _resnet_overrides(root: Path) -> dict:
    """The paper's weights and optimisers; crops, batches, epochs and widths shrink, and ResNet-50 stands in
    for ResNet-101 (same code path, half the CPU time; the file names of both are tested in test_weights)."""
    small = _overrides(root)
    for stage in ("cam", "segmenter", "deeplab"):
        small[stage] = {k: v for k, v in small[stage].items() if k not in ("weights", "optimizer", "lr")}
        small[stage].update(backbone="resnet50", epochs=1)
    return small


def _run_models(workdir: Path, data: Path, torch_home: Path, check: bool = True):
    override = workdir / "resnet_models.yaml"
    override.write_text(yaml.safe_dump(_resnet_overrides(data)))
    return _snakemake(workdir, *MODELS, configs=[REPO / "config/voc12_coco.yaml", override], check=check,
                      env={"TORCH_HOME": str(torch_home), **OFFLINE})


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory, paper_data, imagenet_home):
    workdir = tmp_path_factory.mktemp("paper_imagenet")
    _run_models(workdir, paper_data[0], imagenet_home[0])
    return workdir, imagenet_home


def test_paper_config_asks_for_imagenet():
    config = yaml.safe_load((REPO / "config/voc12_coco.yaml").read_text())
    assert {s: config[s]["weights"] for s in ("cam", "segmenter", "deeplab")} == dict.fromkeys(
        ("cam", "segmenter", "deeplab"), "imagenet")


@pytest.mark.parametrize("model, prefix", [("cam", "backbone.body."), ("segmenter", "encoder.body."),
                                           ("deeplab_gt", "backbone.")])
def test_checkpoints_start_from_the_cached_imagenet_weights(imagenet_run, model, prefix):
    import torch

    workdir, (home, planted) = imagenet_run
    backbone = "resnet50"
    payload = torch.load(workdir / f"results/models/{model}.pt", weights_only=True)
    assert payload["meta"]["init"] == f"ImageNet ({backbone} IMAGENET1K_V1, torchvision)"
    for key in ("layer1.0.conv1.weight", "layer3.5.conv2.weight", "layer4.2.conv3.weight"):
        want = planted[backbone][key]
        # planted conv weights are 10x any random init: a model trained from scratch is ~0.9 of their size away
        drift = (payload["state_dict"][prefix + key] - want).abs().mean()
        assert drift < 0.05 * want.abs().mean(), f"{model}: {key} did not start from the cached weights"
    note = json.loads((workdir / f"results/weights/{backbone}.json").read_text())
    assert Path(note["path"]).parent == home / "hub" / "checkpoints"  # fetch_weights found it, fetched nothing


def test_missing_cache_offline_stops_before_training(tmp_path, paper_data):
    home = tmp_path / "empty_torch_home"
    proc = _run_models(tmp_path, paper_data[0], home, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    path = home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert "resnet50-0676ba61.pth: ImageNet weights of resnet50 are not in the torch cache" in out
    assert f"place it at {path}" in out, out[-3000:]
    assert not list(tmp_path.glob("results/logs/train_*")), "a training job started without its weights"
    assert not list(tmp_path.glob("results/models/*"))
