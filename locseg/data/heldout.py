"""Held-out synthetic datasets for choosing the method's defaults: each unlike the demo and unlike the others.

The demo is one distribution (1-3 star-shaped bodies with a mark protruding from the rim, 4 classes, near
square images); defaults tuned on it alone fit it. These variants keep the problem (a small class mark on a
generic textured body, so CAMs are sparse) but change what a segmenter has to learn:

- `slim`: long thin bodies with the mark inside the body, away from the outline (4 classes).
- `crowd`: 3-4 small objects per image, each touching an earlier one; 6 classes told apart by mark colour
  *and* shape, so same-colour classes share a mark colour.
- `wide`: wide or tall images (about 2:1) with one or two large objects that may leave the frame, a tiny
  mark, and smooth two-colour gradient bodies instead of stripes and checks (3 classes).

They use the demo's layouts and writers (`locseg.data.demo.write_layouts`) and its shape and paint
primitives; COCO category names equal the class names (an identity `coco.category_map`).
"""

from __future__ import annotations

import os

import numpy as np

from locseg.data import demo
from locseg.data.demo import (_background, _colour, _head_polygon, _keeps_earlier_visible, _paint_body,
                              _poly_mask, _polygon_area, _star_polygon, write_layouts)

_RED, _GREEN, _BLUE, _YELLOW = (demo._HEAD_COLOURS[k] for k in (1, 2, 3, 4))  # colours bodies never get

VARIANTS: dict[str, dict] = {
    "slim": {"classes": ("background", "eel", "fern", "gar", "hake"),
             "marks": ((_RED, "circle"), (_GREEN, "square"), (_BLUE, "triangle"), (_YELLOW, "circle")),
             "width": (96, 128), "height": (96, 128), "objects": (1, 2), "scale": (0.6, 0.9),
             "stretch": (0.18, 0.32), "head_frac": (0.05, 0.1), "mark": "inside", "touch": False,
             "texture": "demo", "transpose": False},
    "crowd": {"classes": ("background", "ibis", "jay", "kite", "lark", "mynah", "newt"),
              "marks": ((_RED, "triangle"), (_RED, "circle"), (_GREEN, "square"), (_GREEN, "plus"),
                        (_BLUE, "circle"), (_YELLOW, "triangle")),
              "width": (128, 160), "height": (128, 160), "objects": (3, 4), "scale": (0.2, 0.32),
              "stretch": (0.7, 1.0), "head_frac": (0.1, 0.18), "mark": "rim", "touch": True,
              "texture": "demo", "transpose": False},
    "wide": {"classes": ("background", "oryx", "puma", "quail"),
             "marks": ((_RED, "plus"), (_BLUE, "square"), (_YELLOW, "circle")),
             "width": (144, 176), "height": (72, 96), "objects": (1, 2), "scale": (0.7, 1.1),
             "stretch": (0.5, 0.9), "head_frac": (0.02, 0.04), "mark": "rim", "touch": False,
             "texture": "gradient", "transpose": True},
}
COUNTS = {"default": {"train": 100, "val": 25, "coco": 100}, "tiny": {"train": 8, "val": 4, "coco": 8}}


def category_map(variant: str) -> dict[str, str]:
    """The `coco.category_map` of a variant: COCO names are the class names."""
    return {name: name for name in VARIANTS[variant]["classes"][1:]}


def generate(out_dir: str | os.PathLike, variant: str, seed: int = 0, size: str = "default") -> None:
    """Write held-out dataset `variant` under out_dir (voc/ and coco/), as the demo is written."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown held-out dataset {variant!r}; expected one of {sorted(VARIANTS)}")
    if size not in COUNTS:
        raise ValueError(f"unknown held-out size {size!r}; expected one of {sorted(COUNTS)}")
    v = VARIANTS[variant]
    n = len(v["classes"]) - 1
    write_layouts(out_dir, seed, COUNTS[size], lambda rng, i: _scene(rng, v, 1 + i % n),
                  lambda rng, i: _scene(rng, v, 1 + i % n), [(k, v["classes"][k]) for k in range(1, n + 1)],
                  {k: [v["classes"][k]] for k in range(1, n + 1)}, prefix=variant,
                  description=f"locseg held-out synthetic data: {variant}")


def _scene(rng: np.random.Generator, v: dict, first_class: int) -> dict:
    """One image, as the demo's `_scene` returns it (image, label, instances), from variant `v`."""
    w = int(rng.integers(v["width"][0], v["width"][1] + 1))
    h = int(rng.integers(v["height"][0], v["height"][1] + 1))
    if v["transpose"] and rng.random() < 0.5:
        h, w = w, h
    side = min(h, w)
    canvas = _background(rng, h, w)
    for _ in range(int(rng.integers(0, 2))):  # one head-less distractor body at most
        _paint_body(rng, canvas, _poly_mask([_star_polygon(rng, rng.uniform(0, w), rng.uniform(0, h),
                                                           side * rng.uniform(0.2, 0.4) / 2)], h, w))
    for _ in range(int(rng.integers(1, 5))):
        blob = _poly_mask([_star_polygon(rng, rng.uniform(0, w), rng.uniform(0, h),
                                         side * rng.uniform(0.02, 0.06), n=8)], h, w)
        canvas[blob] = _colour(rng)
    n_classes = len(v["marks"])
    instances: list[dict] = []
    for k in range(int(rng.integers(v["objects"][0], v["objects"][1] + 1))):
        kind = first_class if k == 0 else int(rng.integers(1, n_classes + 1))
        for _ in range(1000 if k == 0 else 50):
            obj = _place(rng, h, w, side * rng.uniform(*v["scale"]) / 2, v, kind, instances)
            if obj is not None and _keeps_earlier_visible(obj["mask"], instances):
                break
        else:
            if k == 0:
                raise RuntimeError("could not place the first held-out object")  # never with sane VARIANTS
            continue
        _paint(rng, canvas, obj, v, kind)
        for inst in instances:
            inst["visible"] &= ~obj["mask"]
        instances.append({**obj, "kind": kind, "crowd": False, "full": obj["mask"], "visible": obj["mask"].copy()})
    label = np.zeros((h, w), dtype=np.uint8)
    for inst in instances:
        inst["occluded"] = bool((inst["visible"] != inst["full"]).any())
        label[inst["visible"]] = inst["kind"]
    image = np.clip(canvas + rng.normal(0, 4, canvas.shape), 0, 255).astype(np.uint8)
    return {"image": image, "label": label, "instances": [i for i in instances if i["visible"].any()]}


