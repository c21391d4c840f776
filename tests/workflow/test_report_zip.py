"""`snakemake --report`: every figure and metrics file of a run, each with its caption, plus the workflow's
description, in one zip (after the README's plain `pip install -e .`: pygments is a main dependency)."""

from __future__ import annotations

import re
import zipfile

import pytest

from tests.workflow.conftest import snakemake

pytestmark = pytest.mark.slow


def test_report_zip_has_every_figure_with_a_caption(tiny_run, tmp_path):
    out = tmp_path / "r.zip"
    snakemake(tiny_run, "--report", str(out))
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        html = zf.read(f"{out.stem}/report.html").decode()  # the zip's one folder is named after it
    expected = [p.name for p in (tiny_run / "results" / "eval").iterdir() if p.suffix in (".png", ".json")]
    assert len(expected) == 11  # CAM baseline 2, pseudo masks 3, DeepLab 2 x 2 + overlay, ratio 1
    for name in [*expected, "report.html", "report.json"]:
        assert any("/data/raw/" in n and n.endswith(f"/{name}") for n in names), name
        entry = re.search(rf'"filename": "{re.escape(name)}"(?:(?!"filename").)*?"caption": "(.*?)", "mime_type"', html)
        assert entry and len(entry.group(1)) > 40, f"{name}: no caption"
    assert "turns image-level labels into pixel-level pseudo labels" in html  # workflow description
    for category in ("CAM baseline", "Pseudo masks", "DeepLab", "Dataset", "Report"):
        assert f'"{category}"' in html, category
