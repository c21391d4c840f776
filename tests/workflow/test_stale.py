"""Staleness beyond config: dataset files and library code rerun exactly the jobs that depend on them.

Each test edits a copy of one real tiny run and asserts the job set of a dry run (cheap: no training).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.workflow.conftest import REPO, planned_jobs, snakemake

pytestmark = pytest.mark.slow

VOC = "results/demo/voc"
VAL_EVALUATION = {"evaluate_deeplab": 2, "supervision_gap": 1, "report": 1, "all": 1}
AFTER_VALIDATION = {"image_labels": 1, "train_cam": 1, "extract_cams": 4, "eval_cams": 1, "train_segmenter": 1,
                    "resegment": 2, "export_masks": 1, "evaluate_masks": 1, "export_deeplab_pytorch": 1,
                    "train_deeplab": 2, "evaluate_deeplab": 2, "supervision_gap": 1, "report": 1, "all": 1}


def _first_id(workdir, split):
    return (workdir / f"{VOC}/ImageSets/Segmentation/{split}.txt").read_text().split()[0]


def _change_pixel(path, value):
    """Rewrite an image with its top-left pixel set to `value` (palette, mode and format kept)."""
    with Image.open(path) as img:
        img.load()
        arr = np.asarray(img).copy()
        arr[0, 0] = value
        out = Image.fromarray(arr, mode=img.mode)
        if img.mode == "P":
            out.putpalette(img.getpalette())
    out.save(path)


def test_val_gt_mask_edit_reruns_only_val_evaluation(tiny_copy):
    _change_pixel(tiny_copy / f"{VOC}/SegmentationClass/{_first_id(tiny_copy, 'val')}.png", 255)
    assert planned_jobs(tiny_copy) == VAL_EVALUATION


def test_train_image_edit_reruns_the_stages_that_read_it_onward(tiny_copy):
    """train is the CAM, pseudo and pseudo_eval split here: every stage after validation reads its images
    (image_labels their headers, to check the mask sizes), but validation does not run again."""
    _change_pixel(tiny_copy / f"{VOC}/JPEGImages/{_first_id(tiny_copy, 'train')}.jpg", (0, 0, 0))
    assert planned_jobs(tiny_copy) == AFTER_VALIDATION


def test_coco_image_edit_reruns_the_segmenter_side_only(tiny_copy):
    """COCO images feed CAMs of the coco split and the segmenter, not the CAM net or the GT DeepLab."""
    image = sorted((tiny_copy / "results/demo/coco/images").iterdir())[0]
    _change_pixel(image, (0, 0, 0))
    assert planned_jobs(tiny_copy) == {
        "extract_cams": 2, "train_segmenter": 1, "resegment": 2, "export_masks": 1,
        "evaluate_masks": 1, "export_deeplab_pytorch": 1, "train_deeplab": 1, "evaluate_deeplab": 1,
        "supervision_gap": 1, "report": 1, "all": 1}


def test_split_list_change_reruns_validation_onward(tiny_copy):
    """validate_dataset writes every split's list, so a list change reruns it and everything after it."""
    voc = tiny_copy / VOC
    source = _first_id(tiny_copy, "train")
    shutil.copy(voc / f"JPEGImages/{source}.jpg", voc / "JPEGImages/added.jpg")
    shutil.copy(voc / f"SegmentationClass/{source}.png", voc / "SegmentationClass/added.png")
    assert "Nothing to be done" in _dry_run(tiny_copy), "an image no split lists must not rerun anything"
    with open(voc / "ImageSets/Segmentation/val.txt", "a") as f:
        f.write("added\n")
    assert planned_jobs(tiny_copy) == {"validate_dataset": 1, **AFTER_VALIDATION}


def test_listed_file_removed_reruns_validation_onward(tiny_copy):
    """validate_dataset decides which ids the stages see, so it checks again when a listed file goes."""
    (tiny_copy / f"{VOC}/SegmentationClass/{_first_id(tiny_copy, 'val')}.png").unlink()
    assert planned_jobs(tiny_copy) == {"validate_dataset": 1, **AFTER_VALIDATION}


def _dry_run(workdir, repo=REPO):
    proc = snakemake(workdir, "-n", repo=repo)
    return proc.stdout + proc.stderr


@pytest.fixture()
def repo_copy(tmp_path):
    """A copy of the workflow and the locseg package to edit (mtimes kept: the scripts stay as old as the run)."""
    shutil.copy2(REPO / "Snakefile", tmp_path)
    for name in ("workflow", "config", "profiles", "locseg"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_library_edit_reruns_the_stages_that_import_it(tiny_run, repo_copy):
    """eval_cams, evaluate_masks and evaluate_deeplab import locseg.evaluate; the rest follows them."""
    module = repo_copy / "locseg/evaluate.py"
    module.write_text(module.read_text() + "\n# a comment changes no result\n")
    assert "Nothing to be done" in _dry_run(tiny_run, repo_copy)
    module.write_text(module.read_text().replace("def eval_cams(", "def _unused():\n    return 1\n\n\ndef eval_cams(", 1))
    assert planned_jobs(tiny_run, repo=repo_copy) == {"eval_cams": 1, "evaluate_masks": 1, **VAL_EVALUATION}
