"""The real DAG on tiny demo data: outputs, formats, independent metric recomputation, staleness."""

from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.workflow.conftest import planned_jobs, snakemake, stored_maps
from tests.conftest import CLASSES

pytestmark = pytest.mark.slow


def _ids(workdir, split):
    return (workdir / f"results/demo/voc/ImageSets/Segmentation/{split}.txt").read_text().split()


def _load(path):
    with Image.open(path) as img:
        return img.mode, np.asarray(img)


def test_every_final_output_exists(tiny_run):
    for rel in ["results/eval/cams_train.json", "results/eval/cams_train_threshold.png",
                "results/eval/masks_train.json", "results/eval/masks_train_per_class.png",
                "results/eval/masks_train_overlay.png", "results/eval/deeplab_pseudo_val.json",
                "results/eval/deeplab_gt_val.json", "results/eval/supervision_gap_val.json",
                "results/export/deeplab-pytorch/ImageSets/SegmentationAug/train_aug.txt"]:
        assert (tiny_run / rel).is_file(), rel
    assert not list(tiny_run.glob("results/**/*.tmp")), "a temporary file was left behind"
    assert not (tiny_run / "results/resume").exists(), "the training states' folder was left behind"


def test_every_rule_logged_and_benchmarked(tiny_run):
    rules = {p.name.removesuffix(".log") if p.is_file() else p.name for p in (tiny_run / "results/logs").iterdir()}
    benches = {p.name.removesuffix(".tsv") if p.is_file() else p.name
               for p in (tiny_run / "results/benchmarks").iterdir()}
    expected = {"demo_data", "image_labels", "train_cam", "extract_cams", "eval_cams", "train_segmenter",
                "resegment", "export_masks", "evaluate_masks", "train_deeplab", "evaluate_deeplab",
                "supervision_gap", "export_deeplab_pytorch"}
    assert expected <= rules and expected <= benches


def test_pseudo_masks_are_palette_pngs_at_image_size(tiny_run):
    ids = _ids(tiny_run, "train")
    masks = sorted(p.stem for p in (tiny_run / "results/masks/train").glob("*.png"))
    assert masks == sorted(ids)
    for image_id in ids:
        mode, mask = _load(tiny_run / f"results/masks/train/{image_id}.png")
        with Image.open(tiny_run / f"results/demo/voc/JPEGImages/{image_id}.jpg") as img:
            assert mask.shape == (img.height, img.width)
        assert mode == "P"
        assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4, 255}


def _gt(workdir, image_id):
    return _load(workdir / f"results/demo/voc/SegmentationClass/{image_id}.png")[1]


def _miou(pairs):
    """mIoU by plain per-class set counting over (prediction, GT) pairs, GT 255 ignored; not locseg.metrics."""
    inter, union = np.zeros(len(CLASSES)), np.zeros(len(CLASSES))
    for pred, gt in pairs:
        valid = gt != 255
        for c in range(len(CLASSES)):
            p, g = (pred == c) & valid, (gt == c) & valid
            inter[c] += (p & g).sum()
            union[c] += (p | g).sum()
    present = union > 0
    return float(np.mean(inter[present] / union[present]))


def test_mask_metrics_match_an_independent_recomputation(tiny_run):
    ids = _ids(tiny_run, "train")
    expected = _miou((_load(tiny_run / f"results/masks/train/{i}.png")[1], _gt(tiny_run, i)) for i in ids)
    result = json.loads((tiny_run / "results/eval/masks_train.json").read_text())
    assert result["split"] == "train" and result["n_images"] == len(ids)
    assert result["miou"] == pytest.approx(expected, abs=1e-12)
    assert [r["round"] for r in result["rounds"]] == [1, 2]


def test_cam_baseline_matches_an_independent_recomputation(tiny_run):
    """At the reported threshold: background where no map exceeds it, else the class of the largest map."""
    result = json.loads((tiny_run / "results/eval/cams_train.json").read_text())
    t = result["best_threshold"]
    assert result["miou"] == max(s["miou"] for s in result["sweep"])

    def label(maps, classes):  # float32, as the store reader hands the float16 maps to eval_cams
        maps = maps.astype(np.float32)
        if len(classes) == 0:
            return np.zeros(maps.shape[1:], np.uint8)
        return np.where(maps.max(0) > t, np.asarray(classes)[maps.argmax(0)], 0)

    maps = stored_maps(tiny_run, "train")
    expected = _miou((label(*maps[i]), _gt(tiny_run, i)) for i in _ids(tiny_run, "train"))
    assert result["miou"] == pytest.approx(expected, abs=1e-12)


def test_deeplab_metrics_and_ratio_match_an_independent_recomputation(tiny_run):
    scores = {}
    for labels in ("pseudo", "gt"):
        result = json.loads((tiny_run / f"results/eval/deeplab_{labels}_val.json").read_text())
        preds = tiny_run / f"results/predictions/deeplab_{labels}/val"
        ids = _ids(tiny_run, "val")
        expected = _miou((_load(preds / f"{i}.png")[1], _gt(tiny_run, i)) for i in ids)
        assert result["split"] == "val" and result["n_images"] == len(ids)
        assert result["miou"] == pytest.approx(expected, abs=1e-12)
        scores[labels] = expected
    gap = json.loads((tiny_run / "results/eval/supervision_gap_val.json").read_text())
    assert gap["ratio"] == pytest.approx(scores["pseudo"] / scores["gt"], abs=1e-12)


