"""External pixel labels in the COCO layout, read with pycocotools, as class-agnostic targets per (image, class)."""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from locseg.data.voc import IGNORE
from locseg.fsutil import read_json


class CocoSplit:
    """A COCO annotation file seen through a category-name map onto the project's classes."""

    def __init__(self, annotation_file: str | os.PathLike, image_dir: str | os.PathLike,
                 category_map: dict[str, str], class_names: list[str]):
        self.annotation_file = Path(annotation_file)
        self.image_dir = Path(image_dir)
        data = read_json(self.annotation_file)
        missing = [k for k in ("images", "annotations", "categories") if not isinstance(data, dict) or k not in data]
        if missing:
            raise ValueError(f"{self.annotation_file}: not a COCO instances file (missing keys {missing})")

        coco_names = sorted({c["name"] for c in data["categories"]})
        bad_keys = sorted(set(category_map) - set(coco_names))
        if bad_keys:
            raise ValueError(
                f"{self.annotation_file}: category_map names {bad_keys} are not categories of this file; "
                f"valid: {coco_names}"
            )
        foreground = list(class_names)[1:]
        bad_values = sorted(set(category_map.values()) - set(foreground))
        if bad_values:
            raise ValueError(
                f"category_map targets {bad_values} are not foreground classes; valid: {foreground}"
            )
        self._class_of = {c["id"]: list(class_names).index(category_map[c["name"]])
                          for c in data["categories"] if c["name"] in category_map}

        self._coco = COCO()
        self._coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on every load
            self._coco.createIndex()

        self._images = {str(i): img for i, img in self._coco.imgs.items()}
        self._category_ids = {c["id"] for c in data["categories"]}
        self._labels = {}
        for image_id, img in self._images.items():
            anns = self._coco.imgToAnns.get(img["id"], [])
            classes = {self._class_of[a["category_id"]] for a in anns
                       if not a.get("iscrowd", 0) and a["category_id"] in self._class_of}
            if classes:
                self._labels[image_id] = sorted(classes)
        self.ids: list[str] = sorted(self._labels, key=int)

    def _image(self, image_id: str) -> dict:
        if str(image_id) not in self._images:
            raise ValueError(f"{self.annotation_file}: no image with id {image_id}")
        return self._images[str(image_id)]

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / self._image(image_id)["file_name"]

    def labels(self, image_id: str) -> list[int]:
        """Project classes with at least one non-crowd instance in the image."""
        self._image(image_id)
        return list(self._labels.get(str(image_id), []))

    def size(self, image_id: str) -> tuple[int, int]:
        img = self._image(image_id)
        return int(img["height"]), int(img["width"])

    def target(self, image_id: str, class_index: int) -> np.ndarray:
        """uint8 [H, W]: 1 on the class's instances, 255 on its crowd regions (not also an instance), 0 elsewhere."""
        img = self._image(image_id)
        hw = self.size(image_id)
        objects = np.zeros(hw, dtype=bool)
        crowd = np.zeros(hw, dtype=bool)
        for ann in self._coco.imgToAnns.get(img["id"], []):
            if self._class_of.get(ann["category_id"]) != class_index:
                continue
            m = self._coco.annToMask(ann)
            if m.shape != hw:
                raise ValueError(
                    f"{self.annotation_file}: image {image_id}, annotation {ann['id']}: mask size {m.shape} "
                    f"differs from the image size {hw} in the file"
                )
            if ann.get("iscrowd", 0):
                crowd |= m.astype(bool)
            else:
                objects |= m.astype(bool)
        out = np.zeros(hw, dtype=np.uint8)
        out[crowd] = IGNORE
        out[objects] = 1
        return out

    def annotation_problems(self) -> dict[str, list[str]]:
        """Image id -> problems of its annotations, each naming file, annotation and image.

        Every annotation must name an existing image and a known category; those of mapped categories
        (the ones used) must decode: polygons of >= 3 points with an even number of coordinates, RLE of
        the image's size. Found here, a malformed annotation does not surface hours later as a bare
        pycocotools exception in train_segmenter.
        """
        problems: dict[str, list[str]] = {}
        for ann in self._coco.dataset["annotations"]:
            image_id = str(ann.get("image_id"))
            found = self._annotation_problem(ann)
            if found:
                problems.setdefault(image_id, []).append(
                    f"{self.annotation_file}: annotation {ann.get('id')}, image {image_id}: {found}")
        return problems

    def _annotation_problem(self, ann: dict) -> str | None:
        if str(ann.get("image_id")) not in self._images:
            return "no image with this id in the file"
        if ann.get("category_id") not in self._category_ids:
            return f"unknown category id {ann.get('category_id')}"
        if ann["category_id"] not in self._class_of:
            return None
        seg = ann.get("segmentation")
        hw = self.size(str(ann["image_id"]))
        if isinstance(seg, list):
            return _polygon_problem(seg)
        if isinstance(seg, dict):
            return _rle_problem(seg, hw)
        return f"segmentation is neither a polygon list nor an RLE dict ({type(seg).__name__})"

    def check_images(self) -> list[str]:
        """Problems with the used images (missing files), as messages, so a caller can report them all at once."""
        problems = []
        for image_id in self.ids:
            path = self.image_path(image_id)
            if not path.is_file():
                problems.append(f"{self.annotation_file}: image {image_id}: file {path} not found")
        return problems


def _polygon_problem(polygons: list) -> str | None:
    if not polygons:
        return "empty polygon list"
    for i, poly in enumerate(polygons):
        if not isinstance(poly, list) or not all(isinstance(v, (int, float)) for v in poly):
            return f"polygon {i} is not a list of numbers"
        if len(poly) % 2:
            return f"polygon {i} has an odd number of coordinates ({len(poly)})"
        if len(poly) < 6:
            return f"polygon {i} has {len(poly) // 2} point(s); at least 3 are needed"
    return None


def _rle_problem(rle: dict, hw: tuple[int, int]) -> str | None:
    size, counts = rle.get("size"), rle.get("counts")
    if size != list(hw):
        return f"RLE size {size} differs from the image size {list(hw)}"
    if isinstance(counts, list):
        if not all(isinstance(v, int) and v >= 0 for v in counts):
            return "RLE counts are not all non-negative integers"
        if sum(counts) != hw[0] * hw[1]:
            return f"RLE counts cover {sum(counts)} pixels, the image has {hw[0] * hw[1]}"
        return None
    if not isinstance(counts, str):
        return f"RLE counts are neither a list nor a string ({type(counts).__name__})"
    return None
