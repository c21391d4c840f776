"""Pseudo masks: label assembly from per-class scores, the palette PNGs, and the deeplab-pytorch export.

deeplab-pytorch reads labels with OpenCV as grayscale: a palette PNG would be turned into colour and
then into luminance, giving wrong (mostly out-of-range) indices and, in practice, a background-only
model. So the export writes single-channel index PNGs and checks them again after writing.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from locseg.data.voc import IGNORE, read_mask, write_mask
from locseg.fsutil import atomic_path
from locseg.store import ShardedStore
from locseg.runtime import progress

log = logging.getLogger("locseg.masks")

def assemble_labels(maps: np.ndarray, classes, bg_score: float, band: float = 0.0) -> np.ndarray:
    """Label map from per-class scores: argmax over a constant background score and the present
    classes. Pixels whose best object score lies within `band` of the background score are unsure
    and become 255, so a model trained on them ignores them. Also gives the CAM baseline (bg_score =
    the background threshold)."""
    k, h, w = maps.shape
    if k == 0:
        return np.zeros((h, w), np.uint8)
    lut = np.array([0, *classes], np.uint8)
    best = maps.max(0)
    label = lut[np.where(best > bg_score, maps.argmax(0) + 1, 0)]
    if band > 0:
        label[np.abs(best - bg_score) < band] = IGNORE
    return label


def export_masks(prob_store_paths: list, class_names: list[str], out_dir, *, bg_score: float = 0.5,
                 band: float = 0.0) -> int:
    """One VOC-palette PNG per image; the directory appears whole or not at all."""
    with atomic_path(out_dir) as tmp, ShardedStore(prob_store_paths, kind="prob", class_names=class_names) as probs:
        tmp.mkdir()
        for image_id in progress(probs.ids, desc="export_masks"):
            maps, classes = probs.read(image_id)
            write_mask(tmp / f"{image_id}.png", assemble_labels(maps, classes, bg_score, band))
        n = len(probs)
    log.info("wrote %d masks to %s", n, out_dir)
    return n


LIST_FILE = "ImageSets/SegmentationAug/train_aug.txt"


def export_deeplab_pytorch(mask_dir, image_paths: dict[str, Path], num_classes: int, out_root) -> None:
    """JPEGImages/ (symlinks to the original images), SegmentationClassAug/ (index PNGs), train_aug.txt."""
    mask_dir = Path(mask_dir)
    with atomic_path(out_root) as tmp:
        (tmp / "JPEGImages").mkdir(parents=True)
        (tmp / "SegmentationClassAug").mkdir()
        lines = []
        for image_id, image_path in progress(image_paths.items(), desc="export_deeplab_pytorch",
                                             total=len(image_paths)):
            mask = read_mask(mask_dir / f"{image_id}.png", num_classes)  # refuses RGB / out-of-range
            label_path = tmp / "SegmentationClassAug" / f"{image_id}.png"
            Image.fromarray(mask, mode="L").save(label_path)
            check_index_png(label_path, num_classes)
            os.symlink(Path(image_path).resolve(), tmp / "JPEGImages" / f"{image_id}.jpg")
            lines.append(f"/JPEGImages/{image_id}.jpg /SegmentationClassAug/{image_id}.png\n")
        list_file = tmp / LIST_FILE
        list_file.parent.mkdir(parents=True)
        list_file.write_text("".join(lines))


def check_index_png(path, num_classes: int) -> None:
    """What deeplab-pytorch needs: one 8-bit channel whose values are class indices or 255."""
    with Image.open(path) as img:
        if img.mode != "L":
            raise ValueError(f"{path}: mode {img.mode}, deeplab-pytorch needs a single-channel (L) index PNG")
        values = np.unique(np.asarray(img))
    bad = [int(v) for v in values if v >= num_classes and v != IGNORE]
    if bad:
        raise ValueError(f"{path}: values {bad} are not class indices 0..{num_classes - 1} or {IGNORE}")
