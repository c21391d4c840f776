"""Retrain: DeepLabV3 on pseudo (or GT) masks, then predict a split for evaluation."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from locseg.data.transforms import AugmentedSet, fold_flip, joint_augment, multiscale_views, normalize
from locseg.data.voc import read_image, read_mask
from locseg.models.deeplab import build_deeplab
from locseg.checkpoints import load_model, save_checkpoint
from locseg.devices import pick_device
from locseg.runtime import autocast, prepare_model, seed_everything
from locseg.train import fit
from locseg.weights import describe_init, warn_if_scratch

log = logging.getLogger("locseg.retrain")
IGNORE = 255


class MaskSet(AugmentedSet):
    """(augmented image crop, label crop) pairs; label files are index or palette PNGs."""

    def __init__(self, image_paths: dict[str, Path], mask_paths: dict[str, Path], num_classes: int,
                 crop: int, scale_range, seed: int):
        super().__init__(list(image_paths), crop, scale_range, seed)
        self.image_paths, self.mask_paths, self.num_classes = image_paths, mask_paths, num_classes

    def __getitem__(self, index: int):
        image_id = self.samples[index]
        rng = self.rng(index)
        image = read_image(self.image_paths[image_id])
        mask = read_mask(self.mask_paths[image_id], self.num_classes, image.shape[:2])
        image, mask = joint_augment(
            rng, [(normalize(image), "bilinear", 0.0), (torch.from_numpy(mask)[None], "nearest", float(IGNORE))],
            self.crop, self.scale_range,
        )
        return image, mask[0].long()


def _cross_entropy(model, batch) -> torch.Tensor:
    images, masks = batch
    return F.cross_entropy(model(images)["out"].float(), masks, ignore_index=IGNORE)


def train_deeplab(
    image_paths: dict[str, Path],
    mask_paths: dict[str, Path],
    class_names: list[str],
    out_path,
    *,
    backbone: str = "small",
    weights: str | None = None,
    crop: int = 96, scale_range=(0.7, 1.3),  # training crops: side, random rescale range
    seed: int = 0, device: str = "auto", meta: dict | None = None,  # meta: extra checkpoint metadata
    **fit_options,
) -> dict:
    """Cross-entropy with 255 ignored and a poly LR schedule (deeplab-pytorch's recipe); `fit_options` go to
    `locseg.train.fit`."""
    gen = seed_everything(seed)
    dev = pick_device(device)
    missing = [i for i in image_paths if not Path(mask_paths[i]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} label masks missing, e.g. {mask_paths[missing[0]]}")
    data = MaskSet(image_paths, mask_paths, len(class_names), crop, scale_range, seed)
    warn_if_scratch("train_deeplab", backbone, weights)
    model = prepare_model(build_deeplab(len(class_names), backbone, weights), dev)
    losses = fit(model, data, _cross_entropy, device=dev, generator=gen, desc="train_deeplab", **fit_options)
    summary = {"class_names": list(class_names), "backbone": backbone,
               "init": describe_init(backbone, weights), "images": len(data),
               "epochs": len(losses), "loss_per_epoch": losses, "seed": seed, **(meta or {})}
    save_checkpoint(out_path, model, "deeplab", summary)
    return summary


def load_deeplab(path, class_names: list[str], device: torch.device):
    model, _ = load_model(path, "deeplab", class_names, lambda meta: build_deeplab(len(class_names), meta["backbone"]))
    return prepare_model(model, device).eval()


@torch.no_grad()
def predict(model, image: np.ndarray, device: torch.device, scales=(1.0,), flip: bool = False) -> np.ndarray:
    """Label map at image size; softmax averaged over scales (and the flipped view) when asked."""
    h, w = image.shape[:2]
    x = normalize(image).unsqueeze(0).to(device)
    prob = torch.zeros(1, 1, h, w, device=device)
    for xs in multiscale_views(x, (h, w), scales, flip):
        with autocast(device):
            logits = model(xs)["out"].float()
        prob = prob + fold_flip(F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False).softmax(1),
                                flip)
    return prob[0].argmax(0).to(torch.uint8).cpu().numpy()
