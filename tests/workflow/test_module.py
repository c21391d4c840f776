"""locseg included as a Snakemake module by a host workflow in another directory, outputs under its prefix."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from snakemake.utils import update_config

from tests.workflow.conftest import REPO

HOST = f"""\
configfile: "locseg.yaml"


module locseg:
    snakefile:
        "{REPO / 'Snakefile'}"
    config:
        config


use rule * from locseg as locseg_*


rule all:
    default_target: True
    input:
        rules.locseg_all.input,
"""


def host_config() -> dict:
    """The default + tiny configs as one complete config, with the data and outputs under host paths."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    update_config(config, yaml.safe_load((REPO / "config" / "tiny.yaml").read_text()))
    update_config(config, {
        "outdir": "out/locseg",
        "demo": {"out": "data/demo"},
        "dataset": {"root": "data/demo/voc"},
        "coco": {"image_dir": "data/demo/coco/images",
                 "annotations": "data/demo/coco/annotations/instances_train.json"},
    })
    return config


@pytest.mark.slow
def test_module_from_host_workflow(tmp_path):
    (tmp_path / "Snakefile").write_text(HOST)
    (tmp_path / "locseg.yaml").write_text(yaml.safe_dump(host_config()))
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = tmp_path / "out" / "locseg"
    for rel in ["report.html", "eval/supervision_gap_val.json", "splits/train.txt", "logs/train_cam.log",
                "benchmarks/report.tsv", "export/deeplab-pytorch/ImageSets/SegmentationAug/train_aug.txt"]:
        assert (out / rel).is_file(), rel
    assert len(list((out / "masks" / "train").glob("*.png"))) == 12
    assert not (tmp_path / "results").exists()  # nothing written outside the configured prefix
