"""Config -> datasets: the one place that knows which split lives in which layout.

A VOC split is read from the VOC-layout tree; the reserved split name `coco` is the external
COCO-layout set seen through `coco.category_map`.
"""

from __future__ import annotations

from pathlib import Path

from locseg.data.coco import CocoSplit
from locseg.data.labels import read_labels
from locseg.data.voc import VocLayout

EXTERNAL = "coco"


def voc_layout(config: dict) -> VocLayout:
    ds = config["dataset"]
    return VocLayout(Path(ds["root"]), ds["image_dir"], ds["mask_dir"], ds["split_dir"])


def coco_split(config: dict) -> CocoSplit:
    coco = config["coco"]
    return CocoSplit(coco["annotations"], coco["image_dir"], coco["category_map"], config["classes"])


def image_paths(config: dict, split: str) -> dict[str, Path]:
    if split == EXTERNAL:
        coco = coco_split(config)
        return {i: coco.image_path(i) for i in coco.ids}
    layout = voc_layout(config)
    return {i: layout.image_path(i) for i in layout.ids(split)}


def gt_paths(config: dict, split: str) -> dict[str, Path]:
    layout = voc_layout(config)
    return {i: layout.mask_path(i) for i in layout.ids(split)}


def image_labels(config: dict, split: str, labels_json=None) -> dict[str, list[int]]:
    """Present classes per image: from COCO annotations, or the image_labels stage's JSON."""
    if split == EXTERNAL:
        coco = coco_split(config)
        return {i: coco.labels(i) for i in coco.ids}
    return read_labels(labels_json, config["classes"])
