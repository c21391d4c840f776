"""Segment: train the class-agnostic segmenter on external masks, resegment CAMs, assemble labels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from locseg.data.transforms import joint_augment, normalize
from locseg.data.voc import read_image, write_mask
from locseg.fsutil import atomic_path
from locseg.models.segmenter import Segmenter
from locseg.store import ShardedStore, StoreWriter, file_sha256
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

log = logging.getLogger("locseg.reseg")
IGNORE = 255


def degraded_cue(target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A CAM-like cue from a GT mask: a Gaussian bump around one random object pixel, for categories the
    CAM net does not know. Sparse and off-centre like a real CAM, never the full shape."""
    ys, xs = np.nonzero(target == 1)
    h, w = target.shape
    if len(ys) == 0:
        return np.zeros((h, w), np.float32)
    i = rng.integers(len(ys))
    sigma = 0.25 * np.sqrt(len(ys))
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2) / (2 * sigma**2)).astype(np.float32)


class CueSet(Dataset):
    """One sample per (image, present class): image, that class's cue, and the class's object mask."""

    def __init__(self, coco, cams: ShardedStore | None, crop: int, scale_range, seed: int):
        self.coco, self.cams = coco, cams
        self.samples = [(i, c) for i in coco.ids for c in coco.labels(i)]
        if cams is not None:
            missing = [i for i in coco.ids if i not in cams]
            if missing:
                raise ValueError(f"CAM store lacks {len(missing)} external images, e.g. {missing[:3]}")
        self.crop, self.scale_range, self.seed = crop, scale_range, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        image_id, cls = self.samples[index]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image = normalize(read_image(self.coco.image_path(image_id)))
        target = self.coco.target(image_id, cls)
        if self.cams is None:
            cue = degraded_cue(target, rng)
        else:
            maps, classes = self.cams.read(image_id)
            cue = maps[list(classes).index(cls)]
        image, cue_t, target_t = joint_augment(
            rng,
            [(image, "bilinear", 0.0), (torch.from_numpy(cue)[None], "bilinear", 0.0),
             (torch.from_numpy(target)[None], "nearest", float(IGNORE))],
            self.crop, self.scale_range,
        )
        return image, cue_t, target_t[0].long()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (the seed's loss: insensitive to object size) + BCE (stable gradients), 255 ignored."""
    valid = (target != IGNORE).float()
    t = (target == 1).float()
    logits = logits[:, 0].float()
    bce = F.binary_cross_entropy_with_logits(logits, t, weight=valid, reduction="sum") / valid.sum().clamp(min=1)
    p = torch.sigmoid(logits) * valid
    inter = (p * t).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)
    return bce + dice.mean()


def train_segmenter(
    coco,
    cam_store_paths: list | None,
    class_names: list[str],
    out_path,
    *,
    backbone: str = "small",
    weights: str | None = None,
    output_stride: int = 16,
    width: int = 64,
    crop: int = 96,
    scale_range=(0.7, 1.3),
    batch_size: int = 8,
    epochs: int = 10,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    device: str = "auto",
    num_workers: int = 0,
    meta: dict | None = None,
) -> dict:
    """`cam_store_paths` None trains on degraded-GT cues instead of CAMs."""
    gen = seed_everything(seed)
    dev = pick_device(device)
    cams = ShardedStore(cam_store_paths, kind="cam", class_names=class_names) if cam_store_paths else None
    data = CueSet(coco, cams, crop, scale_range, seed)
    if len(data) < 2:
        raise ValueError(f"segmenter training needs at least 2 (image, class) samples, found {len(data)}")
    loader = DataLoader(data, batch_size=min(batch_size, len(data)), shuffle=True, drop_last=True,
                        num_workers=num_workers, generator=gen)
    model = prepare_model(Segmenter(backbone, output_stride, weights, width), dev)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    total, step, losses = epochs * len(loader), 0, []
    log.info("segmenter training: %d samples from %d images, %d steps on %s",
             len(data), len(coco.ids), total, dev)
    bar = progress(total=total, desc="train_segmenter")
    for epoch in range(epochs):
        data.epoch = epoch
        model.train()
        running = 0.0
        for images, cues, targets in loader:
            for group in opt.param_groups:
                group["lr"] = poly_lr(lr, step, total)
            images, cues, targets = images.to(dev), cues.to(dev), targets.to(dev)
            with autocast(dev):
                logits = model(images, cues)
            loss = dice_bce_loss(logits, targets)
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
    if cams is not None:
        cams.close()
    summary = {"class_names": list(class_names), "backbone": backbone, "output_stride": output_stride,
               "width": width, "cue": "cam" if cam_store_paths else "degraded_gt", "samples": len(data),
               "epochs": epochs, "loss_per_epoch": losses, "seed": seed, **(meta or {})}
    save_checkpoint(out_path, model, "segmenter", summary)
    return summary


