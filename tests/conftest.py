"""Fixtures shared by the stage tests."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch

from locseg.data import demo
from locseg.data.coco import CocoSplit
from locseg.data.labels import labels_from_masks
from locseg.data.voc import VocLayout


CLASSES = list(demo.DEMO_CLASSES)  # the demo's class names, background first
K = len(CLASSES)
CPU = torch.device("cpu")
FAST = dict(crop=32, batch_size=4, epochs=1, device="cpu")  # a training call that takes about a second


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict:
    """The tiny demo dataset (generated once; tests only read it) and its train split seen every way."""
    out = tmp_path_factory.mktemp("demo") / "data"
    demo.generate(out, seed=0, size="tiny")
    layout = VocLayout(out / "voc")
    ids = layout.ids("train")
    classes = CLASSES
    return {
        "layout": layout,
        "ids": ids,
        "image_paths": {i: layout.image_path(i) for i in ids},
        "mask_paths": {i: layout.mask_path(i) for i in ids},
        "labels": labels_from_masks(layout, ids, len(classes)),
        "coco": CocoSplit(out / "coco/annotations/instances_train.json", out / "coco/images",
                          demo.DEMO_COCO_CATEGORY_MAP, classes),
    }


def assert_seed_decides(first, same_seed, other_seed) -> None:
    """Three checkpoints of one training call: the same seed gives equal tensors, another seed other ones."""
    a, b, c = (torch.load(p, weights_only=True)["state_dict"] for p in (first, same_seed, other_seed))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())  # the seed is used


PLANT_SCALE = 10.0  # planted conv weights are torchvision's init x 10: no random init looks like them


def planted_imagenet_state(backbone: str) -> dict:
    """A state dict of `backbone`'s ImageNet weights' shapes (fc included), recognisable after training: BN
    follows every conv, so scaling the conv weights changes nothing a network computes, only their size."""
    from torchvision.models import resnet

    torch.manual_seed(123)
    state = getattr(resnet, backbone)().state_dict()
    return {k: v * PLANT_SCALE if v.ndim == 4 else v for k, v in state.items()}


@pytest.fixture(scope="session")
def imagenet_home(tmp_path_factory):
    """A TORCH_HOME whose cache holds planted 'ImageNet' weights of every ResNet under torchvision's file
    names (nothing is downloaded). Returns (TORCH_HOME, {backbone: planted state dict})."""
    from locseg.weights import IMAGENET_BACKBONES, imagenet_weights

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    planted = {}
    for backbone in IMAGENET_BACKBONES:
        planted[backbone] = planted_imagenet_state(backbone)
        torch.save(planted[backbone], checkpoints / imagenet_weights(backbone).url.rsplit("/", 1)[-1])
    return home, planted


@pytest.fixture
def small_fs():
    """`small_fs(directory, size)` mounts a size-limited tmpfs there (a disk that fills up for real); root
    only, the test skips elsewhere. Unmounted after the test."""
    mounted = []

    def mount(directory, size: str = "32k"):
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in reversed(mounted):
        subprocess.run(["umount", str(directory)], check=True)


# A Segment Anything of the released architecture's shape rules at a fraction of the size: 64 px input,
# 16 px patches (a 4 x 4 embedding, 16 x 16 mask logits), 2 blocks of 2 heads, the last one global.
TINY_SAM = dict(img_size=64, patch_size=16, window_size=2, prompt_dim=32, decoder_mlp_dim=64, iou_hidden_dim=32,
                embed_dim=32, depth=2, num_heads=2, global_attn_indexes=[1])


@pytest.fixture(scope="session")
def tiny_sam_file(tmp_path_factory):
    """A randomly initialised tiny SAM (seed 0) saved as a local checkpoint (locseg.sam.save_sam)."""
    pytest.importorskip("segment_anything")
    from locseg.sam import build_sam, save_sam

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pt"
    save_sam(build_sam(TINY_SAM), TINY_SAM, path)
    return path
