"""Overlays and plots for people to look at: masks in VOC colours, CAM heatmaps, grids, IoU bars, curves.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot), so nothing here touches global
backend state, no GUI is ever needed (cluster nodes) and figures are freed as soon as they go out of scope.
Every PNG is written through `locseg.fsutil.atomic_path` and without the matplotlib "Software" tag, so the
same inputs give byte-identical files (Snakemake checksums and reports stay stable across reruns).
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from locseg.fsutil import atomic_path

# Drop the version string matplotlib writes into PNG text chunks: it would make outputs differ per install.
_PNG_METADATA = {"Software": None}
_DPI = 100
_PANEL_IN = 2.2  # panel width in inches: ~220 px at _DPI, readable side by side


@functools.lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    """VOC colour map as read-only [256, 3] uint8, built once (imported lazily: keeps viz import light)."""
    from locseg.data.voc import voc_palette

    pal = np.asarray(voc_palette(), dtype=np.uint8)
    if pal.size != 768:
        raise ValueError(f"voc_palette() returned {pal.size} values, expected 768")
    pal = pal.reshape(256, 3)
    pal.flags.writeable = False
    return pal


def _check_image(image: np.ndarray, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
    return image


def _check_same_size(image: np.ndarray, other: np.ndarray, name: str) -> None:
    if other.shape[:2] != image.shape[:2]:
        raise ValueError(
            f"{name} is {list(other.shape[:2])} but image is {list(image.shape[:2])}; expected the same H, W"
        )


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class-index mask [H, W] (255 = ignore) -> uint8 [H, W, 3] in the VOC colours people recognise."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask: expected integer [H, W], got {mask.dtype} {list(mask.shape)}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask: values must lie in 0..255, got {mask.min()}..{mask.max()}")
    return _palette()[mask.astype(np.uint8)]


def blend(image: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Tint object (and ignore) pixels with their class colour; background keeps the image untouched.

    Leaving background pixels alone keeps the overlay readable: only what the mask claims is coloured.
    """
    image = _check_image(image)
    mask = np.asarray(mask)
    _check_same_size(image, mask, "mask")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    colour = colorize(mask).astype(np.float32)
    out = image.copy()
    fg = mask != 0
    mixed = (1.0 - alpha) * image[fg].astype(np.float32) + alpha * colour[fg]
    out[fg] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return out


