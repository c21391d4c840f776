"""Bad input stops the DAG at its first step, naming the file; with skip, the image is left out everywhere."""

from __future__ import annotations

import json

import pytest

from locseg.data.demo import generate
from tests.workflow.conftest import snakemake

pytestmark = pytest.mark.slow


@pytest.fixture()
def broken(tmp_path):
    """A tiny demo tree outside results/ with one train image deleted; config points at it."""
    data = tmp_path / "data"
    generate(data, seed=0, size="tiny")
    victim = (data / "voc/ImageSets/Segmentation/train.txt").read_text().split()[1]
    (data / "voc/JPEGImages" / f"{victim}.jpg").unlink()
    overrides = {"demo": {"enabled": False},
                 "dataset": {"root": str(data / "voc")},
                 "coco": {"image_dir": str(data / "coco/images"),
                          "annotations": str(data / "coco/annotations/instances_train.json")}}
    return tmp_path, victim, overrides


def test_bad_image_fails_before_any_work(broken):
    workdir, victim, overrides = broken
    proc = snakemake(workdir, overrides=overrides, check=False)
    assert proc.returncode != 0
    log = (workdir / "results/logs/validate_dataset.log").read_text()
    assert f"[{victim}]" in log and f"{victim}.jpg: file not found" in log
    assert not (workdir / "results/labels").exists() and not (workdir / "results/models").exists()
    assert not (workdir / "results/splits").exists()


def test_skip_leaves_the_bad_image_out_of_later_stages(broken):
    workdir, victim, overrides = broken
    overrides["on_bad_image"] = "skip"
    snakemake(workdir, "results/labels/train.json", overrides=overrides)
    report = json.loads((workdir / "results/validate/report.json").read_text())
    assert report["skipped"]["train"] == [victim]
    labels = json.loads((workdir / "results/labels/train.json").read_text())["labels"]
    assert victim not in labels and len(labels) == report["kept"]["train"]
