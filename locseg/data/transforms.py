"""Tensor conversion and the joint augmentation applied alike to an image and its aligned maps."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def normalize(image: np.ndarray) -> torch.Tensor:
    """uint8 [H,W,3] -> float [3,H,W] with ImageNet statistics (what pretrained backbones expect)."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    return (x - MEAN) / STD


def inference_scale(h: int, w: int, max_side: int | None) -> float:
    """Scale that brings an image's longer side down to `max_side` (1.0 when it already fits or no limit):
    bounds the memory of one forward pass whatever the image size; maps are upsampled back to (H, W)."""
    return min(1.0, max_side / max(h, w)) if max_side else 1.0


def multiscale_views(x: torch.Tensor, size: tuple[int, int], scales, flip: bool):
    """Test-time augmentation, shared by CAM extraction and DeepLab evaluation: yields the batch `x`
    ([B, 3, h, w] at `size`) resized by each scale and, with `flip`, followed by its mirror ([2B, ...])."""
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(size[0] * s)), max(1, round(size[1] * s))),
                                              mode="bilinear", align_corners=False)
        yield torch.cat([xs, xs.flip(-1)]) if flip else xs


def fold_flip(maps: torch.Tensor, flip: bool) -> torch.Tensor:
    """Adds the mirrored views' maps (the second half of dim 0, from `multiscale_views`) back onto their
    images' maps; maps must already be at a common size."""
    if not flip:
        return maps
    half = len(maps) // 2
    return add_mirrored(maps[:half], maps[half:])


def add_mirrored(maps: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
    """`maps` plus the maps of the mirrored input, mirrored back: the one flip fold of every test-time flip
    (resegment runs the mirrored batch as a call of its own, so its pass size stays that of one view)."""
    return maps + mirrored.flip(-1)


def joint_augment(
    rng: np.random.Generator,
    layers: list[tuple[torch.Tensor, str, float]],
    crop: int,
    scale_range: tuple[float, float] = (0.7, 1.3),
    flip: bool = True,
) -> list[torch.Tensor]:
    """Random rescale, random crop (padding when smaller) and horizontal flip, identical for every layer.

    `layers` holds (tensor [C,H,W], interpolation 'bilinear'|'nearest', pad value): the image pads with 0
    (the mean after normalisation), targets pad with 255 (ignored), cues pad with 0.
    """
    h, w = layers[0][0].shape[-2:]
    s = rng.uniform(*scale_range)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    top = int(rng.integers(0, max(nh - crop, 0) + 1))
    left = int(rng.integers(0, max(nw - crop, 0) + 1))
    do_flip = flip and rng.random() < 0.5
    out = []
    for x, mode, pad in layers:
        x = x.unsqueeze(0).float()
        kw = {"align_corners": False} if mode == "bilinear" else {}
        x = F.interpolate(x, size=(nh, nw), mode=mode, **kw)[0]
        x = x[:, top : top + crop, left : left + crop]
        ph, pw = crop - x.shape[1], crop - x.shape[2]
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=pad)
        if do_flip:
            x = x.flip(-1)
        out.append(x)
    return out


class AugmentedSet(Dataset):
    """Base of the training sets: each sample's randomness is fixed by (seed, epoch, index), so a run is
    reproducible whatever the number of DataLoader workers. `locseg.train.fit` sets `epoch`."""

    def __init__(self, samples: list, crop: int, scale_range, seed: int):
        self.samples, self.crop, self.scale_range, self.seed = list(samples), crop, scale_range, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])
