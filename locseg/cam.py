"""Locate: train the multi-label CAM classifier, then extract multi-scale + flip CAMs into the store."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from locseg.data.transforms import joint_augment, normalize
from locseg.data.voc import read_image
from locseg.models.cam import CamNet
from locseg.store import StoreWriter, file_sha256
from locseg.train import (
    autocast,
    load_checkpoint,
    make_optimizer,
    pick_device,
    poly_lr,
    prepare_model,
    progress,
    save_checkpoint,
    seed_everything,
)

log = logging.getLogger("locseg.cam")


class ClassificationSet(Dataset):
    """(augmented image crop, multi-hot foreground labels); randomness fixed by (seed, epoch, index)."""

    def __init__(self, image_paths: dict[str, Path], labels: dict[str, list[int]], num_classes: int,
                 crop: int, scale_range, seed: int):
        self.ids = [i for i in image_paths if labels.get(i)]  # images without a foreground class teach nothing
        self.image_paths, self.labels = image_paths, labels
        self.num_classes, self.crop, self.scale_range, self.seed = num_classes, crop, scale_range, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = normalize(read_image(self.image_paths[image_id]))
        (image,) = joint_augment(rng, [(image, "bilinear", 0.0)], self.crop, self.scale_range)
        target = torch.zeros(self.num_classes - 1)
        target[[c - 1 for c in self.labels[image_id]]] = 1.0
        return image, target


def train_cam(
    image_paths: dict[str, Path],
    labels: dict[str, list[int]],
    class_names: list[str],
    out_path,
    *,
    backbone: str = "small",
    weights: str | None = None,
    output_stride: int = 16,
    crop: int = 96,
    scale_range=(0.7, 1.3),
    batch_size: int = 16,
    epochs: int = 10,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    num_workers: int = 0,
    meta: dict | None = None,
) -> dict:
    """Multi-label BCE on image-level labels. Returns the training summary also stored in the checkpoint."""
    gen = seed_everything(seed)
    dev = pick_device(device)
    data = ClassificationSet(image_paths, labels, len(class_names), crop, scale_range, seed)
    if len(data) < 2:
        raise ValueError(f"CAM training needs at least 2 images with a foreground label, found {len(data)}")
    loader = DataLoader(data, batch_size=min(batch_size, len(data)), shuffle=True, drop_last=True,
                        num_workers=num_workers, generator=gen)
    model = prepare_model(CamNet(len(class_names) - 1, backbone, output_stride, weights), dev)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    total, step, losses = epochs * len(loader), 0, []
    log.info("CAM training: %d images, %d steps on %s", len(data), total, dev)
    bar = progress(total=total, desc="train_cam")
    for epoch in range(epochs):
        data.epoch = epoch
        model.train()
        running = 0.0
        for images, targets in loader:
            for group in opt.param_groups:
                group["lr"] = poly_lr(lr, step, total)
            images, targets = images.to(dev), targets.to(dev)
            with autocast(dev):
                loss = F.binary_cross_entropy_with_logits(model(images).float(), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.item()
            step += 1
            bar.update()
        losses.append(running / len(loader))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, losses[-1])
    bar.close()
    summary = {"class_names": list(class_names), "backbone": backbone, "output_stride": output_stride,
               "epochs": epochs, "images": len(data), "loss_per_epoch": losses, "seed": seed, **(meta or {})}
    save_checkpoint(out_path, model, "cam", summary)
    return summary


def cam_from_weights(class_names: list[str], out_path, *, backbone: str, weights: str, output_stride: int = 16,
                     meta: dict | None = None) -> dict:
    """A CAM net used as released (e.g. SEAM's resnet38_SEAM.pth): no training, only a checkpoint."""
    model = CamNet(len(class_names) - 1, backbone, output_stride, weights)
    summary = {"class_names": list(class_names), "backbone": backbone, "output_stride": output_stride,
               "epochs": 0, "weights": str(weights), **(meta or {})}
    save_checkpoint(out_path, model, "cam", summary)
    log.info("CAM net from %s, not trained", weights)
    return summary


def load_cam_net(path, class_names: list[str], device: torch.device) -> CamNet:
    payload = load_checkpoint(path, "cam", class_names)
    meta = payload["meta"]
    model = CamNet(len(class_names) - 1, meta["backbone"], meta["output_stride"])
    model.load_state_dict(payload["state_dict"])
    return prepare_model(model, device).eval()


@torch.no_grad()
def infer_cams(model: CamNet, image: np.ndarray, classes: list[int], scales, flip: bool,
               device: torch.device) -> np.ndarray:
    """CAMs of `classes` (project indices, 1..K-1) at image size, summed over scales (and the flipped
    view), then max-normalised per class to [0,1] as IRN does. Returns float32 [k,H,W]."""
    h, w = image.shape[:2]
    if not classes:
        return np.zeros((0, h, w), np.float32)
    x = normalize(image).unsqueeze(0).to(device)
    idx = torch.as_tensor([c - 1 for c in classes], device=device)
    total = torch.zeros(len(classes), h, w, device=device)
    for s in scales:
        xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                              mode="bilinear", align_corners=False)
        if flip:
            xs = torch.cat([xs, xs.flip(-1)])
        if device.type == "cuda":
            xs = xs.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            cams = model.cams(xs)[:, idx].float()
        cams = F.interpolate(cams, size=(h, w), mode="bilinear", align_corners=False)
        if flip:
            cams = cams[:1] + cams[1:].flip(-1)
        total += cams[0]
    peak = total.flatten(1).max(1).values.view(-1, 1, 1)
    return (total / (peak + 1e-5)).cpu().numpy()


def extract_cams(
    checkpoint,
    image_paths: dict[str, Path],
    labels: dict[str, list[int]],
    ids: list[str],
    class_names: list[str],
    out_path,
    *,
    scales=(1.0,),
    flip: bool = False,
    device: str = "auto",
    config: dict | None = None,
) -> None:
    """One store file with the CAMs of `ids` (one shard), only for each image's present classes."""
    dev = pick_device(device)
    model = load_cam_net(checkpoint, class_names, dev)
    with StoreWriter(out_path, "cam", class_names, scales=list(scales), model_sha256=file_sha256(checkpoint),
                     config=config) as store:
        for image_id in progress(ids, desc=f"extract_cams {Path(out_path).name}"):
            classes = labels[image_id]
            maps = infer_cams(model, read_image(image_paths[image_id]), classes, scales, flip, dev)
            store.write(image_id, maps, classes)
    log.info("wrote %d images to %s", len(ids), out_path)
