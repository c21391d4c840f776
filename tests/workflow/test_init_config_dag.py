"""Your own dataset in one step: `locseg init-config` on a tree with other class names, then the one
command README gives, from a checkout (where Snakemake would otherwise merge into the demo default)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from locseg.cli import main
from tests.test_init_config import OWN_CLASSES, own_tree
from tests.workflow.conftest import REPO

pytestmark = pytest.mark.slow


def test_own_dataset_runs_the_tiny_dag(tmp_path):
    tree = own_tree(tmp_path / "data")
    shutil.copytree(REPO / "config", tmp_path / "config")  # as in a clone: the demo default is there
    assert main(["init-config", "--voc-root", str(tree["voc"]), "--coco-images", str(tree["images"]),
                 "--coco-annotations", str(tree["annotations"]), "--classes", ",".join(OWN_CLASSES),
                 "--base", "config/config.yaml", "--out", str(tmp_path / "config/mine.yaml")]) == 0
    # README's command (init_config.run_command), with the tiny test sizes added as a second config file
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2",
                           "--replace-workflow-config", "--configfile", "config/mine.yaml", "config/tiny.yaml"],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = tmp_path / "results"
    assert (results / "report.html").is_file()
    assert len(list((results / "masks" / "train").glob("*.png"))) == 12
    assert not (results / "demo").exists()  # the demo default was replaced, not merged
    assert "fox" in (results / "eval" / "masks_train.json").read_text()
