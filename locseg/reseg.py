"""Segment: train the class-agnostic segmenter on external masks, then resegment CAMs round after round."""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from locseg.batching import Compute, StageItems, crop_rows, maybe_compile, run_stage, size_order, to_input
from locseg.data.transforms import AugmentedSet, add_mirrored, inference_scale, joint_augment, normalize
from locseg.data.voc import image_size, read_image
from locseg.models.segmenter import Segmenter
from locseg.store import ShardedStore, StoreWriter, file_sha256
from locseg.checkpoints import load_model, save_checkpoint
from locseg.devices import pick_device
from locseg.runtime import prepare_model, seed_everything
from locseg.sam import sam_resegmenter
from locseg.train import fit
from locseg.weights import describe_init, warn_if_scratch

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


SECOND_CUES = ("prediction", "perturbed_mask")
FEEDBACK = ("cam_mean", "output", "running_mean")


def check_feedback(feedback: str) -> None:
    """Refuse an unknown feedback rule before any work (training, a store) is started."""
    if feedback not in FEEDBACK:
        raise ValueError(f"unknown feedback {feedback!r}; choose from {list(FEEDBACK)}")


def next_cue(cam: torch.Tensor, output: torch.Tensor, feedback: str) -> torch.Tensor:
    """The cue of round r+1 from the first round's cue (the CAM) and round r's probabilities.

    `output` is the paper's rule: the output replaces the cue. `cam_mean` feeds the mean of the CAM and the
    output: the class evidence that located the object stays in every round, so a round refines the cue
    instead of replacing it, and an error of one round cannot become the next round's whole cue (demo, same
    segmenter, rounds 1 / 2 / 3: output 77.3 / 77.2 / 76.0, cam_mean 77.3 / 77.9 / 77.7). `running_mean`
    feeds back like `cam_mean`, but a round's probabilities are first averaged with the earlier rounds'
    (`round_probs`). Training's second pass gets the same rule, so it sees the cue that rounds 2+ feed."""
    check_feedback(feedback)
    return output if feedback == "output" else 0.5 * (cam + output)


def round_probs(outputs: list[torch.Tensor], feedback: str) -> torch.Tensor:
    """A round's probabilities from the segmenter's outputs of rounds 1..r: the last output, or with
    `running_mean` the mean of all of them. Averaging damps the rounds: a later round can move a mask only
    by its share of the mean, so one round's error (a mask that lost its class mark, an object dropped or
    taken by a neighbour's class) is diluted instead of fed forward whole; on sets where a second round
    overshoots, rounds 2-3 then stay at round 1 instead of falling below it (docs/method-defaults.md)."""
    if feedback == "running_mean":
        return torch.stack(outputs).mean(0)
    return outputs[-1]


# perturbed_mask's shrink (-) / grow (+) radius range, in units of sqrt(object area). Biased to growth: fed
# back, the segmenter's masks grow round after round (measured on a demo subset: false-positive pixels up by
# a third to a half from round 1 to 3), so the second pass must learn to pull a too-large cue back in.
GROWTH = (-0.2, 0.5)


def dilate(m: torch.Tensor, r: int) -> torch.Tensor:
    """Max over the (2r+1)^2 square around each pixel of [N, C, H, W] maps, as a row pass then a column pass:
    the same values as one square max-pool, at 2(2r+1) instead of (2r+1)^2 comparisons per pixel (the square
    pool took half the data time of a segmenter training step)."""
    m = F.max_pool2d(m, (2 * r + 1, 1), stride=1, padding=(r, 0))
    return F.max_pool2d(m, (1, 2 * r + 1), stride=1, padding=(0, r))


def perturbed_mask(target: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A cue like the segmenter's own output (what it gets from round 2 on): the object mask grown or
    shrunk by a radius drawn from GROWTH x sqrt(object area), blurred by 0-2 px and scaled to a peak in
    [0.6, 1]. `target` is a [H, W] crop (1 = object); returns float [1, H, W]."""
    m = (target == 1).float()[None, None]
    r = round(rng.uniform(*GROWTH) * float(m.sum()) ** 0.5)
    if r > 0:
        m = dilate(m, r)
    elif r < 0:
        m = 1 - dilate(1 - m, -r)
    blur = int(rng.integers(0, 3))
    if blur:
        m = F.avg_pool2d(m, 2 * blur + 1, stride=1, padding=blur, count_include_pad=False)
    return m[0] * float(rng.uniform(0.6, 1.0))


class CueSet(AugmentedSet):
    """One sample per (image, present class): image, that class's cue, and the class's object mask.

    With `second_cues` a sample also carries the cue of a second training pass, drawn per sample from
    SECOND_CUES: a perturbed object mask, or (flag set) the model's own detached first-pass prediction,
    which only the loss can compute. Samples are then (image, cue, target, perturbed mask, use prediction).

    With `one_pass` (a FEEDBACK rule) a sample keeps one cue: its CAM, or for half of the samples (drawn
    per sample) the cue a second round would get, `next_cue` of the CAM and a perturbed mask."""

    def __init__(self, coco, cams: ShardedStore | None, crop: int, scale_range, seed: int, second_cues=(),
                 one_pass: str | None = None):
        super().__init__([(i, c) for i in coco.ids for c in coco.labels(i)], crop, scale_range, seed)
        unknown = sorted(set(second_cues) - set(SECOND_CUES))
        if unknown:
            raise ValueError(f"unknown second cue(s) {unknown}; choose from {list(SECOND_CUES)}")
        if one_pass and list(second_cues) != ["perturbed_mask"]:
            raise ValueError(f"one-pass training mixes in perturbed_mask cues only, "
                             f"got second cues {list(second_cues)}")
        self.coco, self.cams, self.second_cues, self.one_pass = coco, cams, list(second_cues), one_pass
        if cams is not None:
            missing = [i for i in coco.ids if i not in cams]
            if missing:
                raise ValueError(f"CAM store lacks {len(missing)} external images, e.g. {missing[:3]}")

    def __getitem__(self, index: int):
        image_id, cls = self.samples[index]
        rng = self.rng(index)
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
        target_t = target_t[0].long()
        if self.one_pass and rng.random() < 0.5:
            return image, next_cue(cue_t, perturbed_mask(target_t, rng), self.one_pass), target_t
        if self.one_pass or not self.second_cues:
            return image, cue_t, target_t
        second = self.second_cues[int(rng.integers(len(self.second_cues)))]
        if second == "prediction":
            return image, cue_t, target_t, torch.zeros_like(cue_t), torch.tensor(1.0)
        return image, cue_t, target_t, perturbed_mask(target_t, rng), torch.tensor(0.0)


def soft_dice(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of 1 - soft Dice between [B, H, W] maps (zero outside the valid pixels)."""
    inter = (p * q).flatten(1).sum(1)
    return (1 - (2 * inter + 1) / (p.flatten(1).sum(1) + q.flatten(1).sum(1) + 1)).mean()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Soft Dice (the paper's loss: insensitive to object size) + BCE (stable gradients), 255 ignored."""
    valid = (target != IGNORE).float()
    t = (target == 1).float()
    logits = logits[:, 0].float()
    bce = F.binary_cross_entropy_with_logits(logits, t, weight=valid, reduction="sum") / valid.sum().clamp(min=1)
    return bce + soft_dice(torch.sigmoid(logits) * valid, t * valid)


def segmenter_loss(model: Segmenter, batch, consistency: float = 0.0, feedback: str = "cam_mean") -> torch.Tensor:
    """Dice + BCE of the first pass (the configured cue). With a second cue in the batch, also of a second
    pass on what a second round would feed (`next_cue` of the first cue and the second cue), plus
    `consistency` x Dice between the two passes' outputs: the mask should not depend on how good the cue
    is, which is what lets a round feed the next without drifting."""
    images, cues, targets, *second = batch
    first = model(images, cues)
    loss = dice_bce_loss(first, targets)
    if not second:
        return loss
    perturbed, use_prediction = second
    own = torch.sigmoid(first.detach().float())
    second_output = torch.where(use_prediction.view(-1, 1, 1, 1) > 0, own, perturbed)
    out = model(images, next_cue(cues, second_output, feedback))
    loss = loss + dice_bce_loss(out, targets)
    if consistency:
        valid = (targets != IGNORE).float()
        p, q = (torch.sigmoid(x[:, 0].float()) * valid for x in (first, out))
        loss = loss + consistency * soft_dice(p, q)
    return loss


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
    crop: int = 96, scale_range=(0.7, 1.3),  # training crops: side, random rescale range
    second_cues=("perturbed_mask",),
    consistency: float = 1.0,
    feedback: str = "cam_mean",
    passes: int = 2,
    seed: int = 0, device: str = "auto", meta: dict | None = None,  # meta: extra checkpoint metadata
    **fit_options,
) -> dict:
    """`cam_store_paths` None trains on degraded-GT cues instead of CAMs. `second_cues` (a subset of
    SECOND_CUES; empty: the CAM only) and `consistency` make the cue-robust two-pass training of
    `segmenter_loss`; `feedback` (FEEDBACK, see `next_cue`) is the rule of the rounds the segmenter is
    trained for, and resegment reads it from the checkpoint. `passes` 1 instead sends each sample through
    once, with its CAM or (half of them) a second round's cue (CueSet `one_pass`): half the cost of a
    step, and no consistency term. `fit_options` go to `locseg.train.fit`."""
    if passes not in (1, 2):
        raise ValueError(f"segmenter passes must be 1 or 2, got {passes}")
    if consistency and (passes == 1 or not second_cues):
        raise ValueError("segmenter consistency > 0 needs two passes and at least one second cue (second_cues)")
    check_feedback(feedback)
    gen = seed_everything(seed)
    dev = pick_device(device)
    cams = ShardedStore(cam_store_paths, kind="cam", class_names=class_names) if cam_store_paths else None
    data = CueSet(coco, cams, crop, scale_range, seed, second_cues, feedback if passes == 1 and second_cues else None)
    warn_if_scratch("train_segmenter", backbone, weights)
    model = prepare_model(Segmenter(backbone, output_stride, weights, width), dev)
    log.info("segmenter samples: (image, class) pairs from %d external images; %d pass(es), second cues %s, "
             "consistency %g, feedback %s", len(coco.ids), passes, list(second_cues), consistency, feedback)
    loss = partial(segmenter_loss, consistency=consistency, feedback=feedback)
    losses = fit(model, data, loss, device=dev, generator=gen, desc="train_segmenter", **fit_options)
    if cams is not None:
        cams.close()
    summary = {"class_names": list(class_names), "backbone": backbone,
               "init": describe_init(backbone, weights), "output_stride": output_stride,
               "width": width, "cue": "cam" if cam_store_paths else "degraded_gt", "second_cues": list(second_cues),
               "consistency": consistency, "feedback": feedback, "passes": passes, "samples": len(data),
               "epochs": len(losses), "loss_per_epoch": losses, "seed": seed, **(meta or {})}
    save_checkpoint(out_path, model, "segmenter", summary)
    return summary


def load_segmenter(path, class_names: list[str], device: torch.device) -> tuple[Segmenter, str]:
    """The model and the feedback rule it was trained for (checkpoints before `feedback`: the output)."""
    model, meta = load_model(path, "segmenter", class_names,
                             lambda meta: Segmenter(meta["backbone"], meta["output_stride"], None, meta["width"]))
    return prepare_model(model, device).eval(), meta.get("feedback", "output")


@torch.no_grad()
def resegment_image(model: Segmenter, image: np.ndarray, cams: np.ndarray, rounds: int,
                    device: torch.device, feedback: str = "cam_mean", flip: bool = False) -> np.ndarray:
    """All classes of one image in one batch; each round's output makes the next round's cue (`next_cue`).
    `flip` averages each round's probabilities with those of the mirrored image and cue.
    Returns float32 [rounds, k, H, W] probabilities."""
    return resegment_batch(model, [image], [cams], rounds, Compute.on(device), feedback=feedback, flip=flip)[0]


@torch.no_grad()
def resegment_batch(model, images, cams: list[np.ndarray], rounds: int, compute: Compute,
                    keep_rounds: bool = True, max_side: int | None = None, feedback: str = "cam_mean",
                    flip: bool = False) -> list[np.ndarray]:
    """`resegment_image` for several images of one run size (`Compute.shared_size`) at once: one forward
    pass per round (two with `flip`) over every (image, present class) pair of the batch; with
    `compute.canvas`, image and cue are padded to the canvas (the cue with zeros) and the probabilities
    cropped back. With one image this is exactly the per-image computation. `max_side` caps the run size's
    longer side. Returns one float32 [rounds, k_i, h_i, w_i] array per image ([1, k_i, h_i, w_i], the last
    round, when not keep_rounds: earlier rounds then never leave the device)."""
    sizes = [np.asarray(im).shape[:2] for im in images]
    ks = [c.shape[0] for c in cams]
    kept = rounds if keep_rounds else 1
    if not sum(ks):
        return [np.zeros((kept, 0, h, w), np.float32) for h, w in sizes]
    dev = compute.device
    active = [i for i, k in enumerate(ks) if k]
    size = compute.shared_size(sizes)
    x = to_input([images[i] for i in active], size, compute)
    if len(active) == 1:
        x = x.expand(ks[active[0]], -1, -1, -1)
    else:
        x = x.repeat_interleave(torch.as_tensor([ks[i] for i in active], device=dev), dim=0)
    cue = torch.zeros(sum(ks), 1, *size, device=dev)
    start = 0
    for i in active:
        h, w = sizes[i]
        cue[start:start + ks[i], 0, :h, :w] = torch.from_numpy(cams[i]).to(dev)
        start += ks[i]
    s = inference_scale(*size, max_side)
    if s < 1.0:  # run at the reduced size, hand back every round at run size
        small = (max(1, round(size[0] * s)), max(1, round(size[1] * s)))
        x = F.interpolate(x, size=small, mode="bilinear", align_corners=False)
        cue = F.interpolate(cue, size=small, mode="bilinear", align_corners=False)
    if compute.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    mirrored = x.flip(-1) if flip else None
    cam, outputs, out = cue, [], []
    for _ in range(rounds):
        with compute.autocast():
            probs = torch.sigmoid(model(x, cue).float())
            if flip:
                probs = 0.5 * add_mirrored(probs, torch.sigmoid(model(mirrored, cue.flip(-1)).float()))
        outputs.append(probs)
        probs = round_probs(outputs, feedback)
        cue = next_cue(cam, probs, feedback)
        full = probs if s == 1.0 else F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
        out.append(full[:, 0])
    return crop_rows(torch.stack(out[-kept:]), ks, sizes)


class _ResegItems(StageItems):
    """An image's CAMs are its cue, checked against the image's size."""

    def __init__(self, cams: ShardedStore, image_paths: dict[str, Path], ids: list[str]):
        super().__init__(ids, image_paths)
        self.cams = cams

    def cue(self, image_id: str, image: np.ndarray) -> tuple:
        maps, classes = self.cams.read(image_id)
        if maps.shape[1:] != image.shape[:2]:
            raise ValueError(f"{self.image_paths[image_id]}: image {image_id!r} is {image.shape[0]}x{image.shape[1]}, "
                             f"but its CAMs in {', '.join(str(r.path) for r in self.cams.readers)} are "
                             f"{maps.shape[1]}x{maps.shape[2]}")
        return maps, classes


def resegment(
    checkpoint,
    cam_store_path,
    image_paths: dict[str, Path],
    class_names: list[str],
    out_path,
    *,
    rounds: int = 3,
    keep_rounds: bool = True,
    max_side: int | None = None,
    flip: bool = False,
    feedback: str | None = None,
    device: str = "auto",
    config: dict | None = None,
    canvas: bool = False,
    batch_size: int = 1, workers: int = 0, compile: bool = False,  # speed only (config `inference`)
    bf16: bool | None = None, channels_last: bool | None = None,  # None: on for CUDA
    sam: dict | None = None,
) -> dict:
    """One prob store per CAM shard: `maps` = the last round; `rounds` [R,k,H,W] when keep_rounds. Images
    run in `size_order`. Returns (and logs) the images per forward pass.

    `feedback` (FEEDBACK) overrides the rule the checkpoint was trained for (None: that rule); it makes a
    difference to training only with second cues, so one segmenter trained without them can be scored
    under every rule (benchmarks/bench_method.py).

    `sam` (config `segmenter.sam`, for `segmenter.kind: sam`): `checkpoint` is a SAM checkpoint and SAM
    makes the probabilities (locseg/sam.py); flip, max_side and compile are then not used. None: the
    learned segmenter of `checkpoint`.

    batch_size / workers / compile (config `inference`) change speed, never which maps are written (see
    locseg/batching.py): images of one size share a forward pass, workers decode images and read CAMs
    ahead of the model, and a thread compresses and writes the store. `canvas` (config `inference.canvas`)
    pads images to their canvas so that mixed sizes share a pass: it changes the maps. bf16 /
    channels_last: None follows the device (on for CUDA).
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    dev = pick_device(device)
    compute = Compute.on(dev, bf16, channels_last, canvas)
    keep = keep_rounds and rounds > 1
    if sam is None:
        model, trained_for = load_segmenter(checkpoint, class_names, dev)
        feedback = trained_for if feedback is None else feedback
        check_feedback(feedback)
        model = compute.prepare(model)
        log.info("resegment: %d rounds (feedback %s, flip %s) on %s (bf16 %s), batch_size %d, workers %d", rounds,
                 feedback, flip, dev, compute.bf16, batch_size, workers)
        infer = partial(resegment_batch, maybe_compile(model, dev, compile), rounds=rounds, compute=compute,
                        keep_rounds=keep, max_side=max_side, feedback=feedback, flip=flip)
    else:
        infer = sam_resegmenter(checkpoint, compute, sam, rounds=rounds, keep_rounds=keep)
    with ShardedStore([cam_store_path], kind="cam", class_names=class_names) as cams:
        missing = [i for i in cams.ids if i not in image_paths]
        if missing:
            raise KeyError(f"{cam_store_path}: {len(missing)} image id(s) with no image path, e.g. {missing[:3]}")
        ids = [cams.ids[j] for j in size_order([image_size(image_paths[i]) for i in cams.ids], canvas)]
        store = partial(StoreWriter, out_path, "prob", class_names, scales=cams.attrs["scales"],
                        model_sha256=file_sha256(checkpoint), config=config, expected=len(ids), rounds=rounds)
        passes = run_stage(_ResegItems(cams, image_paths, ids), store, infer, compute, batch_size=batch_size,
                           workers=workers, desc=f"resegment {Path(out_path).name}",
                           to_write=lambda p: (p[-1], {"rounds": p} if keep else None))
    log.info("resegment %s: %s, batch_size %d", Path(out_path).name, passes.describe(), batch_size)
    return passes.summary()
