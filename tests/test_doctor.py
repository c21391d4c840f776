"""`locseg doctor`: one line per finding, exit 1 on a blocker (no CUDA for device cuda, a missing split file),
a warning for weights still to be fetched, and a clean bill of health when everything is there."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from locseg import cli, doctor
from tests.workflow.conftest import REPO


@pytest.fixture
def config(tiny, tmp_path, monkeypatch):
    """The default config pointed at the tiny demo tree as if it were real data, with ImageNet ResNets."""
    monkeypatch.chdir(tmp_path)
    root = tiny["layout"].root
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["demo"]["enabled"] = False
    config["dataset"]["root"] = str(root)
    config["coco"].update(image_dir=str(root.parent / "coco/images"),
                          annotations=str(root.parent / "coco/annotations/instances_train.json"))
    config["cam"].update(backbone="resnet50", weights="imagenet")
    config["deeplab"].update(backbone="resnet101", weights="imagenet")

    return config


def _run(capsys, config: dict) -> tuple[int, list[str]]:
    path = Path("config.yaml")
    path.write_text(yaml.safe_dump(config))
    code = cli.main(["doctor", "--configfile", str(path)])
    return code, capsys.readouterr().out.splitlines()


@pytest.fixture
def gpu(monkeypatch):
    """One GPU that torch sees, whatever this machine has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="NVIDIA Test GPU", total_memory=80 * 2**30))
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(doctor, "_driver_cuda", lambda: "12.4")
    # With is_available faked, an optimizer step (the GPU-memory estimate's fake one) asks the absent device
    # whether a CUDA graph is being captured.
    monkeypatch.setattr(torch.optim.Optimizer, "_accelerator_graph_capture_health_check", lambda self: None)


