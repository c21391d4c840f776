"""Synthetic demo data in the real VOC and COCO layouts, deterministic from a seed.

It reproduces the problem the method solves: every object is a large *generic* body (shape and texture drawn
from one distribution for all classes) plus a small class-specific head. A classifier only needs the head, so
its CAMs are sparse and miss the body's boundary; a class-agnostic segmenter trained on the COCO-layout split
(other images, same generator) can learn to grow a head cue into the whole object. Clutter (a smooth colour
field with noise, head-less distractor bodies, small blobs), several objects, scales, occlusions and
non-square image sizes keep it honest.

All shapes are rasterised with pycocotools from the polygons written into the COCO file, so images, VOC masks
and decoded COCO annotations agree pixel for pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from locseg.data.voc import write_mask
from locseg.fsutil import atomic_path, write_json

DEMO_CLASSES: tuple[str, ...] = ("background", "ant", "bat", "cow", "elk")

# COCO names differ from the class names on purpose (the map must be used), two COCO categories feed one
# class, and "tortoise" is an object kind the target classes do not have (unmapped).
DEMO_COCO_CATEGORY_MAP: dict[str, str] = {
    "formicid": "ant", "chiropteran": "bat", "bull": "cow", "heifer": "cow", "cervid": "elk",
}
_COCO_CATEGORIES = (  # (id, name): ids are non-contiguous, as in COCO
    (3, "formicid"), (7, "chiropteran"), (11, "bull"), (12, "heifer"), (19, "cervid"), (23, "tortoise"),
)
_TORTOISE = len(DEMO_CLASSES)  # object kind index past the classes: drawn and annotated, never a class

# The discriminative part: colour and shape per kind (classes 1..4, then the tortoise).
_HEAD_COLOURS = {1: (220, 40, 40), 2: (40, 190, 60), 3: (50, 80, 230), 4: (235, 210, 40), _TORTOISE: (40, 210, 210)}
_HEAD_SHAPES = {1: "triangle", 2: "circle", 3: "square", 4: "plus", _TORTOISE: "hexagon"}
_HEAD_MIN_DIST = 80  # no clutter or body colour comes closer than this (RGB distance) to a head colour

SIZES = {
    "default": {"train": 600, "val": 100, "coco": 500, "width": (96, 144), "height": (96, 144),
                "objects": (1, 3), "scale": (0.25, 0.5), "head_frac": (0.08, 0.15), "distractors": (0, 1),
                "blobs": (2, 6), "tortoise_prob": 0.1, "crowd_prob": 0.15},
    # The demo's images, fewer of them: config/quick.yaml's first look in a few minutes.
    "quick": {"train": 200, "val": 50, "coco": 200, "width": (96, 144), "height": (96, 144),
              "objects": (1, 3), "scale": (0.25, 0.5), "head_frac": (0.08, 0.15), "distractors": (0, 1),
              "blobs": (2, 6), "tortoise_prob": 0.1, "crowd_prob": 0.15},
    "tiny": {"train": 12, "val": 6, "coco": 16, "width": (48, 72), "height": (48, 72),
             "objects": (1, 3), "scale": (0.25, 0.5), "head_frac": (0.06, 0.12), "distractors": (0, 1),
             "blobs": (1, 4), "tortoise_prob": 0.1, "crowd_prob": 0.25},
    # The real datasets' image sizes (VOC's and COCO's commonest), cycled per image of a split: a handful of images for
    # running the paper config's real models on CPU (tests/workflow/test_paper_realsize.py). Images 8 and 9
    # share a canvas with images 0 and 1 (384x512, 512x384) at other sizes: with 8 shards (round-robin) they
    # meet in one shard, so a batch mixes sizes.
    "real": {"train": 10, "val": 3, "coco": 4, "width": None, "height": None,
             "voc_sizes": ((500, 375), (375, 500), (500, 281), (333, 500), (500, 400), (486, 500), (500, 334),
                           (500, 500), (500, 333), (334, 500)),
             "coco_sizes": ((640, 480), (480, 640), (640, 427), (427, 640)),
             "objects": (1, 3), "scale": (0.25, 0.5), "head_frac": (0.08, 0.15), "distractors": (0, 1),
             "blobs": (2, 6), "tortoise_prob": 0.1, "crowd_prob": 0.25},
}
JPEG_QUALITY = 90
# Bumped whenever the generator draws differently, so Snakemake (a param of rule demo_data) regenerates.
DEMO_VERSION = 4


def generate(out_dir: str | os.PathLike, seed: int = 0, size: str = "default") -> None:
    """Write the demo dataset under out_dir (voc/ and coco/), replacing it as a whole and atomically."""
    if size not in SIZES:
        raise ValueError(f"unknown demo size {size!r}; expected one of {sorted(SIZES)}")
    cfg = SIZES[size]
    coco_names = {c: [n for n, k in DEMO_COCO_CATEGORY_MAP.items() if k == DEMO_CLASSES[c]]
                  for c in range(1, len(DEMO_CLASSES))}
    coco_names[_TORTOISE] = ["tortoise"]
    n_classes = len(DEMO_CLASSES) - 1

    def coco_scene(rng, i):
        # Every 9th image holds only the unmapped kind, so a loader must filter images by mapped categories.
        only_tortoise = i % 9 == 8
        first = _TORTOISE if only_tortoise else 1 + (i - i // 9) % n_classes
        return _scene(rng, cfg, first_class=first, only_tortoise=only_tortoise, crowd=True,
                      size=_fixed_size(cfg, "coco_sizes", i))

    def voc_scene(rng, i):
        return _scene(rng, cfg, first_class=1 + i % n_classes, size=_fixed_size(cfg, "voc_sizes", i))

    write_layouts(out_dir, seed, {"train": cfg["train"], "val": cfg["val"], "coco": cfg["coco"]}, voc_scene, coco_scene,
                  _COCO_CATEGORIES, coco_names, prefix="demo", description="locseg synthetic demo data")


def write_layouts(out_dir: str | os.PathLike, seed: int, counts: dict[str, int], voc_scene, coco_scene,
                  categories, coco_names: dict[int, list[str]], *, prefix: str, description: str) -> None:
    """Write a synthetic dataset in the VOC layout (splits train and val, ids `<prefix>_<n>`) and the COCO
    layout (one annotation file), replacing out_dir as a whole and atomically. `voc_scene(rng, i)` and
    `coco_scene(rng, i)` draw image i (see `_scene` for what a scene holds); `categories` are the COCO
    (id, name) pairs and `coco_names` the COCO names an object kind is annotated as (one drawn per object).
    Every image has its own generator (seed, stream, index): generators share this writer and its layout."""
    with atomic_path(out_dir) as tmp:
        voc, coco = tmp / "voc", tmp / "coco"
        for d in (voc / "JPEGImages", voc / "SegmentationClass", voc / "ImageSets/Segmentation", coco / "images"):
            d.mkdir(parents=True)
        n_train = counts["train"]
        for split, start, count, stream in (("train", 0, n_train, 0), ("val", n_train, counts["val"], 1)):
            ids = []
            for i in range(count):
                image_id = f"{prefix}_{start + i:06d}"
                scene = voc_scene(_rng(seed, stream, i), i)
                _save_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", scene["image"])
                write_mask(voc / "SegmentationClass" / f"{image_id}.png", scene["label"])
                ids.append(image_id)
            (voc / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        _write_coco(coco, seed, counts["coco"], coco_scene, categories, coco_names, description)


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """One generator per image, so an image does not depend on how many were drawn before it."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, index])))


