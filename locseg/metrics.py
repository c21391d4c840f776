"""Segmentation scores from an accumulated confusion matrix (docs/formats.md, "Metrics JSON").

Follows the deeplab-pytorch ``scores()`` convention, extended with one extra
prediction column for 255 so that pixels a pseudo-label leaves unlabelled count
as misses for their GT class instead of silently vanishing.
"""
from __future__ import annotations

import numpy as np

IGNORE = 255


def _nan_mean(values: np.ndarray) -> float:
    """Mean over non-NaN entries; NaN (without a RuntimeWarning) when there are none."""
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if kept.size else float("nan")


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den == 0 (an undefined score, not a zero score)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


class ConfusionMatrix:
    """Accumulates a [K, K+1] int64 matrix.

    Rows are GT classes 0..K-1 (GT 255 pixels are skipped); columns are predicted
    classes 0..K-1 plus a last column for predicted 255 ("left unlabelled"), which
    is a miss for the GT class.
    """

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def _check_values(self, name: str, arr: np.ndarray) -> None:
        # Any other value means a wrong encoding (e.g. an RGB palette PNG), which must not score silently.
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integer class ids, got dtype {arr.dtype}")
        values = np.unique(arr)
        bad = values[(values != IGNORE) & ((values < 0) | (values >= self.num_classes))]
        if bad.size:
            raise ValueError(
                f"{name} has values outside 0..{self.num_classes - 1} and {IGNORE}: {bad.tolist()}"
            )

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image (or any batch of pixels) to the matrix."""
        gt = np.asarray(gt)
        pred = np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"gt shape {gt.shape} != pred shape {pred.shape}")
        self._check_values("gt", gt)
        self._check_values("pred", pred)
        k = self.num_classes
        keep = gt != IGNORE
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        p[p == IGNORE] = k  # the extra column
        counts = np.bincount(g * (k + 1) + p, minlength=k * (k + 1))
        self.matrix += counts.reshape(k, k + 1)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Merge another matrix (e.g. from another shard) into this one."""
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge K={other.num_classes} into K={self.num_classes}")
        self.matrix += other.matrix
        return self

    def scores(self, class_names: list[str]) -> dict:
        """The metrics dict of docs/formats.md, less "split" and "n_images" (the caller knows those).

        All numbers are plain Python int/float so the dict goes straight to json.dumps;
        undefined scores are NaN rather than 0 so they cannot drag a mean down.
        """
        k = self.num_classes
        if len(class_names) != k:
            raise ValueError(f"got {len(class_names)} class names for {k} classes")
        m = self.matrix.astype(np.float64)
        tp = np.diag(m[:, :k])
        gt = m.sum(axis=1)  # includes the predicted-255 column
        pred = m[:, :k].sum(axis=0)
        total = gt.sum()

        iou = _safe_ratio(tp, gt + pred - tp)
        precision = _safe_ratio(tp, pred)
        recall = _safe_ratio(tp, gt)
        valid = ~np.isnan(iou)
        if total > 0:
            pixel_acc = float(tp.sum() / total)
            fw_iou = float((gt[valid] / total * iou[valid]).sum())
            ignored_frac = float(m[:, k].sum() / total)
        else:
            pixel_acc = fw_iou = float("nan")
            ignored_frac = 0.0

        return {
            "miou": _nan_mean(iou),
            "pixel_acc": pixel_acc,
            "mean_acc": _nan_mean(recall),
            "fw_iou": fw_iou,
            "per_class": {
                name: {
                    "iou": float(iou[c]),
                    "precision": float(precision[c]),
                    "recall": float(recall[c]),
                }
                for c, name in enumerate(class_names)
            },
            "ignored_frac": ignored_frac,
            "confusion": self.matrix.tolist(),
        }
