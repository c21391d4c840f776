"""Image overlays a person looks at: image | GT | CAM | pseudo mask | DeepLab, one row per image.

Used by evaluate_masks, the report and `locseg show`, so every grid shows the same views the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from locseg import viz
from locseg.data.voc import read_image, read_mask
from locseg.store import ShardedStore


def cam_panel(image: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """The CAM view of an image: its class maps' maximum as a heatmap (cold everywhere when it has none)."""
    cam = maps.max(0) if len(maps) else np.zeros(image.shape[:2], np.float32)
    return viz.heatmap(image, cam)


def sample_ids(ids: Sequence[str], n: int) -> list[str]:
    """A fixed, evenly spread sample, so overlays show the same images run after run."""
    ids = list(ids)
    if n >= len(ids):
        return ids
    step = len(ids) / n
    return [ids[int(i * step)] for i in range(n)]


def overlay_grid(path, ids: Sequence[str], image_paths: dict, gt_paths: dict, class_names: list[str], *,
                 cam_stores: Sequence | None = None, mask_dir=None, pred_dirs: dict[str, os.PathLike] | None = None,
                 ) -> list[str]:
    """image | GT | CAM | pseudo mask | DeepLab (per label source), one row per id; returns the column titles.

    Views that a split has no data for (no CAM store, no pseudo masks) are left out as columns; a file
    missing for one image leaves its cell blank.
    """
    n = len(class_names)
    titles = ["image", "ground truth"]
    if cam_stores:
        titles.append("CAM (max over classes)")
    if mask_dir is not None:
        titles.append("pseudo mask")
    pred_dirs = dict(pred_dirs or {})
    titles += [f"DeepLab ({labels} labels)" for labels in pred_dirs]

    def mask_panel(image, p):
        p = Path(p)
        return viz.blend(image, read_mask(p, n, image.shape[:2])) if p.is_file() else None

    cams = ShardedStore(cam_stores, kind="cam", class_names=class_names) if cam_stores else None
    try:
        rows = []
        for image_id in ids:
            image = read_image(image_paths[image_id])
            row = [image, mask_panel(image, gt_paths[image_id])]
            if cams is not None:
                row.append(cam_panel(image, cams.read(image_id)[0]) if image_id in cams else None)
            if mask_dir is not None:
                row.append(mask_panel(image, Path(mask_dir) / f"{image_id}.png"))
            row += [mask_panel(image, Path(d) / f"{image_id}.png") for d in pred_dirs.values()]
            rows.append(row)
    finally:
        if cams is not None:
            cams.close()
    viz.save_grid(path, rows, titles, list(ids))
    return titles