def _write_coco(coco: Path, seed: int, count: int, coco_scene, categories, coco_names, description) -> None:
    images, annotations = [], []
    cat_ids = {name: cid for cid, name in categories}
    for i in range(count):
        rng = _rng(seed, 2, i)
        scene = coco_scene(rng, i)
        image_id = i + 1
        file_name = f"{image_id:012d}.jpg"
        _save_jpeg(coco / "images" / file_name, scene["image"])
        h, w = scene["label"].shape
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w})
        for inst in scene["instances"]:
            names = coco_names[inst["kind"]]
            rle = mask_utils.encode(np.asfortranarray(inst["visible"].astype(np.uint8)))
            if inst["crowd"]:
                segmentation = _uncompressed_rle(inst["visible"])
            elif inst["occluded"] or not _inside(inst["polygons"], h, w):
                # Polygons only where they are exactly the visible object, as in COCO.
                segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
            else:
                segmentation = inst["polygons"]
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id,
                "category_id": cat_ids[names[int(rng.integers(len(names)))]],
                "segmentation": segmentation, "area": float(mask_utils.area(rle)),
                "bbox": [float(v) for v in mask_utils.toBbox(rle)], "iscrowd": int(inst["crowd"]),
            })
    write_json(coco / "annotations" / "instances_train.json", {
        "info": {"description": description, "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": cid, "name": name, "supercategory": "creature"} for cid, name in categories],
    })


