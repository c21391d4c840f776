"""The paper's config (config/voc12_coco.yaml, used alone) on a tiny tree laid out and named like the real data
(tests/workflow/paper_tree.py, from the tiny demo). Only the model sizes, epochs and paths are overridden: splits,
class list, category map, thresholds and the rest come from the real config. The real models at real image
sizes run in test_paper_realsize.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from locseg.data.voc import VOC_CLASSES
from tests.workflow.conftest import REPO
from tests.workflow.paper_tree import OFFLINE, build_tree, data_paths, run_snakemake

pytestmark = [pytest.mark.slow]


def _overrides(root: Path) -> dict:
    train = {"backbone": "small", "weights": None, "crop": 48, "batch_size": 4, "epochs": 2, "optimizer": "adamw",
             "lr": 0.002}
    return {
        "device": "cpu",  # the paper config asks for cuda; this machine may have none
        "shards": 2,
        "num_workers": 0,
        **data_paths(root),
        "cam": {**train, "epochs": 2, "scales": [1.0]},
        "segmenter": {**train, "width": 32},
        "deeplab": dict(train),
        "reseg": {"keep_rounds": True},
        "inference": {"batch_size": 1, "workers": 0},
        "report": {"overlay_images": 3},
    }


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory) -> tuple[Path, dict[str, list[str]]]:
    """The tiny real-names tree, built once for this module (runs only read it)."""
    root = tmp_path_factory.mktemp("paper_data")
    return root, build_tree(root)


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory, paper_data):
    data, splits = paper_data
    workdir = tmp_path_factory.mktemp("paper_setting")
    override = workdir / "small_models.yaml"
    override.write_text(yaml.safe_dump(_overrides(data)))
    # The real config is the only base: the Snakefile's own configfile (config/config.yaml, resolved
    # against the working directory) does not exist here, so nothing of the demo config leaks in.
    assert not (workdir / "config").exists()
    run_snakemake(workdir, configs=[REPO / "config/voc12_coco.yaml", override])
    return workdir, splits


def _json(workdir: Path, rel: str) -> dict:
    return json.loads((workdir / rel).read_text())


def test_whole_dag_completes(paper_run):
    workdir, _ = paper_run
    for rel in ["results/report.html", "results/eval/supervision_gap_val.json", "results/eval/cams_train.json",
                "results/export/deeplab-pytorch/ImageSets/SegmentationAug/train_aug.txt"]:
        assert (workdir / rel).is_file(), rel
    assert not list(workdir.glob("results/**/*.tmp"))
    assert not (workdir / "results/demo").exists(), "demo.enabled is false in the real config"


def test_pseudo_masks_scored_on_train(paper_run):
    workdir, splits = paper_run
    result = _json(workdir, "results/eval/masks_train.json")
    assert result["split"] == "train" and result["n_images"] == len(splits["train"]) == 8
    cams = _json(workdir, "results/eval/cams_train.json")
    assert cams["split"] == "train" and cams["n_images"] == 8


def test_masks_for_every_train_aug_image(paper_run):
    workdir, splits = paper_run
    masks = sorted(p.stem for p in (workdir / "results/masks/train_aug").glob("*.png"))
    assert masks == sorted(splits["train_aug"])
    present = set()
    for image_id in splits["train_aug"]:
        with Image.open(workdir / f"results/masks/train_aug/{image_id}.png") as img:
            assert img.mode == "P"
            present |= set(np.unique(np.asarray(img)).tolist())
    # only the four mapped VOC classes (and background / ignore) can be predicted
    assert present <= {0, 1, 8, 12, 15, 255}
    export = (workdir / "results/export/deeplab-pytorch/ImageSets/SegmentationAug/train_aug.txt").read_text()
    assert len(export.splitlines()) == len(splits["train_aug"])


def test_deeplab_scored_on_val(paper_run):
    workdir, splits = paper_run
    for labels in ("pseudo", "gt"):
        result = _json(workdir, f"results/eval/deeplab_{labels}_val.json")
        assert result["split"] == "val" and result["n_images"] == len(splits["val"])
    gap = _json(workdir, "results/eval/supervision_gap_val.json")
    assert gap["split"] == "val" and 0 <= gap["miou_pseudo"] <= 1 and 0 <= gap["miou_gt"] <= 1


def test_metrics_use_the_21_voc_classes(paper_run):
    workdir, _ = paper_run
    for rel in ("results/eval/cams_train.json", "results/eval/masks_train.json", "results/eval/deeplab_gt_val.json"):
        # JSON is written with sorted keys, so compare as sets (and count: no extra or missing class)
        per_class = _json(workdir, rel)["per_class"]
        assert len(per_class) == 21 and set(per_class) == set(VOC_CLASSES), rel
    assert len(VOC_CLASSES) == 21


# --------------------------------------------------------------------------- weights: imagenet

MODELS = ["results/models/cam.pt", "results/models/segmenter.pt", "results/models/deeplab_gt.pt"]


def _resnet_overrides(root: Path) -> dict:
    """The paper's weights and optimisers; crops, batches, epochs and widths shrink, and ResNet-50 stands in
    for ResNet-101 (same code path, half the CPU time; the file names of both are tested in test_weights)."""
    small = _overrides(root)
    for stage in ("cam", "segmenter", "deeplab"):
        small[stage] = {k: v for k, v in small[stage].items() if k not in ("weights", "optimizer", "lr")}
        small[stage].update(backbone="resnet50", epochs=1)
    return small


def _run_models(workdir: Path, data: Path, torch_home: Path, check: bool = True):
    override = workdir / "resnet_models.yaml"
    override.write_text(yaml.safe_dump(_resnet_overrides(data)))
    return run_snakemake(workdir, *MODELS, configs=[REPO / "config/voc12_coco.yaml", override], check=check,
                      env={"TORCH_HOME": str(torch_home), **OFFLINE})


@pytest.fixture(scope="module")
def imagenet_run(tmp_path_factory, paper_data, imagenet_home):
    workdir = tmp_path_factory.mktemp("paper_imagenet")
    _run_models(workdir, paper_data[0], imagenet_home[0])
    return workdir, imagenet_home


def test_paper_config_asks_for_imagenet():
    config = yaml.safe_load((REPO / "config/voc12_coco.yaml").read_text())
    assert {s: config[s]["weights"] for s in ("cam", "segmenter", "deeplab")} == dict.fromkeys(
        ("cam", "segmenter", "deeplab"), "imagenet")


@pytest.mark.parametrize("model, prefix", [("cam", "backbone.body."), ("segmenter", "encoder.body."),
                                           ("deeplab_gt", "backbone.")])
def test_checkpoints_start_from_the_cached_imagenet_weights(imagenet_run, model, prefix):
    import torch

    workdir, (home, planted) = imagenet_run
    backbone = "resnet50"
    payload = torch.load(workdir / f"results/models/{model}.pt", weights_only=True)
    assert payload["meta"]["init"] == f"ImageNet ({backbone} IMAGENET1K_V1, torchvision)"
    for key in ("layer1.0.conv1.weight", "layer3.5.conv2.weight", "layer4.2.conv3.weight"):
        want = planted[backbone][key]
        # planted conv weights are 10x any random init: a model trained from scratch is ~0.9 of their size away
        drift = (payload["state_dict"][prefix + key] - want).abs().mean()
        assert drift < 0.05 * want.abs().mean(), f"{model}: {key} did not start from the cached weights"
    note = json.loads((workdir / f"results/weights/{backbone}.json").read_text())
    assert Path(note["path"]).parent == home / "hub" / "checkpoints"  # fetch_weights found it, fetched nothing


def test_missing_cache_offline_stops_before_training(tmp_path, paper_data):
    home = tmp_path / "empty_torch_home"
    proc = _run_models(tmp_path, paper_data[0], home, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    path = home / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    assert "resnet50-0676ba61.pth: ImageNet weights of resnet50 are not in the torch cache" in out
    assert f"place it at {path}" in out, out[-3000:]
    assert not list(tmp_path.glob("results/logs/train_*")), "a training job started without its weights"
    assert not list(tmp_path.glob("results/models/*"))
