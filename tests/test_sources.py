"""Config -> datasets: which dataset files a split's stages may read (the workflow fingerprints them)."""

from __future__ import annotations

from pathlib import Path

from locseg.data.demo import DEMO_CLASSES, DEMO_COCO_CATEGORY_MAP
from locseg.sources import EXTERNAL, dataset_files


def _config(root: Path) -> dict:
    return {"classes": list(DEMO_CLASSES),
            "dataset": {"root": str(root / "voc"), "image_dir": "JPEGImages", "mask_dir": "SegmentationClass",
                        "split_dir": "ImageSets/Segmentation"},
            "coco": {"annotations": str(root / "coco/annotations/instances_train.json"),
                     "image_dir": str(root / "coco/images"), "category_map": DEMO_COCO_CATEGORY_MAP}}


def test_voc_split_files_are_the_listed_images_and_masks(tmp_path):
    lists = tmp_path / "voc/ImageSets/Segmentation"
    lists.mkdir(parents=True)
    (lists / "val.txt").write_text("a\nb\n")
    files = dataset_files(_config(tmp_path), "val")
    voc = tmp_path / "voc"
    assert files == {"images": [str(voc / "JPEGImages/a.jpg"), str(voc / "JPEGImages/b.jpg")],
                     "masks": [str(voc / "SegmentationClass/a.png"), str(voc / "SegmentationClass/b.png")]}
    assert dataset_files(_config(tmp_path), "train") == {"images": [], "masks": []}  # no list: validation says so


def test_coco_files_are_everything_under_its_image_dir(tmp_path):
    images = tmp_path / "coco/images"
    (images / "sub").mkdir(parents=True)
    (images / "1.jpg").write_bytes(b"x")
    (images / "sub/2.jpg").write_bytes(b"y")
    assert sorted(dataset_files(_config(tmp_path), EXTERNAL)["images"]) == [str(images / "1.jpg"),
                                                                           str(images / "sub/2.jpg")]