def _fixed_size(cfg: dict, key: str, index: int) -> tuple[int, int] | None:
    """(width, height) of image `index` where the preset lists sizes, else None (drawn from its ranges)."""
    sizes = cfg.get(key)
    return tuple(sizes[index % len(sizes)]) if sizes else None


def _inside(polygons: list[list[float]], h: int, w: int) -> bool:
    return all(0 <= x <= w and 0 <= y <= h for poly in polygons for x, y in zip(poly[0::2], poly[1::2]))


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's list-of-counts RLE (column-major runs, starting with a zero run), as real crowd annotations use."""
    flat = mask.flatten(order="F").astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0]:
        counts = [0] + counts
    return {"size": list(mask.shape), "counts": counts}


def _save_jpeg(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image).save(path, format="JPEG", quality=JPEG_QUALITY)


# ---------------------------------------------------------------- scene ----

def _scene(rng: np.random.Generator, cfg: dict, first_class: int, only_tortoise: bool = False,
           crowd: bool = False, size: tuple[int, int] | None = None) -> dict:
    """One image: background clutter, then objects back to front; label = the visible part of each object.
    `size` (width, height) fixes the image size; by default it is drawn from the preset's ranges."""
    if size is None:
        w = int(rng.integers(cfg["width"][0], cfg["width"][1] + 1))
        h = int(rng.integers(cfg["height"][0], cfg["height"][1] + 1))
    else:
        w, h = size
    side = min(h, w)
    canvas = _background(rng, h, w)
    for _ in range(int(rng.integers(cfg["distractors"][0], cfg["distractors"][1] + 1))):
        body = _poly_mask([_star_polygon(rng, rng.uniform(0, w), rng.uniform(0, h),
                                         side * rng.uniform(*cfg["scale"]) / 2)], h, w)
        _paint_body(rng, canvas, body)
    for _ in range(int(rng.integers(cfg["blobs"][0], cfg["blobs"][1] + 1))):
        blob = _poly_mask([_star_polygon(rng, rng.uniform(0, w), rng.uniform(0, h),
                                         side * rng.uniform(0.02, 0.06), n=8)], h, w)
        canvas[blob] = _colour(rng)

    instances: list[dict] = []
    if crowd and not only_tortoise and rng.random() < cfg["crowd_prob"]:
        _add_crowd(rng, canvas, instances, cfg, kind=int(rng.integers(1, len(DEMO_CLASSES))))

    n_objects = int(rng.integers(cfg["objects"][0], cfg["objects"][1] + 1))
    for k in range(n_objects):
        if k == 0:
            kind = first_class
        elif only_tortoise or rng.random() < cfg["tortoise_prob"]:
            kind = _TORTOISE
        else:
            kind = int(rng.integers(1, len(DEMO_CLASSES)))
        # The first object must exist (it carries the class that makes every class appear in every split).
        for _ in range(1000 if k == 0 else 30):
            obj = _place_object(rng, h, w, side * rng.uniform(*cfg["scale"]) / 2, cfg["head_frac"], kind)
            if obj is not None and _keeps_earlier_visible(obj["mask"], instances):
                break
        else:
            if k == 0:
                raise RuntimeError("could not place the first demo object")  # never with sane SIZES
            continue
        _paint_object(rng, canvas, obj, kind)
        for inst in instances:
            inst["visible"] &= ~obj["mask"]
        instances.append({"kind": kind, "crowd": False, "polygons": obj["polygons"], "full": obj["mask"],
                          "head": obj["head"], "visible": obj["mask"].copy()})

    label = np.zeros((h, w), dtype=np.uint8)
    for inst in instances:
        inst["occluded"] = bool((inst["visible"] != inst["full"]).any())
        if inst["kind"] != _TORTOISE:
            label[inst["visible"]] = inst["kind"]
    noise = rng.normal(0, 4, canvas.shape)  # sensor noise over everything, so no region is flat
    image = np.clip(canvas + noise, 0, 255).astype(np.uint8)
    instances = [i for i in instances if i["visible"].any()]
    return {"image": image, "label": label, "instances": instances}


