"""A generated tree laid out and named like the real data: VOCdevkit/VOC2012 (SegmentationClassAug, train_aug /
train / val lists, VOC ids like 2007_000032, 4 of the 21 VOC class indices) and COCO train2017 (real category
ids and names, 12-digit file names, non-contiguous image ids), for running config/voc12_coco.yaml itself.

The raw material is the demo generator at a given size preset (`tiny`: 48-72 px; `real`: VOC's and COCO's
image sizes), rewritten into those layouts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from locseg.data.demo import generate
from locseg.data.voc import write_mask
from tests.workflow.conftest import REPO

# demo class index -> VOC class index: ant -> aeroplane, bat -> cat, cow -> dog, elk -> person
CLASS_MAP = {0: 0, 1: 1, 2: 8, 3: 12, 4: 15, 255: 255}
# demo COCO category name -> (real COCO id, real COCO name); both demo "cow" categories become dog
COCO_RENAME = {"formicid": (5, "airplane"), "chiropteran": (17, "cat"), "bull": (18, "dog"),
               "heifer": (18, "dog"), "cervid": (1, "person"), "tortoise": (24, "zebra")}
# Every COCO category that config/voc12_coco.yaml maps (real ids), plus the unmapped zebra.
COCO_CATEGORIES = {1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train",
                   9: "boat", 16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 24: "zebra",
                   44: "bottle", 62: "chair", 63: "couch", 64: "potted plant", 67: "dining table", 72: "tv"}

# Any download goes to a closed local port: a test that tried to reach the internet fails instead.
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "no_proxy": "",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


def voc_id(i: int) -> str:
    return f"{2007 + i // 10}_{32 + 7 * i:06d}"


def build_tree(root: Path, size: str = "tiny", n_train: int | None = None) -> dict[str, list[str]]:
    """VOCdevkit/VOC2012 + coco/ under root; returns the split lists written. train is the first `n_train`
    (default 2/3) of train_aug, as VOC's train is a part of SBD's train_aug."""
    demo = root / "demo"
    generate(demo, seed=0, size=size)
    voc = root / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    demo_splits = {s: (demo / f"voc/ImageSets/Segmentation/{s}.txt").read_text().split() for s in ("train", "val")}
    rename = {d: voc_id(i) for i, d in enumerate(demo_splits["train"] + demo_splits["val"])}
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
    splits["train"] = splits["train_aug"][:n_train or len(splits["train_aug"]) * 2 // 3]
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


def data_paths(root: Path) -> dict:
    """The config keys that point config/voc12_coco.yaml at the tree under root."""
    return {"dataset": {"root": str(root / "VOCdevkit/VOC2012")},
            "coco": {"image_dir": str(root / "coco/train2017"),
                     "annotations": str(root / "coco/annotations/instances_train2017.json")}}


def run_snakemake(workdir: Path, *args: str, configs: list[Path], check: bool = True, env: dict | None = None,
                  cores: int = 2):
    # --configfile takes every following word: targets and flags must come before it.
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", str(cores), *args,
           "--configfile", *map(str, configs)]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc
