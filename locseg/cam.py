"""Locate: train the multi-label CAM classifier, then extract multi-scale + flip CAMs into the store."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from locseg.batching import Compute, StageItems, crop_rows, maybe_compile, run_stage, size_order, to_input
from locseg.data.transforms import AugmentedSet, fold_flip, inference_scale, joint_augment, multiscale_views, normalize
from locseg.data.voc import image_size, read_image
from locseg.models.cam import CamNet
from locseg.store import StoreWriter, file_sha256
from locseg.checkpoints import load_model, save_checkpoint
from locseg.devices import pick_device
from locseg.runtime import prepare_model, seed_everything
from locseg.train import fit
from locseg.weights import describe_init, warn_if_scratch

log = logging.getLogger("locseg.cam")


class ClassificationSet(AugmentedSet):
    """(augmented image crop, multi-hot foreground labels)."""

    def __init__(self, image_paths: dict[str, Path], labels: dict[str, list[int]], num_classes: int,
                 crop: int, scale_range, seed: int):
        # images without a foreground class teach nothing
        super().__init__([i for i in image_paths if labels.get(i)], crop, scale_range, seed)
        self.image_paths, self.labels, self.num_classes = image_paths, labels, num_classes

    @property
    def ids(self) -> list[str]:
        return self.samples

    def __getitem__(self, index: int):
        image_id = self.samples[index]
        rng = self.rng(index)
        image = normalize(read_image(self.image_paths[image_id]))
        (image,) = joint_augment(rng, [(image, "bilinear", 0.0)], self.crop, self.scale_range)
        target = torch.zeros(self.num_classes - 1)
        target[[c - 1 for c in self.labels[image_id]]] = 1.0
        return image, target


def _bce(model: CamNet, batch) -> torch.Tensor:
    images, targets = batch
    return F.binary_cross_entropy_with_logits(model(images).float(), targets)


def train_cam(
    image_paths: dict[str, Path],
    labels: dict[str, list[int]],
    class_names: list[str],
    out_path,
    *,
    backbone: str = "small",
    weights: str | None = None,
    output_stride: int = 16,
    crop: int = 96, scale_range=(0.7, 1.3),  # training crops: side, random rescale range
    seed: int = 0, device: str = "auto", meta: dict | None = None,  # meta: extra checkpoint metadata
    **fit_options,
) -> dict:
    """Multi-label BCE on image-level labels. Returns the training summary also stored in the checkpoint.
    `fit_options` (batch_size, epochs, optimizer, lr, weight_decay, num_workers, tensorboard_dir) go to
    `locseg.train.fit`."""
    gen = seed_everything(seed)
    dev = pick_device(device)
    data = ClassificationSet(image_paths, labels, len(class_names), crop, scale_range, seed)
    warn_if_scratch("train_cam", backbone, weights)
    model = prepare_model(CamNet(len(class_names) - 1, backbone, output_stride, weights), dev)
    losses = fit(model, data, _bce, device=dev, generator=gen, desc="train_cam", **fit_options)
    summary = {"class_names": list(class_names), "backbone": backbone,
               "init": describe_init(backbone, weights), "output_stride": output_stride,
               "epochs": len(losses), "images": len(data), "loss_per_epoch": losses, "seed": seed,
               **(meta or {})}
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
    model, _ = load_model(path, "cam", class_names,
                          lambda meta: CamNet(len(class_names) - 1, meta["backbone"], meta["output_stride"]))
    return prepare_model(model, device).eval()


@torch.no_grad()
def infer_cams(model: CamNet, image: np.ndarray, classes: list[int], scales, flip: bool,
               device: torch.device) -> np.ndarray:
    """CAMs of `classes` (project indices, 1..K-1) at image size, summed over scales (and the flipped
    view), then max-normalised per class to [0,1] as IRN does. Returns float32 [k,H,W]."""
    return infer_cams_batch(model.cams, [image], [classes], scales, flip, Compute.on(device))[0]


@torch.no_grad()
def infer_cams_batch(cams_fn, images, classes: list[list[int]], scales, flip: bool, compute: Compute,
                     max_side: int | None = None) -> list[np.ndarray]:
    """`infer_cams` for several images of one run size (`Compute.shared_size`) at once: per scale, one
    forward pass over every image and its flipped view ([2B, 3, h, w]); each image's own classes are picked
    from the raw CAMs, all picked maps are upsampled in one call, then cropped back to each image's size
    (padded with `compute.canvas`). `cams_fn` is `CamNet.cams` (or its torch.compile). Images without a
    class skip the model. With one image this is exactly the per-image computation. `max_side` caps the
    run size's longer side. Returns one float32 [k_i, h_i, w_i] array per image."""
    sizes = [np.asarray(im).shape[:2] for im in images]
    ks = [len(c) for c in classes]
    active = [i for i, k in enumerate(ks) if k]
    if not active:
        return [np.zeros((0, h, w), np.float32) for h, w in sizes]
    dev = compute.device
    size = compute.shared_size(sizes)
    x = to_input([images[i] for i in active], size, compute)
    b = len(active)
    idx = [torch.as_tensor([c - 1 for c in classes[i]], device=dev) for i in active]
    total = torch.zeros(sum(ks), *size, device=dev)
    base = inference_scale(*size, max_side)
    for xs in multiscale_views(x, size, [base * s for s in scales], flip):
        if compute.channels_last:
            xs = xs.contiguous(memory_format=torch.channels_last)
        with compute.autocast():
            raw = cams_fn(xs)
        if b == 1:
            cams = raw[:, idx[0]].float()  # [views, k, h', w']
        else:  # image j's views are rows j (and b + j): pick its classes, stack all maps along dim 1
            views = [[j, b + j] if flip else [j] for j in range(b)]
            cams = torch.cat([raw[v][:, i] for v, i in zip(views, idx)], 1).float()
        cams = F.interpolate(cams, size=size, mode="bilinear", align_corners=False)
        total += fold_flip(cams, flip)[0]
    out = []
    for maps in crop_rows(total, ks, sizes):  # max-normalise over the image, not the padding
        out.append(maps / (maps.reshape(len(maps), -1).max(1).reshape(-1, 1, 1) + 1e-5) if len(maps) else maps)
    return out


class _CamImages(StageItems):
    """An image's classes are its cue: which CAMs to compute."""

    def __init__(self, ids: list[str], image_paths: dict[str, Path], labels: dict[str, list[int]]):
        super().__init__(ids, image_paths)
        self.labels = labels

    def cue(self, image_id: str, image: np.ndarray) -> tuple:
        classes = list(self.labels[image_id])
        return classes, classes


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
    max_side: int | None = None,
    canvas: bool = False,
    batch_size: int = 1, workers: int = 0, compile: bool = False,  # speed only (config `inference`)
    bf16: bool | None = None, channels_last: bool | None = None,  # None: on for CUDA
) -> dict:
    """One store file with the CAMs of `ids` (one shard), only for each image's present classes, written in
    `size_order`. `max_side` caps the longer side (of the canvas with `canvas`) the scales apply to (maps
    still come out at image size). Returns (and logs) the images per forward pass.

    batch_size / workers / compile (config `inference`) change speed, never which maps are written:
    images of one size share a forward pass, `workers` processes decode images ahead of the model, and a
    thread compresses and writes the store beside it (see locseg/batching.py). `canvas` (config
    `inference.canvas`) pads images to their canvas so that mixed sizes share a pass: it changes the maps.
    bf16 / channels_last: None follows the device (on for CUDA); fp32 on CUDA is bf16=False.
    """
    dev = pick_device(device)
    missing = [i for i in ids if i not in labels]
    if missing:
        raise KeyError(f"no image labels for {len(missing)} image(s) of {Path(out_path).name}, e.g. {missing[:3]}")
    compute = Compute.on(dev, bf16, channels_last, canvas)
    model = compute.prepare(load_cam_net(checkpoint, class_names, dev))
    log.info("extract_cams: %d images on %s (bf16 %s), batch_size %d, workers %d", len(ids), dev, compute.bf16,
             batch_size, workers)
    cams_fn = maybe_compile(model.cams, dev, compile)
    ids = [ids[j] for j in size_order([image_size(image_paths[i]) for i in ids], canvas)]
    data = _CamImages(ids, image_paths, labels)
    store = partial(StoreWriter, out_path, "cam", class_names, scales=list(scales),
                    model_sha256=file_sha256(checkpoint), config=config, expected=len(ids))
    passes = run_stage(data, store, partial(infer_cams_batch, cams_fn, scales=scales, flip=flip, compute=compute,
                                            max_side=max_side),
                       compute, batch_size=batch_size, workers=workers, desc=f"extract_cams {Path(out_path).name}")
    log.info("wrote %d images to %s; %s, batch_size %d", len(ids), out_path, passes.describe(), batch_size)
    return passes.summary()