def _add_crowd(rng, canvas, instances, cfg, kind):
    """A cluster of small same-class objects, annotated as one iscrowd region (COCO split only)."""
    h, w = canvas.shape[:2]
    side = min(h, w)
    cx, cy = rng.uniform(0.25 * w, 0.75 * w), rng.uniform(0.25 * h, 0.75 * h)
    union = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(3, 6))):
        x, y = cx + rng.normal(0, 0.08 * side), cy + rng.normal(0, 0.08 * side)
        obj = _object_at(rng, h, w, x, y, side * rng.uniform(0.06, 0.1), cfg["head_frac"], kind)
        _paint_object(rng, canvas, obj, kind)
        union |= obj["mask"]
    instances.append({"kind": kind, "crowd": True, "polygons": None, "full": union, "head": None,
                      "visible": union.copy()})


def _keeps_earlier_visible(mask: np.ndarray, instances: list[dict]) -> bool:
    """Reject occluders that would hide an earlier object's head or most of its body (its class would vanish)."""
    for inst in instances:
        if inst["crowd"]:
            continue
        head_left = (inst["head"] & ~mask).sum() / max(inst["head"].sum(), 1)
        body_left = (inst["visible"] & ~mask).sum() / max(inst["full"].sum(), 1)
        if head_left < 0.9 or body_left < 0.4:
            return False
    return True


def _place_object(rng, h, w, radius, head_frac, kind):
    """An object whose body is mostly and whose head is entirely inside the image, or None."""
    cx = rng.uniform(0.5 * radius, w - 0.5 * radius)
    cy = rng.uniform(0.5 * radius, h - 0.5 * radius)
    obj = _object_at(rng, h, w, cx, cy, radius, head_frac, kind)
    head = np.asarray(obj["polygons"][1])
    inside = (head[0::2].min() >= 0 and head[0::2].max() <= w - 1
              and head[1::2].min() >= 0 and head[1::2].max() <= h - 1)
    return obj if inside and obj["head"].sum() >= 3 else None


def _object_at(rng, h, w, cx, cy, radius, head_frac, kind):
    """Body = star-convex polygon; head = small polygon on the body's rim, protruding outwards."""
    body = _star_polygon(rng, cx, cy, radius)
    angle = rng.uniform(0, 2 * np.pi)
    xs, ys = np.asarray(body[0::2]), np.asarray(body[1::2])
    rim = np.interp(angle, np.arctan2(ys - cy, xs - cx), np.hypot(xs - cx, ys - cy), period=2 * np.pi)
    body_area = _polygon_area(body)
    head_radius = np.sqrt(rng.uniform(*head_frac) * body_area / np.pi)
    dist = rim * rng.uniform(0.8, 0.95)
    head = _head_polygon(cx + dist * np.cos(angle), cy + dist * np.sin(angle), head_radius,
                         rng.uniform(0, 2 * np.pi), _HEAD_SHAPES[kind])
    polygons = [body, head]
    return {"polygons": polygons, "body": _poly_mask([body], h, w), "head": _poly_mask([head], h, w),
            "mask": _poly_mask(polygons, h, w)}


# ---------------------------------------------------------------- shapes ----

def _star_polygon(rng, cx, cy, radius, n=14, stretch=(0.7, 1.0)) -> list[float]:
    """A smooth random star-convex outline (low-frequency radial wobble): generic, classless. `stretch` is
    the range of the minor to major axis ratio."""
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) + rng.uniform(0, 2 * np.pi)
    wobble = np.zeros(n)
    for k in (2, 3):
        wobble += rng.uniform(0, 0.18) * np.cos(k * angles + rng.uniform(0, 2 * np.pi))
    stretch = rng.uniform(*stretch)  # elongation, so bodies are not all round
    tilt = rng.uniform(0, np.pi)
    r = radius * (1 + wobble)
    x, y = r * np.cos(angles), r * stretch * np.sin(angles)
    xr = cx + x * np.cos(tilt) - y * np.sin(tilt)
    yr = cy + x * np.sin(tilt) + y * np.cos(tilt)
    return _flat(xr, yr)


