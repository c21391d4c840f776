"""The run report: numbers with their splits, NaN as n/a, embedded images, run times, config hash."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from locseg import viz
from locseg.fsutil import write_json
from locseg.report import benchmark_rows, fmt, result_rows, rule_devices, write_report
from locseg.config import config_hash
from tests.conftest import CLASSES


def _metrics(miou, split, n=12, ignored=0.0, **extra):
    per_class = {c: {"iou": miou, "precision": miou, "recall": miou} for c in CLASSES}
    per_class["elk"]["iou"] = math.nan
    return {"miou": miou, "pixel_acc": 0.9, "mean_acc": 0.8, "fw_iou": 0.85, "per_class": per_class,
            "n_images": n, "ignored_frac": ignored, "split": split, "confusion": [[1]], **extra}


@pytest.fixture
def run_dir(tmp_path) -> dict:
    """A hand-made results/ tree: metrics JSONs, PNGs and benchmark TSVs, as the pipeline leaves them."""
    res = tmp_path / "results"
    ev = res / "eval"
    paths = {
        "cams": ev / "cams_train.json", "masks": ev / "masks_train.json", "pseudo": ev / "deeplab_pseudo_val.json",
        "gt": ev / "deeplab_gt_val.json", "gap": ev / "supervision_gap_val.json",
    }
    write_json(paths["cams"], _metrics(0.4815, "train", best_threshold=0.25,
                                       sweep=[{"threshold": 0.25, "miou": 0.4815}]))
    write_json(paths["masks"], _metrics(0.6234, "train", ignored=0.0321, bg_score=0.5, band=0.1,
                                        rounds=[{"round": 1, "miou": 0.5912}, {"round": 2, "miou": 0.6123},
                                                {"round": 3, "miou": math.nan}]))
    write_json(paths["pseudo"], _metrics(0.5500, "val", n=6))
    write_json(paths["gt"], _metrics(0.7000, "val", n=6))
    write_json(paths["gap"], {"split": "val", "miou_pseudo": 0.55, "miou_gt": 0.70, "ratio": 0.55 / 0.70})
    plots = {}
    viz.plot_curve(ev / "cams_train_threshold.png", [0.1, 0.25], [0.3, 0.4815], "t", "mIoU", "sweep")
    plots["threshold curve (train)"] = ev / "cams_train_threshold.png"
    viz.plot_per_class(ev / "masks_train_per_class.png", {c: 0.5 for c in CLASSES}, "IoU")
    plots["per class (train)"] = ev / "masks_train_per_class.png"
    viz.save_grid(ev / "masks_train_overlay.png", [[np.zeros((8, 8, 3), np.uint8)]], ["image"])
    plots["overlay (train)"] = ev / "masks_train_overlay.png"
    bench = res / "benchmarks"
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, s in {"extract_cams/train/000.tsv": 10.0, "extract_cams/train/001.tsv": 30.5,
                   "train_cam.tsv": 100.25, "report.tsv": 999.0}.items():
        (bench / rel).parent.mkdir(parents=True, exist_ok=True)
        (bench / rel).write_text(header + f"{s}\t0:00:10\t1\t1\t1\t1\t0\t0\t1\t1\n")
    config = {"seed": 7, "classes": CLASSES, "cam": {"epochs": 3}}
    return {"tmp": tmp_path, "res": res, "paths": paths, "plots": plots, "bench": bench, "config": config}


def _write(run_dir) -> dict:
    p = run_dir["paths"]
    return write_report(run_dir["res"] / "report.html", run_dir["res"] / "report.md", cams_json=p["cams"],
                        masks_json=p["masks"], deeplab_jsons={"pseudo": p["pseudo"], "gt": p["gt"]},
                        gap_json=p["gap"], plots=run_dir["plots"], benchmarks_dir=run_dir["bench"],
                        config=run_dir["config"])


def test_fmt():
    assert fmt(0.61234, 100) == "61.2"
    assert fmt(math.nan) == fmt(None) == fmt("x") == fmt(math.inf) == "n/a"
    assert fmt(0.571428, digits=3) == "0.571"


def test_report_html_is_self_contained_and_complete(run_dir):
    _write(run_dir)
    html = (run_dir["res"] / "report.html").read_text()
    srcs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert len(srcs) == 3 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in html and "<link" not in html and "<style>" in html
    for number in ("48.1", "59.1", "61.2", "62.3", "55.0", "70.0", "3.2", "0.786"):
        assert number in html, number
    assert "threshold 0.25" in html
    assert re.search(r"resegmentation round 3</td><td>train</td><td class=\"num\">n/a", html)
    assert config_hash(run_dir["config"]) in html
    assert "seed: 7" in html  # the YAML dump
    for pkg in ("python", "torch", "locseg", "snakemake"):
        assert f"<td>{pkg}</td>" in html
    assert "<td>train</td>" in html and "<td>val</td>" in html


def test_deeplab_rows_say_how_deeplab_was_run():
    # Test-time scales and flip move the DeepLab figures by points: the row must say which were used.
    deeplab = {"pseudo": _metrics(0.5, "val", scales=[1.0], flip=False),
               "gt": _metrics(0.7, "val", scales=[1.25, 0.75, 1.0], flip=True),
               "old": _metrics(0.6, "val")}  # a JSON from before the keys existed
    rows = {r["what"]: r["note"] for r in result_rows({}, {}, deeplab, {})}
    assert rows["DeepLab trained on pseudo labels"] == "scale 1.00, no flip"
    assert rows["DeepLab trained on gt labels"] == "scales 0.75 / 1.00 / 1.25 + flip"
    assert rows["DeepLab trained on old labels"] == ""


def test_report_benchmarks(run_dir):
    result = _write(run_dir)
    rows = {r["rule"]: r for r in result["benchmarks"]}
    assert rows["extract_cams"] == {"rule": "extract_cams", "jobs": "2", "total_s": "40.5", "max_s": "30.5",
                                    "device": ""}  # no logs given
    assert rows["train_cam"]["total_s"] == "100.2" or rows["train_cam"]["total_s"] == "100.3"
    assert "report" not in rows  # its own timing is from the previous run
    assert [r["rule"] for r in result["benchmarks"]][:2] == ["train_cam", "extract_cams"]  # slowest first
    assert benchmark_rows(run_dir["tmp"] / "nowhere") == []


def test_report_shows_the_device_each_gpu_rule_ran_on(run_dir):
    from locseg.devices import pick_device
    from locseg.logs import log_to

    logs = run_dir["res"] / "logs"
    with log_to(logs / "extract_cams/train/000.log"):  # the line pick_device really writes
        pick_device("cpu")
    gpu = "INFO running on cuda:{} (NVIDIA H100 80GB HBM3), GPU GPU-5e1a-{} of this machine\n"  # its CUDA format
    (logs / "extract_cams/train/001.log").write_text("2026-11-27 INFO extract_cams: 8 images\n" + gpu.format(1, 1))
    (logs / "train_cam.log").write_text("2026-11-27 " + gpu.format(0, 0) + "epoch 1/3\n")
    (logs / "image_labels.log").write_text("2026-11-27 INFO wrote labels\n")  # no model, no device line
    assert rule_devices(logs) == {"extract_cams": "cpu, cuda:1 (NVIDIA H100 80GB HBM3)",
                                  "train_cam": "cuda:0 (NVIDIA H100 80GB HBM3)"}
    p = run_dir["paths"]
    result = write_report(run_dir["res"] / "report.html", run_dir["res"] / "report.md", cams_json=p["cams"],
                          masks_json=p["masks"], deeplab_jsons={"pseudo": p["pseudo"], "gt": p["gt"]},
                          gap_json=p["gap"], plots=run_dir["plots"], benchmarks_dir=run_dir["bench"],
                          config=run_dir["config"], logs_dir=logs)
    rows = {r["rule"]: r["device"] for r in result["benchmarks"]}
    assert rows["train_cam"] == "cuda:0 (NVIDIA H100 80GB HBM3)" and rows["extract_cams"].startswith("cpu, cuda:1")
    md = (run_dir["res"] / "report.md").read_text()
    assert "| device |" in md and "| cuda:0 (NVIDIA H100 80GB HBM3) |" in md
    assert "<td>cpu, cuda:1 (NVIDIA H100 80GB HBM3)</td>" in (run_dir["res"] / "report.html").read_text()


def test_markdown_twin_links_pngs_relatively(run_dir):
    _write(run_dir)
    md = (run_dir["res"] / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["eval/cams_train_threshold.png", "eval/masks_train_per_class.png",
                     "eval/masks_train_overlay.png"]
    assert all((run_dir["res"] / link).is_file() for link in links)
    assert "| 62.3 |" in md and "n/a" in md and config_hash(run_dir["config"]) in md
    assert not list(run_dir["res"].rglob("*.tmp"))


def test_missing_plot_is_an_error(run_dir):
    run_dir["plots"]["gone"] = run_dir["tmp"] / "gone.png"
    with pytest.raises(FileNotFoundError, match="gone.png"):
        _write(run_dir)
    assert not (run_dir["res"] / "report.html").exists()


def test_skipped_images_are_listed(run_dir):
    p = run_dir["paths"]
    validation = run_dir["res"] / "validate.json"
    validation.write_text(json.dumps({"kept": {"train": 10}, "skipped": {"train": ["img_7", "img_9"], "coco": []},
                                      "problems": ["train.txt [img_7]: x.jpg: file not found"]}))
    write_report(run_dir["res"] / "report.html", run_dir["res"] / "report.md", cams_json=p["cams"],
                 masks_json=p["masks"], deeplab_jsons={"pseudo": p["pseudo"], "gt": p["gt"]},
                 gap_json=p["gap"], plots=run_dir["plots"], benchmarks_dir=run_dir["bench"],
                 config=run_dir["config"], validation_json=validation)
    for name in ("report.html", "report.md"):
        text = (run_dir["res"] / name).read_text()
        assert "train: 2 skipped: img_7, img_9" in text and "train: 10 images used" in text
        assert "x.jpg: file not found" in text and "coco: 0 skipped" not in text


def test_models_say_how_they_started(run_dir):
    run_dir["config"].update(cam={"backbone": "resnet50", "weights": "imagenet"},
                             segmenter={"backbone": "resnet101", "weights": None},
                             deeplab={"backbone": "small", "weights": None})
    out = _write(run_dir)
    assert [r["init"] for r in out["models"]] == ["ImageNet (resnet50 IMAGENET1K_V1, torchvision)",
                                                  "trained from scratch", "random initialisation (demo backbone)"]
    md = (run_dir["res"] / "report.md").read_text()
    assert "| segmenter | resnet101 | trained from scratch |" in md
    assert "<td>segmenter</td><td>resnet101</td><td>trained from scratch</td>" in (run_dir["res"] / "report.html").read_text()
