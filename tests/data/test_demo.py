import contextlib
import io

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from locseg.data import demo
from locseg.data.coco import CocoSplit
from locseg.data.labels import labels_from_masks
from locseg.data.voc import VocLayout, image_size, read_image, read_mask

K = len(demo.DEMO_CLASSES)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "data"
    demo.generate(out, seed=0, size="tiny")
    return out


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes(tiny, tmp_path):
    demo.generate(tmp_path / "again", seed=0, size="tiny")
    first, again = _files(tiny), _files(tmp_path / "again")
    assert list(first) == list(again) and first == again
    demo.generate(tmp_path / "other", seed=1, size="tiny")
    other = _files(tmp_path / "other")
    assert other[next(p for p in other if p.suffix == ".jpg")] != first[next(p for p in first if p.suffix == ".jpg")]
    assert not list(tmp_path.glob("*.tmp"))


def test_regenerate_replaces_whole_tree(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    demo.generate(out, seed=0, size="tiny")
    assert not (out / "stale.txt").exists() and (out / "voc").is_dir()


def test_voc_layout(tiny):
    layout = VocLayout(tiny / "voc")
    sizes = demo.SIZES["tiny"]
    train, val = layout.ids("train"), layout.ids("val")
    assert (len(train), len(val)) == (sizes["train"], sizes["val"]) and not set(train) & set(val)
    shapes = set()
    for image_id in train + val:
        png = Image.open(layout.mask_path(image_id))
        assert png.mode == "P"
        assert set(np.unique(np.asarray(png)).tolist()) <= set(range(K)) | {255}
        hw = image_size(layout.image_path(image_id))
        read_mask(layout.mask_path(image_id), K, expected_hw=hw)
        assert read_image(layout.image_path(image_id)).shape == (*hw, 3)
        shapes.add(hw)
    assert len(shapes) > 1 and any(h != w for h, w in shapes)  # sizes vary and are not square
    for split in (train, val):
        present = set().union(*labels_from_masks(layout, split, K).values())
        assert present == set(range(1, K))


def test_coco_layout(tiny):
    ann = tiny / "coco" / "annotations" / "instances_train.json"
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(ann))
    cats = {c["name"]: c["id"] for c in coco.loadCats(coco.getCatIds())}
    assert set(demo.DEMO_COCO_CATEGORY_MAP) < set(cats) and set(demo.DEMO_COCO_CATEGORY_MAP) != set(cats)
    assert set(demo.DEMO_COCO_CATEGORY_MAP.values()) == set(demo.DEMO_CLASSES[1:])
    assert not set(demo.DEMO_COCO_CATEGORY_MAP) & set(demo.DEMO_CLASSES)
    kinds = set()
    for a in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(a)
        img = coco.imgs[a["image_id"]]
        assert m.shape == (img["height"], img["width"])
        assert m.sum() == a["area"] > 0
        ys, xs = np.nonzero(m)
        assert a["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
        kinds.add("crowd" if a["iscrowd"] else "polygon" if isinstance(a["segmentation"], list) else "rle")
    assert kinds == {"crowd", "polygon", "rle"}

    split = CocoSplit(ann, tiny / "coco" / "images", demo.DEMO_COCO_CATEGORY_MAP, list(demo.DEMO_CLASSES))
    assert split.check_images() == []
    assert len(split.ids) < len(coco.imgs)  # an image holding only the unmapped kind is left out
    assert set().union(*(split.labels(i) for i in split.ids)) == set(range(1, K))
    for image_id in split.ids:
        assert read_image(split.image_path(image_id)).shape[:2] == split.size(image_id)
        for c in split.labels(image_id):
            assert (split.target(image_id, c) == 1).any()


def test_heads_are_small(tiny):
    """Each object's head colour covers only a small share of the object's visible area."""
    layout = VocLayout(tiny / "voc")
    for image_id in layout.ids("train"):
        image = read_image(layout.image_path(image_id)).astype(float)
        mask = read_mask(layout.mask_path(image_id), K)
        for c in set(np.unique(mask).tolist()) - {0, 255}:
            head = np.linalg.norm(image - demo._HEAD_COLOURS[c], axis=2) < 45
            share = (head & (mask == c)).sum() / (mask == c).sum()
            assert 0 < share < 0.35, (image_id, c, share)


def test_unknown_size(tmp_path):
    with pytest.raises(ValueError, match="huge"):
        demo.generate(tmp_path / "x", size="huge")