def test_quality_floor_masks_beat_the_cam_baseline_and_all_background(tiny_run):
    """Even the tiny run must show the method working: resegmented masks clearly above the CAM baseline
    and above labelling every pixel background (training that does not train fails here)."""
    ids = _ids(tiny_run, "train")
    all_background = _miou((np.zeros_like(_gt(tiny_run, i)), _gt(tiny_run, i)) for i in ids)
    cams = json.loads((tiny_run / "results/eval/cams_train.json").read_text())["miou"]
    masks = json.loads((tiny_run / "results/eval/masks_train.json").read_text())["miou"]
    assert masks > cams + 0.05, (masks, cams)
    assert masks > all_background + 0.05, (masks, all_background)


def test_store_files_follow_the_documented_layout(tiny_run):
    for path in sorted((tiny_run / "results/cams/train").glob("*.h5")):
        with h5py.File(path, "r") as f:
            assert f.attrs["format"] == "locseg.store" and f.attrs["version"] == 1 and f.attrs["kind"] == "cam"
            assert list(f.attrs["class_names"]) == CLASSES
            groups = [k for k in f.keys() if not k.startswith("_")]
            assert groups
            g = f[groups[0]]
            assert g["maps"].dtype == np.float16 and g["classes"].dtype == np.int16
            assert g["maps"].shape[1:] == (g.attrs["height"], g.attrs["width"])


def test_deeplab_pytorch_export_is_single_channel(tiny_run):
    root = tiny_run / "results/export/deeplab-pytorch"
    lines = (root / "ImageSets/SegmentationAug/train_aug.txt").read_text().splitlines()
    assert len(lines) == len(_ids(tiny_run, "train"))
    image_rel, label_rel = lines[0].split()
    mode, label = _load(root / label_rel.lstrip("/"))
    assert mode == "L" and (root / image_rel.lstrip("/")).resolve().is_file()


def test_second_run_has_nothing_to_do(tiny_run):
    proc = snakemake(tiny_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr


def test_reseg_knob_reruns_only_downstream_stages(tiny_run):
    jobs = planned_jobs(tiny_run, {"reseg": {"rounds": 3}})
    assert jobs == {"resegment": 2, "export_masks": 1, "evaluate_masks": 1, "train_deeplab": 1,
                    "evaluate_deeplab": 1, "supervision_gap": 1, "export_deeplab_pytorch": 1, "report": 1,
                    "all": 1}


def test_background_score_reruns_from_label_assembly(tiny_run):
    jobs = planned_jobs(tiny_run, {"reseg": {"bg_score": 0.6}})  # not the default (0.4)
    assert jobs == {"export_masks": 1, "evaluate_masks": 1, "train_deeplab": 1, "evaluate_deeplab": 1,
                    "supervision_gap": 1, "export_deeplab_pytorch": 1, "report": 1, "all": 1}


def test_deeplab_knob_reruns_only_deeplab(tiny_run):
    jobs = planned_jobs(tiny_run, {"deeplab": {"lr": 0.001}})
    assert jobs == {"train_deeplab": 2, "evaluate_deeplab": 2, "supervision_gap": 1, "report": 1, "all": 1}


def test_cam_weights_make_both_deeplabs_wait_for_the_cam_net(tiny_run):
    """deeplab.weights: cam (the demo default): the GT-trained DeepLab starts from the CAM net too, so a
    retrained CAM net reruns it; from other weights it needs no CAMs."""
    mtime_only = ("--forcerun", "train_cam", "--rerun-triggers", "mtime")  # params changes aside
    assert planned_jobs(tiny_run, None, *mtime_only)["train_deeplab"] == 2
    assert planned_jobs(tiny_run, {"deeplab": {"weights": None}}, *mtime_only)["train_deeplab"] == 1


def test_cam_scale_reruns_extraction_but_not_training(tiny_run):
    jobs = planned_jobs(tiny_run, {"cam": {"scales": [1.0]}})
    assert "train_cam" not in jobs and "train_deeplab" in jobs and jobs["report"] == 1
    assert jobs["extract_cams"] == 4 and jobs["train_segmenter"] == 1 and jobs["resegment"] == 2


def test_canvas_reruns_the_per_image_stages_and_speed_settings_rerun_nothing(tiny_run):
    jobs = planned_jobs(tiny_run, {"inference": {"canvas": True}})  # changes the maps: a param
    assert "train_cam" not in jobs and jobs["extract_cams"] == 4 and jobs["resegment"] == 2
    assert jobs["train_deeplab"] == 1 and jobs["report"] == 1  # DeepLab on pseudo labels, not on GT
    # speed only: nothing reruns but the report, which prints the whole config
    assert planned_jobs(tiny_run, {"inference": {"batch_size": 4, "workers": 1}}) == {"report": 1, "all": 1}


def test_report_names_the_device_of_each_gpu_rule(tiny_run):
    rows = {}
    for line in (tiny_run / "results/report.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[1].isdigit():  # rule | jobs | total | longest | device
            rows[cells[0]] = cells[4]
    for rule in ("train_cam", "extract_cams", "train_segmenter", "resegment", "train_deeplab", "evaluate_deeplab"):
        assert rows[rule] == "cpu", (rule, rows)
    assert rows["image_labels"] == ""


def test_shard_count_does_not_change_the_maps(tiny_run, tmp_path):
    other = tmp_path / "resharded"
    shutil.copytree(tiny_run, other, symlinks=True)
    shutil.rmtree(other / "results/cams")
    snakemake(other, *[f"results/cams/train/{i:03d}.h5" for i in range(3)], overrides={"shards": 3})
    two, three = stored_maps(tiny_run, "train"), stored_maps(other, "train")
    assert sorted(two) == sorted(three) == sorted(_ids(tiny_run, "train"))
    for image_id, (maps, classes) in two.items():
        np.testing.assert_array_equal(three[image_id][1], classes)
        np.testing.assert_array_equal(three[image_id][0], maps)
