import numpy as np
import pytest

from locseg.data import heldout
from locseg.data.coco import CocoSplit
from locseg.data.demo import _rng
from locseg.data.voc import VocLayout, read_mask
from locseg.validate import validate_coco, validate_voc

VARIANTS = sorted(heldout.VARIANTS)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("heldout")
    for v in VARIANTS:
        heldout.generate(root / v, v, seed=0, size="tiny")
    return root


def _scenes(variant, n=12):
    v = heldout.VARIANTS[variant]
    return [heldout._scene(_rng(0, 0, i), v, 1 + i % len(v["marks"])) for i in range(n)]


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_seed_same_bytes(tiny, tmp_path, variant):
    heldout.generate(tmp_path / "again", variant, seed=0, size="tiny")
    assert _files(tiny / variant) == _files(tmp_path / "again")
    heldout.generate(tmp_path / "other", variant, seed=1, size="tiny")
    jpg = next(p for p in _files(tmp_path / "other") if p.suffix == ".jpg")
    assert _files(tmp_path / "other")[jpg] != _files(tiny / variant)[jpg]


@pytest.mark.parametrize("variant", VARIANTS)
def test_layouts_validate_and_agree_with_the_classes(tiny, variant):
    classes = list(heldout.VARIANTS[variant]["classes"])
    layout = VocLayout(tiny / variant / "voc")
    problems, counts = validate_voc(layout, ["train", "val"], num_classes=len(classes))
    assert problems == [] and counts == {"train": 8, "val": 4}
    coco_dir = tiny / variant / "coco"
    problems, n = validate_coco(coco_dir / "annotations/instances_train.json", coco_dir / "images")
    assert problems == [] and n == 8
    seen = set()
    for i in layout.ids("train"):
        seen |= set(np.unique(read_mask(layout.mask_path(i), len(classes))).tolist())
    assert seen == set(range(len(classes)))  # every class appears in the 8 training images
    coco = CocoSplit(coco_dir / "annotations/instances_train.json", coco_dir / "images",
                     heldout.category_map(variant), classes)
    assert len(coco.ids) == 8
    for i in coco.ids:
        for c in coco.labels(i):
            assert (coco.target(i, c) == 1).any()


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown held-out dataset 'blob'"):
        heldout.generate(tmp_path / "x", "blob")


def test_slim_marks_lie_inside_thin_bodies():
    for scene in _scenes("slim"):
        for inst in scene["instances"]:
            assert not (heldout._grow(inst["head"]) & ~inst["body"]).any()  # the mark never meets the outline
            ys, xs = np.nonzero(inst["body"])
            eig = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(float)))
            assert eig[0] / eig[1] < 0.25  # minor axis under half the major: thin


def test_crowd_objects_touch():
    scenes = _scenes("crowd")
    for scene in scenes:
        inst = scene["instances"]
        assert len(inst) >= 2
        touching = [any((heldout._grow(a["visible"]) & b["visible"]).any() for b in inst if b is not a) for a in inst]
        assert sum(touching) >= 2
    assert max(len(np.unique(s["label"])) for s in scenes) >= 4  # several classes in one image


def test_wide_images_are_far_from_square():
    for scene in _scenes("wide"):
        h, w = scene["label"].shape
        assert max(h, w) / min(h, w) >= 1.5
