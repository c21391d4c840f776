"""Segment Anything (SAM) as the class-agnostic segmenter (`segmenter.kind: sam`): each class's CAM becomes
SAM's prompts, SAM's masks become the per-class probabilities that resegment writes.

Prompts of one (image, class), the mix chosen by `segmenter.sam.prompts` (a subset of PROMPTS):
- `box`: the bounding box of the pixels whose CAM is >= `threshold` (the whole image when none is);
- `points`: up to `points` positive clicks at the CAM's highest peaks, each at least PEAK_SEPARATION of
  the longer image side from the others (the first one even below `threshold`);
- `mask`: the CAM as SAM's low-resolution mask prompt: resized like the image to a quarter of SAM's input
  frame (256 x 256 for the released models), zero-padded, and mapped to logits MASK_GAIN x (CAM -
  threshold), so the CAM threshold falls on SAM's own decision boundary (logit 0).
Later rounds (`reseg.rounds`) prompt with the previous round's mask: its low-resolution logits as the mask
prompt and its box (probability >= 0.5); the points stay at the CAM's peaks, the class evidence.

Per image there is one image embedding (one encoder pass for all images of a batch) and, per round, one
decoder call for all of its classes. Probabilities are the sigmoid of SAM's mask logits at image size, so
label assembly's bg_score 0.5 is SAM's own threshold. `segment_anything` is an optional dependency
(`pip install -e ".[sam]"`), imported only here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from locseg.batching import Compute
from locseg.fsutil import atomic_path

log = logging.getLogger("locseg.sam")

PROMPTS = ("box", "points", "mask")
MASK_GAIN = 20.0  # CAM -> mask-prompt logits; a CAM of 1 at threshold 0.3 gives +14, the range of SAM's own logits
PEAK_SEPARATION = 0.1  # fraction of the longer image side between two point prompts

# The released models (segment_anything.build_sam); every architecture is these keys, so a small SAM for
# tests (or a fine-tuned one) is the same code path.
_RELEASED = dict(img_size=1024, patch_size=16, window_size=14, prompt_dim=256, decoder_mlp_dim=2048,
                 iou_hidden_dim=256)
ARCHITECTURES = {
    "vit_b": dict(_RELEASED, embed_dim=768, depth=12, num_heads=12, global_attn_indexes=[2, 5, 8, 11]),
    "vit_l": dict(_RELEASED, embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=[5, 11, 17, 23]),
    "vit_h": dict(_RELEASED, embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=[7, 15, 23, 31]),
}


def build_sam(arch: dict):
    """A randomly initialised SAM of architecture `arch` (the keys of ARCHITECTURES' entries)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    embedding = arch["img_size"] // arch["patch_size"]
    dim = arch["prompt_dim"]
    encoder = ImageEncoderViT(
        img_size=arch["img_size"], patch_size=arch["patch_size"], embed_dim=arch["embed_dim"], depth=arch["depth"],
        num_heads=arch["num_heads"], mlp_ratio=4, out_chans=dim, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True, window_size=arch["window_size"],
        global_attn_indexes=tuple(arch["global_attn_indexes"]))
    prompts = PromptEncoder(embed_dim=dim, image_embedding_size=(embedding, embedding),
                            input_image_size=(arch["img_size"], arch["img_size"]), mask_in_chans=16)
    decoder = MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
                          iou_head_hidden_dim=arch["iou_hidden_dim"],
                          transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=arch["decoder_mlp_dim"],
                                                        num_heads=8))
    return Sam(image_encoder=encoder, prompt_encoder=prompts, mask_decoder=decoder,
               pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


def save_sam(model, arch: dict, path) -> None:
    """A SAM checkpoint that carries its architecture (a small or fine-tuned SAM as `segmenter.sam.checkpoint`)."""
    with atomic_path(path) as tmp:
        torch.save({"sam_architecture": dict(arch), "state_dict": model.state_dict()}, tmp)


def load_sam(path, model: str, device: torch.device):
    """SAM from `path`: a released checkpoint (a bare state dict) of architecture `model`, or a file of
    `save_sam` (its own architecture). Errors name the file."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(payload, dict) and "sam_architecture" in payload:
        arch, state = payload["sam_architecture"], payload["state_dict"]
        log.info("SAM from %s: its own architecture (embed_dim %d, depth %d, img_size %d)", path,
                 arch["embed_dim"], arch["depth"], arch["img_size"])
    else:
        arch, state = ARCHITECTURES[model], payload
    sam = build_sam(arch)
    try:
        sam.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"{path}: not a SAM {model} checkpoint ({str(e).splitlines()[0]})") from None
    return sam.to(device).eval()


# --------------------------------------------------------------------------- prompts


def region_boxes(maps: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """XYXY boxes [k, 4] (inclusive pixel indices, as SAM's own mask-to-box) of the pixels of each [k, H, W]
    map that are >= threshold, and which maps have no such pixel ([k] bool; their box is the whole map)."""
    k, h, w = maps.shape
    inside = maps >= threshold
    rows, cols = inside.any(2), inside.any(1)
    ys, xs = torch.arange(h, device=maps.device), torch.arange(w, device=maps.device)
    boxes = torch.stack([torch.where(cols, xs, w).amin(1), torch.where(rows, ys, h).amin(1),
                         torch.where(cols, xs, -1).amax(1), torch.where(rows, ys, -1).amax(1)], 1)
    empty = ~rows.any(1)
    whole = torch.tensor([0, 0, w - 1, h - 1], device=maps.device)
    return torch.where(empty[:, None], whole, boxes).float(), empty


def peak_points(maps: torch.Tensor, n: int, threshold: float, separation: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to `n` peaks of each [k, H, W] map, greedily: the highest pixel (first in raster order on ties),
    then the highest outside the square of half-side `separation` around each peak taken. Returns (x, y)
    coordinates [k, n, 2] and labels [k, n]: 1 for a peak (the first always, later ones while >= threshold),
    -1 (SAM's "not a point") for padding."""
    k, h, w = maps.shape
    m = maps.float().flatten(1).clone()
    ys, xs = torch.arange(h, device=maps.device), torch.arange(w, device=maps.device)
    coords = torch.zeros(k, n, 2, device=maps.device)
    labels = torch.full((k, n), -1, dtype=torch.int, device=maps.device)
    for i in range(n):
        value, index = m.max(1)
        y, x = index // w, index % w
        keep = (value >= threshold) | (i == 0)
        coords[:, i] = torch.stack([x, y], 1).float()
        labels[:, i] = torch.where(keep, 1, -1)
        near = ((ys[None, :, None] - y[:, None, None]).abs() <= separation) & \
               ((xs[None, None, :] - x[:, None, None]).abs() <= separation)
        m = m.masked_fill(near.flatten(1), float("-inf"))
    return coords, labels


def mask_prompt(maps: torch.Tensor, input_size: tuple[int, int], img_size: int, threshold: float) -> torch.Tensor:
    """[k, H, W] CAMs -> SAM mask-prompt logits [k, 1, S, S], S = img_size / 4 (256 for the released models):
    each map resized as the image is (to `input_size`, SAM's resized frame), to a quarter of that, placed
    top-left (SAM pads the image bottom/right) on zeros, then MASK_GAIN x (CAM - threshold)."""
    s = img_size // 4
    h, w = (max(1, round(n / 4)) for n in input_size)
    small = F.interpolate(maps.float()[:, None], size=(h, w), mode="bilinear", align_corners=False)
    padded = F.pad(small, (0, s - w, 0, s - h))
    return MASK_GAIN * (padded - threshold)


# --------------------------------------------------------------------------- inference


@torch.no_grad()
def sam_batch(sam, images, cams: list[np.ndarray], rounds: int, compute: Compute, *, prompts=PROMPTS,
              threshold: float = 0.3, points: int = 1, keep_rounds: bool = True) -> list[np.ndarray]:
    """What `locseg.reseg.resegment_batch` returns, made by SAM: one float32 [rounds, k_i, h_i, w_i] array of
    probabilities per image ([1, k_i, h_i, w_i], the last round, when not keep_rounds). One encoder pass for
    the images with a class, then per image and round one decoder call for all its classes."""
    from segment_anything.utils.transforms import ResizeLongestSide

    unknown = sorted(set(prompts) - set(PROMPTS))
    if unknown or not prompts:
        raise ValueError(f"segmenter.sam.prompts must be a non-empty subset of {list(PROMPTS)}, got {list(prompts)}")
    kept = rounds if keep_rounds else 1
    sizes = [tuple(np.asarray(im).shape[:2]) for im in images]
    active = [i for i, c in enumerate(cams) if c.shape[0]]
    out = [np.zeros((kept, c.shape[0], h, w), np.float32) for c, (h, w) in zip(cams, sizes)]
    if not active:
        return out
    dev, size = compute.device, sam.image_encoder.img_size
    resize = ResizeLongestSide(size)
    frames = [torch.as_tensor(resize.apply_image(np.asarray(images[i])), device=dev).permute(2, 0, 1)
              for i in active]
    with compute.autocast():
        embeddings = sam.image_encoder(torch.stack([sam.preprocess(f[None].float())[0] for f in frames]))
    pe = sam.prompt_encoder.get_dense_pe()
    for embedding, frame, i in zip(embeddings, frames, active):
        h, w = sizes[i]
        cam = torch.from_numpy(np.asarray(cams[i], np.float32)).to(dev)
        input_size = tuple(frame.shape[1:])
        boxes, _ = region_boxes(cam, threshold)
        clicks = peak_points(cam, points, threshold, max(1, round(PEAK_SEPARATION * max(h, w))))
        point_prompt = (resize.apply_coords_torch(clicks[0], (h, w)), clicks[1]) if "points" in prompts else None
        low = mask_prompt(cam, input_size, size, threshold)
        rounds_out = []
        for _ in range(rounds):
            with compute.autocast():
                sparse, dense = sam.prompt_encoder(
                    points=point_prompt, boxes=resize.apply_boxes_torch(boxes, (h, w)) if "box" in prompts else None,
                    masks=low if "mask" in prompts else None)
                low, _ = sam.mask_decoder(image_embeddings=embedding[None], image_pe=pe, sparse_prompt_embeddings=sparse,
                                          dense_prompt_embeddings=dense, multimask_output=False)
            low = low.float()
            probs = torch.sigmoid(sam.postprocess_masks(low, input_size, (h, w)))[:, 0]
            rounds_out.append(probs)
            new_boxes, empty = region_boxes(probs, 0.5)
            boxes = torch.where(empty[:, None], boxes, new_boxes)  # an empty mask keeps the last box
        out[i] = torch.stack(rounds_out[-kept:]).cpu().numpy()
    return out


def sam_resegmenter(checkpoint, compute: Compute, settings: dict, *, rounds: int, keep_rounds: bool) -> Callable:
    """The `infer(images, cams)` of run_stage for `segmenter.kind: sam`: `checkpoint` the file to load (see
    load_sam), `settings` config `segmenter.sam` (model, prompts, threshold, points)."""
    sam = load_sam(checkpoint, settings["model"], compute.device)
    prompts = list(settings["prompts"])
    log.info("resegment with SAM (%s): prompts %s, CAM threshold %g, %d point(s), %d round(s), bf16 %s",
             Path(checkpoint).name, "+".join(prompts), settings["threshold"], settings["points"], rounds, compute.bf16)
    return partial(sam_batch, sam, rounds=rounds, compute=compute, prompts=prompts, threshold=settings["threshold"],
                   points=settings["points"], keep_rounds=keep_rounds)