def load_segmenter(path, class_names: list[str], device: torch.device) -> Segmenter:
    payload = load_checkpoint(path, "segmenter", class_names)
    meta = payload["meta"]
    model = Segmenter(meta["backbone"], meta["output_stride"], None, meta["width"])
    model.load_state_dict(payload["state_dict"])
    return prepare_model(model, device).eval()


@torch.no_grad()
def resegment_image(model: Segmenter, image: np.ndarray, cams: np.ndarray, rounds: int,
                    device: torch.device) -> np.ndarray:
    """All classes of one image in one batch; each round's output is the next round's cue.
    Returns float32 [rounds, k, H, W] probabilities."""
    k, h, w = cams.shape
    if k == 0:
        return np.zeros((rounds, 0, h, w), np.float32)
    x = normalize(image).unsqueeze(0).expand(k, -1, -1, -1).to(device)
    cue = torch.from_numpy(cams).unsqueeze(1).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    out = []
    for _ in range(rounds):
        with autocast(device):
            cue = torch.sigmoid(model(x, cue).float())
        out.append(cue[:, 0])
    return torch.stack(out).cpu().numpy()


def resegment(
    checkpoint,
    cam_store_path,
    image_paths: dict[str, Path],
    class_names: list[str],
    out_path,
    *,
    rounds: int = 3,
    keep_rounds: bool = True,
    device: str = "auto",
    config: dict | None = None,
) -> None:
    """One prob store per CAM shard: `maps` = the last round; `rounds` [R,k,H,W] when keep_rounds."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    dev = pick_device(device)
    model = load_segmenter(checkpoint, class_names, dev)
    with ShardedStore([cam_store_path], kind="cam", class_names=class_names) as cams, \
            StoreWriter(out_path, "prob", class_names, scales=cams.attrs["scales"],
                        model_sha256=file_sha256(checkpoint), config=config) as out:
        for image_id in progress(cams.ids, desc=f"resegment {Path(out_path).name}"):
            maps, classes = cams.read(image_id)
            probs = resegment_image(model, read_image(image_paths[image_id]), maps, rounds, dev)
            extra = {"rounds": probs} if keep_rounds and rounds > 1 else None
            out.write(image_id, probs[-1], classes, extra=extra)


def assemble_labels(maps: np.ndarray, classes, bg_score: float, band: float = 0.0) -> np.ndarray:
    """Label map from per-class scores: argmax over a constant background score and the present
    classes. Pixels whose best object score lies within `band` of the background score are unsure
    and become 255, so a model trained on them ignores them. Also gives the CAM baseline (bg_score =
    the background threshold)."""
    k, h, w = maps.shape
    if k == 0:
        return np.zeros((h, w), np.uint8)
    lut = np.array([0, *classes], np.uint8)
    best = maps.max(0)
    label = lut[np.where(best > bg_score, maps.argmax(0) + 1, 0)]
    if band > 0:
        label[np.abs(best - bg_score) < band] = IGNORE
    return label


def export_masks(prob_store_paths: list, class_names: list[str], out_dir, *, bg_score: float = 0.5,
                 band: float = 0.0) -> int:
    """One VOC-palette PNG per image; the directory appears whole or not at all."""
    with atomic_path(out_dir) as tmp, ShardedStore(prob_store_paths, kind="prob", class_names=class_names) as probs:
        tmp.mkdir()
        for image_id in progress(probs.ids, desc="export_masks"):
            maps, classes = probs.read(image_id)
            write_mask(tmp / f"{image_id}.png", assemble_labels(maps, classes, bg_score, band))
        n = len(probs)
    log.info("wrote %d masks to %s", n, out_dir)
    return n
