"""PASCAL VOC layout: split lists, images and palette mask PNGs, checked on read."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from locseg.fsutil import atomic_path

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)

IGNORE = 255
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I")


def voc_palette() -> list[int]:
    """The standard VOC colour map (768 ints): bits of the index spread over R, G, B from the top bit down."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def read_split(path: str | os.PathLike) -> list[str]:
    """Image ids of a split list; also reads deeplab-style '/JPEGImages/x.jpg /Seg.../x.png' lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: split list not found")
    ids: list[str] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        token = line.split()[0]
        is_path = "/" in token or Path(token).suffix.lower() in (".jpg", ".jpeg", ".png")
        image_id = Path(token).stem if is_path else token
        if image_id in seen:
            raise ValueError(f"{path}: image id {image_id!r} listed twice (lines {seen[image_id]} and {lineno})")
        seen[image_id] = lineno
        ids.append(image_id)
    if not ids:
        raise ValueError(f"{path}: empty split (no image ids)")
    return ids


@dataclass(frozen=True)
class VocLayout:
    """Where a VOC-style dataset keeps its images, masks and split lists."""

    root: Path
    image_dir: str = "JPEGImages"
    mask_dir: str = "SegmentationClass"
    split_dir: str = "ImageSets/Segmentation"

    def split_file(self, split: str) -> Path:
        return Path(self.root) / self.split_dir / f"{split}.txt"

    def image_path(self, image_id: str) -> Path:
        return Path(self.root) / self.image_dir / f"{image_id}.jpg"

    def mask_path(self, image_id: str) -> Path:
        return Path(self.root) / self.mask_dir / f"{image_id}.png"

    def ids(self, split: str) -> list[str]:
        """The split's ids, after checking every image is on disk (a late missing file wastes a whole stage)."""
        split_file = self.split_file(split)
        ids = read_split(split_file)
        missing = [i for i in ids if not self.image_path(i).is_file()]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"{split_file}: {len(missing)} of {len(ids)} images missing from "
                f"{Path(self.root) / self.image_dir} (expected <id>.jpg): {shown}"
            )
        return ids


def _open(path: Path) -> Image.Image:
    """Open and fully decode, so a truncated file fails here with its name rather than later."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        img = Image.open(path)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: unreadable or truncated image ({e})") from None
    return img


def read_image(path: str | os.PathLike) -> np.ndarray:
    """uint8 [H, W, 3] RGB; other modes are converted (alpha dropped, 16-bit scaled to 8-bit)."""
    img = _open(Path(path))
    if img.mode in _SIXTEEN_BIT:
        # 16-bit grey: map the 0..65535 range onto 0..255 rather than clipping.
        grey = (np.asarray(img).astype(np.int64) // 257).clip(0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(H, W) from the header only: size checks must not cost a decode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: unreadable image ({e})") from None
    return h, w


def read_mask(path: str | os.PathLike, num_classes: int,
              expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [H, W] class indices from a palette or grayscale PNG, checked against the class count and image size."""
    path = Path(path)
    img = _open(path)
    if img.mode in ("RGB", "RGBA"):
        raise ValueError(
            f"{path}: mask is colour-encoded ({img.mode}); expected an index/palette PNG "
            f"(mode P or L) whose pixel values are class indices"
        )
    if img.mode not in ("P", "L"):
        raise ValueError(f"{path}: mask mode {img.mode}; expected an 8-bit palette (P) or grayscale (L) PNG")
    mask = np.asarray(img, dtype=np.uint8).copy()
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE)]
    if bad.size:
        raise ValueError(
            f"{path}: mask values {bad.tolist()} outside 0..{num_classes - 1} and {IGNORE} (ignore)"
        )
    if expected_hw is not None and tuple(mask.shape) != tuple(expected_hw):
        raise ValueError(
            f"{path}: mask size (H, W) = {tuple(mask.shape)} differs from image size {tuple(expected_hw)}"
        )
    return mask


def write_mask(path: str | os.PathLike, mask: np.ndarray) -> None:
    """Write class indices as an 8-bit palette PNG (VOC colours), atomically."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"{path}: mask must be a 2-D uint8 array, got {mask.dtype} with shape {mask.shape}")
    img = Image.fromarray(mask)
    img.putpalette(voc_palette())
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
