"""Config -> datasets: the one place that knows which split lives in which layout.

A VOC split is read from the VOC-layout tree; the reserved split name `coco` is the external
COCO-layout set seen through `coco.category_map`. Which ids a split holds comes from a list file the
caller names (the workflow passes the lists validate_dataset wrote, so a skipped image is skipped
everywhere); this module knows no workflow paths.
"""

from __future__ import annotations

from pathlib import Path

from locseg.data.coco import CocoSplit
from locseg.data.labels import read_labels
from locseg.data.voc import VocLayout, read_split
from locseg.fingerprint import tree_files

EXTERNAL = "coco"


def voc_layout(config: dict) -> VocLayout:
    ds = config["dataset"]
    return VocLayout(Path(ds["root"]), ds["image_dir"], ds["mask_dir"], ds["split_dir"])


def coco_split(config: dict, split_file=None) -> CocoSplit:
    """The external split: the ids listed in split_file, or (None) every image the map gives a class."""
    coco = config["coco"]
    split = CocoSplit(coco["annotations"], coco["image_dir"], coco["category_map"], config["classes"])
    if split_file is not None:
        split.ids = read_split(split_file)
    return split


def image_paths(config: dict, split: str, split_file) -> dict[str, Path]:
    if split == EXTERNAL:
        coco = coco_split(config, split_file)
        return {i: coco.image_path(i) for i in coco.ids}
    layout = voc_layout(config)
    return {i: layout.image_path(i) for i in read_split(split_file)}


def gt_paths(config: dict, split_file) -> dict[str, Path]:
    layout = voc_layout(config)
    return {i: layout.mask_path(i) for i in read_split(split_file)}


def images_and_labels(config: dict, split: str, split_file, labels_json=None
                      ) -> tuple[dict[str, Path], dict[str, list[int]]]:
    """Image paths and present classes per image: from COCO annotations (read once: train2017's file is
    large), or the split list and the image_labels stage's JSON."""
    if split == EXTERNAL:
        coco = coco_split(config, split_file)
        return {i: coco.image_path(i) for i in coco.ids}, {i: coco.labels(i) for i in coco.ids}
    return image_paths(config, split, split_file), read_labels(labels_json, config["classes"])


def dataset_files(config: dict, split: str) -> dict[str, list[str]]:
    """The files a split's stages may read, by kind: 'images' and 'masks' of every id its raw split list
    names (none if the list is missing or broken: validate_dataset reports that). For the COCO split,
    'images' is every file under coco.image_dir: its image list is inside an annotation file too large
    to parse for a dry run."""
    if split == EXTERNAL:
        return {"images": tree_files(config["coco"]["image_dir"])}
    layout = voc_layout(config)
    try:
        ids = read_split(layout.split_file(split))
    except (FileNotFoundError, ValueError):
        ids = []
    return {"images": [str(layout.image_path(i)) for i in ids], "masks": [str(layout.mask_path(i)) for i in ids]}
