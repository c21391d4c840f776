"""Image-level labels: which foreground classes each image contains (the only supervision CAMs get).

Stage format (JSON): {"class_names": [...], "labels": {"<id>": [sorted foreground indices 1..K-1]}}.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from locseg.data.voc import IGNORE, VocLayout, image_size, read_mask
from locseg.fsutil import read_json, write_json


def labels_from_masks(layout: VocLayout, ids: list[str], num_classes: int) -> dict[str, list[int]]:
    """Foreground classes present in each GT mask, as IRN's make_cls_labels does."""
    labels = {}
    for image_id in ids:
        mask = read_mask(layout.mask_path(image_id), num_classes, image_size(layout.image_path(image_id)))
        labels[image_id] = [int(c) for c in np.unique(mask) if c not in (0, IGNORE)]
    return labels


def _check(path, labels: dict[str, list[int]], ids: list[str], num_classes: int) -> dict[str, list[int]]:
    """Keep the requested ids, in order, after checking each is present with in-range indices."""
    missing = [i for i in ids if i not in labels]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{path}: no labels for {len(missing)} of {len(ids)} image ids: {shown}")
    out = {}
    for image_id in ids:
        classes = labels[image_id]
        if not isinstance(classes, list) or not all(
                isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 1 <= c < num_classes for c in classes):
            raise ValueError(
                f"{path}: image {image_id}: labels {classes!r} are not a list of foreground indices "
                f"1..{num_classes - 1}"
            )
        out[image_id] = sorted({int(c) for c in classes})
    return out


def _irn_labels(path: Path, ids: list[str], num_classes: int) -> dict[str, list[int]]:
    """IRN's cls_labels.npy: {id as int without '_' (or str): multi-hot over the K-1 foreground classes}."""
    try:
        table = np.load(path, allow_pickle=True).item()
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a pickled dict of multi-hot labels ({e})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a pickled dict of multi-hot labels, got {type(table).__name__}")
    labels = {}
    for image_id in ids:
        int_key = int(image_id.replace("_", "")) if image_id.replace("_", "").isdigit() else None
        key = image_id if image_id in table else int_key
        if key not in table:
            continue
        hot = np.asarray(table[key]).ravel()
        if hot.shape != (num_classes - 1,) or not np.isin(hot, (0, 1)).all():
            raise ValueError(
                f"{path}: image {image_id}: expected a 0/1 vector of length {num_classes - 1} "
                f"(foreground classes), got {hot.tolist()}"
            )
        labels[image_id] = [int(i) + 1 for i in np.flatnonzero(hot)]
    return labels


def read_labels_file(path: str | os.PathLike, ids: list[str], num_classes: int,
                     allow_pickle: bool = False) -> dict[str, list[int]]:
    """Labels for `ids` from a user file: JSON ({id: [indices]} or the stage format) or IRN's cls_labels.npy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: labels file not found")
    if path.suffix == ".json":
        data = read_json(path)
        if isinstance(data, dict) and "class_names" in data and isinstance(data.get("labels"), dict):
            if len(data["class_names"]) != num_classes:
                raise ValueError(
                    f"{path}: {len(data['class_names'])} class names {data['class_names']}, expected {num_classes}"
                )
            data = data["labels"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object mapping image id to class indices")
        return _check(path, data, ids, num_classes)
    if path.suffix == ".npy":
        if not allow_pickle:
            raise ValueError(
                f"{path}: IRN label files are Python pickles, and loading an untrusted pickle can run "
                f"arbitrary code; refused. If you trust this file, enable it with allow_pickle=True "
                f"(config: allow_pickle: true), or convert it to JSON."
            )
        return _check(path, _irn_labels(path, ids, num_classes), ids, num_classes)
    raise ValueError(f"{path}: unknown labels file type {path.suffix!r}; expected .json or .npy")


def write_labels(path: str | os.PathLike, labels: dict[str, list[int]], class_names: list[str]) -> None:
    """Write the stage format atomically, keys sorted so equal labels give equal bytes."""
    checked = _check(path, labels, sorted(labels), len(class_names))
    write_json(path, {"class_names": list(class_names), "labels": checked})


def read_labels(path: str | os.PathLike, class_names: list[str] | None = None) -> dict[str, list[int]]:
    """Read the stage format; with `class_names`, refuse labels made for another class list."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("class_names"), list) or not isinstance(
            data.get("labels"), dict):
        raise ValueError(f"{path}: expected {{'class_names': [...], 'labels': {{id: [indices]}}}}")
    if class_names is not None and list(class_names) != data["class_names"]:
        raise ValueError(f"{path}: class names {data['class_names']} differ from expected {list(class_names)}")
    return _check(path, data["labels"], sorted(data["labels"]), len(data["class_names"]))
