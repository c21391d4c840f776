"""Pretrained backbone weights: `weights: imagenet` resolved through torchvision's weights API.

A config's `weights` is null (random initialisation), a state dict file, or `imagenet`: torchvision's
IMAGENET1K_V1 weights of that ResNet (the original ones, which IRN starts its ResNet-50 from). They live in
torch's standard cache, `$TORCH_HOME/hub/checkpoints/<file name of the URL>` (TORCH_HOME defaults to
~/.cache/torch), exactly where torchvision itself would put them. Only `fetch` downloads; training jobs
only read the cache, so on a cluster the download happens once on the login node (rule fetch_weights).

The Segment Anything checkpoints of `segmenter.kind: sam` (`segmenter.sam.model` vit_b / vit_l / vit_h) go
the same way into the same cache, under their release file names, and are checked by SHA-256 whenever they
are read: a wrong-hash file is refused, never used.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("locseg")

IMAGENET = "imagenet"
CAM_NET = "cam"  # segmenter / deeplab `weights: cam`: the trained CAM net's backbone (the workflow passes its file)
IMAGENET_BACKBONES = ("resnet18", "resnet50", "resnet101")
STAGES = ("cam", "segmenter", "deeplab")

# Meta's release (github.com/facebookresearch/segment-anything, "Model checkpoints"). Meta publishes no
# checksum; these SHA-256 are the ones independent projects pin for the same URLs (micro-sam's util.py
# among them, identical in every source found). They were not recomputed here: no machine of this project
# can download the files.
_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"
SAM_CHECKPOINTS = {
    "vit_b": (_SAM_URL + "sam_vit_b_01ec64.pth", "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912"),
    "vit_l": (_SAM_URL + "sam_vit_l_0b3195.pth", "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622"),
    "vit_h": (_SAM_URL + "sam_vit_h_4b8939.pth", "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e"),
}
SAM_PREFIX = "sam_"  # rule fetch_weights' name of a SAM checkpoint: sam_vit_b, ...


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
    """Download `backbone`'s ImageNet weights (or `sam_<model>`: a SAM checkpoint, see fetch_sam) into the
    cache (hash-checked); a no-op when present."""
    if backbone.startswith(SAM_PREFIX):
        return fetch_sam(backbone.removeprefix(SAM_PREFIX))
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


def sam_file(model: str) -> Path:
    """Where the released checkpoint of SAM `model` is cached."""
    if model not in SAM_CHECKPOINTS:
        raise ValueError(f"SAM checkpoints exist for {', '.join(SAM_CHECKPOINTS)}, not {model!r}")
    return cache_dir() / Path(SAM_CHECKPOINTS[model][0]).name


def _sam_missing_message(model: str, path: Path) -> str:
    return (f"{path.name}: the Segment Anything {model} checkpoint is not in the torch cache. Run "
            f"`snakemake --cores 1 --until fetch_weights` where there is internet, or download "
            f"{SAM_CHECKPOINTS[model][0]} and place it at {path}")


def sam_hash_problem(model: str, path: Path) -> str | None:
    """Why the cached file of `model` must not be used (its SHA-256 is not the release's), or None."""
    from locseg.store import file_sha256

    expected, found = SAM_CHECKPOINTS[model][1], file_sha256(path)
    if found == expected:
        return None
    return (f"{path}: SHA-256 {found} is not that of {SAM_CHECKPOINTS[model][0]} ({expected}): a partial "
            f"or different file. Delete it and fetch again (`snakemake --cores 1 --until fetch_weights`)")


def sam_checkpoint(model: str, checkpoint: str | None = None) -> Path:
    """The SAM checkpoint to load: `checkpoint` (a local file, used as it is) or the cached release of
    `model`, refused unless its SHA-256 is the release's. Never downloads."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: segmenter.sam.checkpoint not found")
        return path
    path = sam_file(model)
    if not path.is_file():
        raise FileNotFoundError(_sam_missing_message(model, path))
    problem = sam_hash_problem(model, path)
    if problem:
        raise ValueError(problem)
    return path


def fetch_sam(model: str) -> Path:
    """Download SAM `model`'s released checkpoint into the cache unless there, SHA-256 checked either way;
    the download goes to a temporary name, renamed only once its hash is right."""
    import torch

    path = sam_file(model)
    if path.is_file():
        log.info("SAM %s checkpoint already cached at %s", model, path)
        return sam_checkpoint(model)
    url = SAM_CHECKPOINTS[model][0]
    log.info("downloading %s to %s", url, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
    except Exception as e:  # urllib, SSL, disk: all mean the same thing here
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"download failed ({type(e).__name__}: {e}). {_sam_missing_message(model, path)}") from None
    problem = sam_hash_problem(model, tmp)
    if problem:
        tmp.unlink()
        raise ValueError(f"downloaded file refused: {problem}")
    tmp.replace(path)
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
