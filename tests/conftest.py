"""Fixtures shared by the stage tests."""

from __future__ import annotations

import pytest
import torch

from locseg.data import demo
from locseg.data.coco import CocoSplit
from locseg.data.labels import labels_from_masks
from locseg.data.voc import VocLayout


CLASSES = list(demo.DEMO_CLASSES)  # the demo's class names, background first
K = len(CLASSES)
CPU = torch.device("cpu")
FAST = dict(crop=32, batch_size=4, epochs=1, device="cpu")  # a training call that takes about a second


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """The tiny demo dataset (generated once; tests only read it) and its train split seen every way."""
    out = tmp_path_factory.mktemp("demo") / "data"
    demo.generate(out, seed=0, size="tiny")
    layout = VocLayout(out / "voc")
    ids = layout.ids("train")
    classes = CLASSES
    return {
        "layout": layout,
        "ids": ids,
        "image_paths": {i: layout.image_path(i) for i in ids},
        "mask_paths": {i: layout.mask_path(i) for i in ids},
        "labels": labels_from_masks(layout, ids, len(classes)),
        "coco": CocoSplit(out / "coco/annotations/instances_train.json", out / "coco/images",
                          demo.DEMO_COCO_CATEGORY_MAP, classes),
    }
