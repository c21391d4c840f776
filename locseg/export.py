"""Pseudo masks in the layout deeplab-pytorch trains from.

deeplab-pytorch reads labels with OpenCV as grayscale: a palette PNG would be turned into colour and
then into luminance, giving wrong (mostly out-of-range) indices and, in practice, a background-only
model. So labels are written as single-channel index PNGs and checked again after writing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from locseg.data.voc import IGNORE, read_mask
from locseg.fsutil import atomic_path
from locseg.train import progress

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