def _head_polygon(cx, cy, r, rot, shape) -> list[float]:
    """Outline of a head shape, scaled so its area is about pi * r^2."""
    if shape == "plus":
        a, b = 1.1 * r, 0.45 * r
        pts = np.array([(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b),
                        (-a, -b), (-b, -b)])
    else:
        n, scale = {"triangle": (3, 1.56), "square": (4, 1.25), "hexagon": (6, 1.1), "circle": (16, 1.0)}[shape]
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        pts = scale * r * np.stack([np.cos(t), np.sin(t)], axis=1)
    c, s = np.cos(rot), np.sin(rot)
    return _flat(cx + pts[:, 0] * c - pts[:, 1] * s, cy + pts[:, 0] * s + pts[:, 1] * c)


def _flat(xs, ys) -> list[float]:
    """Interleaved x, y rounded to 0.1 px: the JSON holds exactly the numbers the masks were drawn from."""
    return [round(float(v), 1) for xy in zip(xs, ys) for v in xy]


def _polygon_area(poly: list[float]) -> float:
    x, y = np.asarray(poly[0::2]), np.asarray(poly[1::2])
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _poly_mask(polygons: list[list[float]], h: int, w: int) -> np.ndarray:
    """Rasterise as pycocotools' annToMask does, so COCO polygons decode to exactly these pixels."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, h, w))).astype(bool)


# ---------------------------------------------------------------- paint ----

def _colour(rng, avoid=(), min_dist=0.0) -> np.ndarray:
    """A random colour far from every head colour (the head must stay the only class cue) and from `avoid`."""
    for _ in range(1000):
        c = rng.uniform(0, 255, 3)
        if _far_from_heads(c) and all(np.linalg.norm(c - a) >= min_dist for a in avoid):
            return c
    raise RuntimeError("no colour satisfies the demo's colour constraints")


def _far_from_heads(c: np.ndarray) -> bool:
    heads = np.array(list(_HEAD_COLOURS.values()), dtype=float)
    return bool(np.linalg.norm(heads - c, axis=1).min() >= _HEAD_MIN_DIST)


def _background(rng, h, w) -> np.ndarray:
    """Smooth random colour field (bilinear upsampling of a coarse grid) plus fine texture noise."""
    gh, gw = int(rng.integers(2, 5)), int(rng.integers(2, 5))
    grid = np.stack([_colour(rng) for _ in range(gh * gw)]).reshape(gh, gw, 3)
    grid = 0.6 * grid + 0.4 * grid.mean(axis=(0, 1))  # muted, so bodies can stand out
    field = np.stack([np.asarray(Image.fromarray(grid[:, :, c].astype(np.float32)).resize(
        (w, h), Image.BILINEAR)) for c in range(3)], axis=2)
    return field + rng.normal(0, 10, (h, w, 1)) + rng.normal(0, 4, (h, w, 3))


def _paint_body(rng, canvas, body):
    """Textured fill (stripes, checks or mottling, same odds for every class) contrasting with what is under it."""
    h, w = body.shape
    under = canvas[body].mean(axis=0) if body.any() else canvas.mean(axis=(0, 1))
    a = _colour(rng, avoid=[under], min_dist=110)
    for _ in range(100):  # a second shade for the texture, also kept away from the head colours
        b = np.clip(a + rng.uniform(-60, 60, 3), 0, 255)
        if _far_from_heads(b):
            break
    else:
        b = a
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    pattern = rng.integers(3)
    if pattern == 0:
        phi, period = rng.uniform(0, np.pi), rng.uniform(4, 10)
        t = np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period) > 0
    elif pattern == 1:
        cell = rng.uniform(3, 7)
        t = (np.floor(xx / cell) + np.floor(yy / cell)) % 2 == 0
    else:
        t = rng.random((h, w)) < 0.5
    fill = np.where(t[:, :, None], a, b)
    canvas[body] = fill[body]


def _paint_object(rng, canvas, obj, kind):
    _paint_body(rng, canvas, obj["body"])
    jitter = rng.uniform(-12, 12, 3)
    canvas[obj["head"]] = np.clip(np.array(_HEAD_COLOURS[kind]) + jitter, 0, 255)
