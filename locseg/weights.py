"""Pretrained backbone weights: `weights: imagenet` resolved through torchvision's weights API.

A config's `weights` is null (random initialisation), a state dict file, or `imagenet`: torchvision's
IMAGENET1K_V1 weights of that ResNet (the original ones, which IRN starts its ResNet-50 from). They live in
torch's standard cache, `$TORCH_HOME/hub/checkpoints/<file name of the URL>` (TORCH_HOME defaults to
~/.cache/torch), exactly where torchvision itself would put them. Only `fetch` downloads; training jobs
only read the cache, so on a cluster the download happens once on the login node (rule fetch_weights).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("locseg")

IMAGENET = "imagenet"
CAM_NET = "cam"  # segmenter / deeplab `weights: cam`: the trained CAM net's backbone (the workflow passes its file)
IMAGENET_BACKBONES = ("resnet18", "resnet50", "resnet101")
STAGES = ("cam", "segmenter", "deeplab")


def imagenet_weights(backbone: str):
    """torchvision's weights enum entry (imported here: config checks must not pay for torch)."""
    from torchvision.models import ResNet18_Weights, ResNet50_Weights, ResNet101_Weights

    if backbone not in IMAGENET_BACKBONES:
        raise ValueError(f"weights 'imagenet' exists for {', '.join(IMAGENET_BACKBONES)}, not {backbone!r}")
    return {"resnet18": ResNet18_Weights, "resnet50": ResNet50_Weights,
            "resnet101": ResNet101_Weights}[backbone].IMAGENET1K_V1


def cache_dir() -> Path:
    """torch.hub's checkpoint directory (follows TORCH_HOME, as torchvision does)."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def imagenet_file(backbone: str) -> Path:
    """Where torchvision caches the ImageNet weights of `backbone`."""
    return cache_dir() / Path(imagenet_weights(backbone).url).name


def _missing_message(backbone: str, path: Path) -> str:
    url = imagenet_weights(backbone).url
    return (f"{path.name}: ImageNet weights of {backbone} are not in the torch cache. Run "
            f"`snakemake --cores 1 --until fetch_weights` where there is internet, or download {url} "
            f"and place it at {path}")


def resolve(weights: str | None, backbone: str) -> Path | None:
    """Config value -> weights file to load (None: random initialisation). Never downloads."""
    if weights != IMAGENET:
        return Path(weights) if weights else None
    path = imagenet_file(backbone)
    if not path.is_file():
        raise FileNotFoundError(_missing_message(backbone, path))
    return path


def fetch(backbone: str) -> Path:
    """Download `backbone`'s ImageNet weights into the cache (hash-checked); a no-op when present."""
    path = imagenet_file(backbone)
    if path.is_file():
        log.info("%s ImageNet weights already cached at %s", backbone, path)
        return path
    log.info("downloading %s to %s", imagenet_weights(backbone).url, path)
    try:
        imagenet_weights(backbone).get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # urllib, SSL and hash errors all mean the same thing here
        raise RuntimeError(f"download failed ({type(e).__name__}: {e}). {_missing_message(backbone, path)}") from None
    return path


def requested(config: dict) -> dict[str, str]:
    """Stage -> backbone for every stage whose config asks for `weights: imagenet`."""
    return {s: config[s]["backbone"] for s in STAGES if config[s].get("weights") == IMAGENET}


def describe_init(backbone: str, weights: str | None) -> str:
    """How a model's backbone starts, in words (log lines and the report)."""
    if weights == IMAGENET:
        return f"ImageNet ({backbone} IMAGENET1K_V1, torchvision)"
    if weights:
        return f"weights file {weights}"
    return "trained from scratch" if backbone in IMAGENET_BACKBONES else "random initialisation (demo backbone)"


def warn_if_scratch(what: str, backbone: str, weights: str | None) -> None:
    """A ResNet trained from random initialisation falls far below any published WSSS figure: say so."""
    if not weights and backbone in IMAGENET_BACKBONES:
        log.warning("%s: %s is trained from scratch (weights: null); published results start from ImageNet "
                    "weights: set weights: imagenet", what, backbone)