def heatmap(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Overlay a [H, W] score map in [0, 1] (e.g. the max over class CAMs) on the image in the jet colours.

    Values outside [0, 1] are clipped and NaN reads as 0, so a stray value cannot break a report.
    """
    image = _check_image(image)
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"cam: expected [H, W], got {list(cam.shape)}")
    _check_same_size(image, cam, "cam")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    cam = np.clip(np.nan_to_num(cam, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    jet = colormaps["jet"](cam)[..., :3] * 255.0
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * jet
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def save_image(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 RGB array as PNG atomically (Pillow writes no timestamp, so bytes are reproducible)."""
    array = _check_image(array, f"{path}: array")
    with atomic_path(path) as tmp:
        Image.fromarray(array, mode="RGB").save(tmp, format="PNG")


def _save_figure(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI, metadata=_PNG_METADATA)


def _as_rgb(panel: np.ndarray, where: str) -> np.ndarray:
    panel = np.asarray(panel)
    if panel.ndim == 2 and panel.dtype == np.uint8:  # a grey panel: show it as such rather than fail
        panel = np.repeat(panel[..., None], 3, axis=2)
    return _check_image(panel, where)


def save_grid(
    path: str | os.PathLike,
    rows: list[list[np.ndarray | None]],
    col_titles: list[str],
    row_titles: list[str] | None = None,
) -> None:
    """Save a grid of RGB panels (one row per image, one column per view) with column titles and row ids.

    Panel sizes may differ between rows; each row's height follows its tallest panel's aspect ratio so
    no panel is squashed. A `None` panel leaves its cell blank (e.g. a view missing for one image).
    """
    if not rows:
        raise ValueError(f"{path}: save_grid needs at least one row")
    ncols = len(col_titles)
    if ncols == 0:
        raise ValueError(f"{path}: save_grid needs at least one column title")
    for r, row in enumerate(rows):
        if len(row) != ncols:
            raise ValueError(f"{path}: row {r} has {len(row)} panels, expected {ncols} (one per column title)")
    if row_titles is not None and len(row_titles) != len(rows):
        raise ValueError(f"{path}: {len(row_titles)} row titles for {len(rows)} rows")

    rows = [[None if p is None else _as_rgb(p, f"{path}: row {r} col {c}") for c, p in enumerate(row)]
            for r, row in enumerate(rows)]
    ratios = []
    for row in rows:
        aspects = [p.shape[0] / max(p.shape[1], 1) for p in row if p is not None]
        ratios.append(max(aspects) if aspects else 1.0)

    title_in = 0.35  # room for one line of column titles
    left_in = 1.1 if row_titles is not None else 0.1
    width = left_in + ncols * _PANEL_IN + 0.1
    height = title_in + sum(ratios) * _PANEL_IN + 0.1 * len(rows) + 0.1
    fig = Figure(figsize=(width, height), dpi=_DPI)
    grid = fig.add_gridspec(
        len(rows), ncols, height_ratios=ratios,
        left=left_in / width, right=1 - 0.1 / width, top=1 - title_in / height, bottom=0.1 / height,
        wspace=0.04, hspace=0.08,
    )
    for r, row in enumerate(rows):
        for c, panel in enumerate(row):
            ax = fig.add_subplot(grid[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            if panel is not None:
                ax.imshow(panel, interpolation="nearest")  # nearest: mask edges stay crisp
            else:
                ax.set_axis_off()
            if r == 0:
                ax.set_title(col_titles[c], fontsize=10)
            if c == 0 and row_titles is not None:
                ax.set_ylabel(row_titles[r], fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
                if panel is None:  # an axis that is off hides its label; keep the id visible
                    ax.set_axis_on()
                    for spine in ax.spines.values():
                        spine.set_visible(False)
    _save_figure(fig, path)


def _fmt(value: float) -> str:
    """Two decimals for fractions (0..1), one for percentages, so labels stay short either way."""
    return f"{value:.2f}" if abs(value) <= 1.0 else f"{value:.1f}"


def plot_per_class(
    path: str | os.PathLike,
    per_class: dict[str, float],
    title: str,
    series: dict[str, dict[str, float]] | None = None,
) -> None:
    """Horizontal bars of a per-class score (IoU), value-labelled; NaN classes show as a gap with 'n/a'.

    With `series` (e.g. {"CAM": {...}, "pseudo": {...}}) every run gets its own bar per class, side by side,
    and `per_class` only fixes the class order (classes found only in `series` follow it). Each legend
    entry carries the run's nan-mean, the number people compare first.
    """
    runs = series if series is not None else {"": per_class}
    if not runs:
        raise ValueError(f"{path}: plot_per_class got an empty series")
    classes = list(per_class)
    for scores in runs.values():
        classes += [k for k in scores if k not in classes]
    if not classes:
        raise ValueError(f"{path}: plot_per_class got no classes")

    values = np.array([[float(scores.get(k, math.nan)) for k in classes] for scores in runs.values()])
    finite = values[np.isfinite(values)]
    top = max(1.0, float(finite.max())) if finite.size else 1.0

    n_runs = len(runs)
    bar_h = 0.8 / n_runs
    fig = Figure(figsize=(7.0, 1.2 + 0.28 * len(classes) * max(1.0, 0.6 * n_runs)), dpi=_DPI)
    ax = fig.add_subplot()
    y = np.arange(len(classes))
    colours = colormaps["tab10"].colors
    for i, (name, row) in enumerate(zip(runs, values)):
        offs = y - 0.4 + bar_h * (i + 0.5)
        ok = np.isfinite(row)
        mean = float(np.mean(row[ok])) if ok.any() else math.nan
        label = f"{name} (mean {_fmt(mean)})" if name else None
        ax.barh(offs[ok], row[ok], height=bar_h * 0.9, color=colours[i % len(colours)], label=label)
        for yy, v, good in zip(offs, row, ok):
            text, colour = (_fmt(v), "black") if good else ("n/a", "grey")
            x = max(v, 0.0) if good else 0.0
            ax.text(x + 0.01 * top, yy, text, va="center", ha="left", fontsize=7, color=colour)
    ax.set_yticks(y, classes, fontsize=8)
    ax.invert_yaxis()  # first class (background) at the top, as in the tables
    ax.set_ylim(len(classes) - 0.5, -0.5)
    ax.set_xlim(0.0, top * 1.12)
    ax.set_xlabel("IoU")
    if series is None:
        ok = np.isfinite(values[0])
        mean = float(np.mean(values[0][ok])) if ok.any() else math.nan
        ax.set_title(f"{title} (mean {_fmt(mean)})", fontsize=10)
    else:
        ax.set_title(title, fontsize=10, pad=22)
        # Above the axes, not inside: inside it would cover the bars of the last classes.
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(n_runs, 4), fontsize=8, frameon=False)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    _save_figure(fig, path)


def plot_curve(
    path: str | os.PathLike,
    xs: Sequence[float],
    ys: Sequence[float],
    xlabel: str,
    ylabel: str,
    title: str,
    best: bool = True,
) -> None:
    """Line plot (e.g. mIoU vs background threshold); with `best`, mark and annotate the maximum,
    which is the operating point the pipeline reports. NaN points are drawn as gaps and never chosen.
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = np.asarray(ys, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape or xs.size == 0:
        raise ValueError(f"{path}: xs and ys must be 1-D, non-empty and of equal length; "
                         f"got {list(xs.shape)} and {list(ys.shape)}")
    fig = Figure(figsize=(6.0, 4.0), dpi=_DPI)
    ax = fig.add_subplot()
    ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.5)
    if best and np.isfinite(ys).any():
        i = int(np.nanargmax(ys))
        ax.plot([xs[i]], [ys[i]], marker="*", markersize=14, color="tab:red", zorder=3)
        # Align the label away from the nearer x edge so it is not clipped at either end of the sweep.
        lo, hi = np.nanmin(xs), np.nanmax(xs)
        frac = (xs[i] - lo) / (hi - lo) if hi > lo else 0.5
        ha = "left" if frac < 0.25 else "right" if frac > 0.75 else "center"
        ax.annotate(
            f"max {ys[i]:.4g} at {xlabel} = {xs[i]:.4g}",
            xy=(xs[i], ys[i]), xytext=(0, -22), textcoords="offset points", ha=ha, fontsize=9,
            color="tab:red", bbox={"boxstyle": "round", "fc": "white", "ec": "tab:red", "alpha": 0.9},
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save_figure(fig, path)