def _place(rng, h, w, radius, v, kind, instances):
    """An object whose mark is inside the image (and, with `touch`, that touches an earlier object), or None."""
    if v["touch"] and instances:
        anchor = instances[int(rng.integers(len(instances)))]
        angle = rng.uniform(0, 2 * np.pi)
        reach = _rim(anchor["body_poly"], anchor["centre"], angle) + 0.8 * radius
        cx, cy = anchor["centre"][0] + reach * np.cos(angle), anchor["centre"][1] + reach * np.sin(angle)
    else:
        cx, cy = rng.uniform(0.3 * radius, w - 0.3 * radius), rng.uniform(0.3 * radius, h - 0.3 * radius)
    body = _star_polygon(rng, cx, cy, radius, stretch=v["stretch"])
    angle = rng.uniform(0, 2 * np.pi)
    rim = _rim(body, (cx, cy), angle)
    head_radius = np.sqrt(rng.uniform(*v["head_frac"]) * _polygon_area(body) / np.pi)
    # rim: on the outline, protruding as in the demo; inside: well within the body, never touching its outline
    dist = rim * (rng.uniform(0.8, 0.95) if v["mark"] == "rim" else rng.uniform(0.0, 0.5))
    shape = v["marks"][kind - 1][1]
    head = _head_polygon(cx + dist * np.cos(angle), cy + dist * np.sin(angle), head_radius,
                         rng.uniform(0, 2 * np.pi), shape)
    obj = {"polygons": [body, head], "body_poly": body, "centre": (cx, cy), "body": _poly_mask([body], h, w),
           "head": _poly_mask([head], h, w), "mask": _poly_mask([body, head], h, w)}
    xs, ys = np.asarray(head[0::2]), np.asarray(head[1::2])
    if xs.min() < 0 or xs.max() > w - 1 or ys.min() < 0 or ys.max() > h - 1 or obj["head"].sum() < 3:
        return None
    if v["mark"] == "inside" and (_grow(obj["head"]) & ~obj["body"]).any():
        return None
    if v["touch"] and instances and not (_grow(obj["mask"]) & anchor["visible"]).any():
        return None
    return obj


def _rim(body: list[float], centre, angle: float) -> float:
    """Distance from the centre to a star-convex outline along `angle`."""
    xs, ys = np.asarray(body[0::2]) - centre[0], np.asarray(body[1::2]) - centre[1]
    return float(np.interp(angle, np.arctan2(ys, xs), np.hypot(xs, ys), period=2 * np.pi))


def _grow(mask: np.ndarray) -> np.ndarray:
    """The mask and its 4-neighbours: what touches it."""
    g = mask.copy()
    g[1:] |= mask[:-1]
    g[:-1] |= mask[1:]
    g[:, 1:] |= mask[:, :-1]
    g[:, :-1] |= mask[:, 1:]
    return g


def _paint(rng, canvas, obj, v, kind):
    """Body texture of the variant, then the mark in its class colour (jittered, as in the demo)."""
    if v["texture"] == "gradient":
        _paint_gradient(rng, canvas, obj["body"])
    else:
        _paint_body(rng, canvas, obj["body"])
    canvas[obj["head"]] = np.clip(np.array(v["marks"][kind - 1][0]) + rng.uniform(-12, 12, 3), 0, 255)


def _paint_gradient(rng, canvas, body):
    """A smooth blend between two colours along a random direction, contrasting with what is under it."""
    h, w = body.shape
    under = canvas[body].mean(axis=0) if body.any() else canvas.mean(axis=(0, 1))
    a = _colour(rng, avoid=[under], min_dist=110)
    b = _colour(rng, avoid=[under], min_dist=80)
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    t = xx * np.cos(phi) + yy * np.sin(phi)
    t = (t - t[body].min()) / max(np.ptp(t[body]), 1.0) if body.any() else t
    fill = a + np.clip(t, 0, 1)[:, :, None] * (b - a)
    canvas[body] = fill[body]