@pytest.fixture
def no_gpu(monkeypatch):
    """A CUDA build of torch on a node without an NVIDIA driver."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(doctor, "_driver_cuda", lambda: None)


def _levels(lines, level):
    return [line for line in lines if line.startswith(level)]


def test_all_good(config, gpu, imagenet_home, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(imagenet_home[0]))
    config["device"] = "cuda"
    code, lines = _run(capsys, config)
    assert code == 0, lines
    assert _levels(lines, "FAIL") == [] and _levels(lines, "warn") == [], lines
    text = "\n".join(lines)
    assert "GPU 0: NVIDIA Test GPU, 80 GiB" in text
    assert "cam.weights: resnet50 ImageNet weights cached at" in text
    assert "dataset split train: 12 images" in text and "COCO:" in text
    assert any(line.startswith("ok    disk:") for line in lines)
    assert lines[-1] == "doctor: 0 blocker(s), 0 warning(s)"


def test_no_cuda(config, no_gpu, imagenet_home, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(imagenet_home[0]))
    config["device"] = "cuda"
    code, lines = _run(capsys, config)
    assert code == 1
    assert _levels(lines, "FAIL") == ["FAIL  no GPU seen, config asks for device 'cuda': no NVIDIA driver found "
                                      "(nvidia-smi is missing or fails): not a GPU node?"]
    config["device"] = "auto"  # the run would work, on CPU: a warning, not a blocker
    code, lines = _run(capsys, config)
    assert code == 0 and any("ResNet stages will train on CPU" in line for line in _levels(lines, "warn"))


def test_cpu_only_build_and_driver_mismatch(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(doctor, "_driver_cuda", lambda: "12.2")
    assert "torch is a CPU-only build" in doctor.gpu_findings("cuda", True)[-1][1]
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    mismatch = [text for level, text in doctor.gpu_findings("auto", True) if "driver" in text]
    assert mismatch == ["driver mismatch: the NVIDIA driver supports CUDA 12.2, torch is built for CUDA 12.4: "
                        "update the driver or install a torch built for CUDA <= 12.2"]


def test_missing_split_file(config, gpu, imagenet_home, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(imagenet_home[0]))
    config["dataset"]["splits"]["pseudo_eval"] = "train_1464"
    code, lines = _run(capsys, config)
    root = Path(config["dataset"]["root"])
    assert code == 1
    assert _levels(lines, "FAIL") == [f"FAIL  dataset.splits.pseudo_eval: path "
                                      f"{root / 'ImageSets/Segmentation/train_1464.txt'} does not exist"]


def test_missing_weights(config, gpu, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    code, lines = _run(capsys, config)
    cache = tmp_path / "empty_torch_home" / "hub" / "checkpoints"
    warns = _levels(lines, "warn")
    assert code == 0, "the pipeline fetches missing weights itself where there is internet"
    assert len(warns) == 2, lines
    assert "cam.weights: resnet50-0676ba61.pth not in the torch cache" in warns[0]
    assert warns[0].endswith(f"place it at {cache / 'resnet50-0676ba61.pth'}")
    assert warns[1].endswith(f"place it at {cache / 'resnet101-63fe2227.pth'}")


def test_resnet_from_scratch_is_a_warning(config, gpu, imagenet_home, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(imagenet_home[0]))
    config["segmenter"]["backbone"] = "resnet101"
    code, lines = _run(capsys, config)
    assert code == 0
    assert _levels(lines, "warn") == ["warn  segmenter.weights: null: resnet101 is trained from scratch (far below "
                                      "published results; set weights: imagenet)"]


def test_disk_estimate_blocks_when_too_small(monkeypatch, tmp_path):
    config = {"dataset": {"splits": {"cam": "a", "pseudo": "a", "pseudo_eval": "b", "val": "c"}},
              "reseg": {"rounds": 3, "keep_rounds": True}}
    pixels = {"a": (10_000, 500 * 375), "b": (1_500, 500 * 375), "coco": (100_000, 640 * 480)}
    need = doctor.store_bytes(config, pixels)
    monkeypatch.setattr(doctor.shutil, "disk_usage", lambda p: SimpleNamespace(free=need / 2))
    [(level, text)] = doctor.disk_findings(config, pixels, tmp_path / "results")
    assert level == "FAIL" and f"need about {need / 2**30:.1f} GiB" in text


def test_gpu_memory_fits_on_a_large_gpu(config, gpu, imagenet_home, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(imagenet_home[0]))
    code, lines = _run(capsys, config)
    assert any(line.startswith("ok    GPU memory: every stage fits in 80.0 GiB") for line in lines), lines


def test_too_small_gpu_names_the_batch_to_lower(config, gpu, imagenet_home, monkeypatch, capsys):
    """A GPU with room for 3 DeepLab crops: doctor warns and names deeplab.batch_size and the value that fits."""
    from locseg.gpu_memory import stage_estimates

    monkeypatch.setenv("TORCH_HOME", str(imagenet_home[0]))
    config["deeplab"]["batch_size"] = 64
    stages = {e.stage: e for e in stage_estimates(config)}
    small = stages["train_deeplab"].needed_bytes(3) + 2**20  # 3 crops fit, 4 do not
    assert stages["train_deeplab"].needed_bytes(4) > small
    assert all(e.needed_bytes() <= small for e in stages.values() if e.stage != "train_deeplab"), \
        "the test wants exactly one stage too large"
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i: SimpleNamespace(name="NVIDIA Small GPU", total_memory=small))
    code, lines = _run(capsys, config)
    warns = [line for line in _levels(lines, "warn") if "GPU memory" in line]
    assert code == 0 and len(warns) == 1, lines
    assert "train_deeplab: a batch of 64 x crop image needs about" in warns[0]
    assert warns[0].endswith(f"lower deeplab.batch_size to 3 ({stages['train_deeplab'].needed_bytes(3) / 2**30:.1f} "
                             f"GiB)")


def test_sam_checkpoint_missing_wrong_and_right(config, gpu, imagenet_home, tmp_path, monkeypatch, capsys):
    pytest.importorskip("segment_anything")
    from locseg import weights

    monkeypatch.setenv("TORCH_HOME", str(imagenet_home[0]))
    config["segmenter"]["kind"] = "sam"
    path = weights.sam_file("vit_b")
    code, lines = _run(capsys, config)
    warn = [x for x in _levels(lines, "warn") if "segmenter.sam" in x]
    assert code == 0 and len(warn) == 1 and weights.SAM_CHECKPOINTS["vit_b"][0] in warn[0]
    assert warn[0].endswith(f"place it at {path}")
    path.write_bytes(b"not the release")
    try:
        code, lines = _run(capsys, config)
        assert code == 1 and any(str(path) in x and "SHA-256" in x for x in _levels(lines, "FAIL"))
        import hashlib

        monkeypatch.setitem(weights.SAM_CHECKPOINTS, "vit_b", (weights.SAM_CHECKPOINTS["vit_b"][0],
                                                               hashlib.sha256(b"not the release").hexdigest()))
        code, lines = _run(capsys, config)
        assert code == 0 and any("SHA-256 as released" in x for x in _levels(lines, "ok"))
    finally:
        path.unlink()
