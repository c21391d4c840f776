"""The tiny DAG with `segmenter.kind: sam` (a tiny random SAM as a local checkpoint) runs to the report, with
no train_segmenter job, and its stores and masks are in the learned segmenter's formats."""

from __future__ import annotations

import h5py
import pytest
from PIL import Image

from locseg.cli import main
from tests.workflow.conftest import planned_jobs, snakemake

pytestmark = [pytest.mark.slow]


def test_sam_runs_the_tiny_dag_to_the_report(tmp_path, tiny_sam_file, tiny_run, capsys):
    overrides = {"segmenter": {"kind": "sam", "sam": {"checkpoint": str(tiny_sam_file)}}}
    jobs = planned_jobs(tmp_path, overrides)
    assert "train_segmenter" not in jobs and "fetch_weights" not in jobs and jobs["resegment"] == 2
    snakemake(tmp_path, overrides=overrides)
    results = tmp_path / "results"
    with h5py.File(results / "reseg/train/000.h5", "r") as f:
        assert f.attrs["kind"] == "prob" and f.attrs["rounds"] == 2
        image_id = f["_ids"][0].decode()
        k, h, w = f[image_id]["maps"].shape
        assert f[image_id]["rounds"].shape == (2, k, h, w)
    with Image.open(results / f"masks/train/{image_id}.png") as mask:
        assert mask.mode == "P" and mask.size == (w, h)
    report = (results / "report.md").read_text()
    assert "pseudo masks by Segment Anything (vit_b, prompts box + points + mask)" in report
    assert f"local checkpoint {tiny_sam_file}" in report
    assert "train_segmenter" not in report  # no such job ran
    assert main(["compare", str(tiny_run / "results"), str(results)]) == 0
    out = capsys.readouterr().out
    assert "by the learned segmenter" in out.splitlines()[0] and "by Segment Anything" in out.splitlines()[1]
    assert "| resegmentation round 2 | train |" in out


def test_sam_release_waits_for_fetch_weights(tmp_path):
    pytest.importorskip("segment_anything")
    jobs = planned_jobs(tmp_path, {"segmenter": {"kind": "sam"}})
    assert jobs.get("fetch_weights") == 1 and "train_segmenter" not in jobs
