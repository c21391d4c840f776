"""Scores for every stage from one confusion-matrix code path, plus the plots a person looks at."""

from __future__ import annotations

import logging
import math
from pathlib import Path


from locseg import viz
from locseg.data.voc import read_image, read_mask, write_mask
from locseg.fsutil import atomic_path, read_json, write_json
from locseg.masks import assemble_labels
from locseg.metrics import ConfusionMatrix
from locseg.overlays import overlay_grid, sample_ids
from locseg.retrain import load_deeplab, predict
from locseg.store import ShardedStore
from locseg.devices import pick_device
from locseg.runtime import progress

log = logging.getLogger("locseg.evaluate")


def _summary(cm: ConfusionMatrix, class_names, split: str, n_images: int, **extra) -> dict:
    return {**cm.scores(class_names), "split": split, "n_images": n_images, **extra}


def eval_cams(cam_store_paths: list, gt_paths: dict[str, Path], class_names: list[str], split: str,
              out_json, out_plot, *, thresholds) -> dict:
    """The CAM-only baseline: background threshold sweep, as SEAM/IRN report it, best threshold kept."""
    thresholds = [float(t) for t in thresholds]
    cms = [ConfusionMatrix(len(class_names)) for _ in thresholds]
    with ShardedStore(cam_store_paths, kind="cam", class_names=class_names) as cams:
        ids = _ids_in_store(cams, gt_paths)
        for image_id in progress(ids, desc="eval_cams"):
            maps, classes = cams.read(image_id)
            gt = read_mask(gt_paths[image_id], len(class_names), maps.shape[1:])
            for t, cm in zip(thresholds, cms):
                cm.update(gt, assemble_labels(maps, classes, t))
    sweep = [{"threshold": t, "miou": cm.scores(class_names)["miou"]} for t, cm in zip(thresholds, cms)]
    best = max(range(len(thresholds)), key=lambda i: _nan_low(sweep[i]["miou"]))
    result = _summary(cms[best], class_names, split, len(ids), best_threshold=thresholds[best], sweep=sweep)
    write_json(out_json, result)
    viz.plot_curve(out_plot, thresholds, [s["miou"] for s in sweep], "background threshold", "mIoU",
                   f"CAM baseline on {split} ({len(ids)} images)")
    log.info("CAM baseline on %s: mIoU %.4f at threshold %.2f", split, result["miou"], thresholds[best])
    return result


def _nan_low(x: float) -> float:
    return -math.inf if math.isnan(x) else x


def _ids_in_store(store: ShardedStore, gt_paths: dict[str, Path]) -> list[str]:
    """Evaluate every GT id; an id without a map is an error, not a silently smaller evaluation."""
    missing = [i for i in gt_paths if i not in store]
    if missing:
        raise ValueError(f"{len(missing)} evaluation ids have no entry in the store, e.g. {missing[:3]}")
    return list(gt_paths)


def evaluate_masks(mask_dir, image_paths: dict[str, Path], gt_paths: dict[str, Path], class_names: list[str],
                   split: str, out_json, out_plot, out_overlay, *, prob_store_paths: list,
                   cam_store_paths: list, bg_score: float, band: float, cam_baseline=None,
                   n_overlay: int = 8) -> dict:
    """Pseudo masks against GT, mIoU after every resegmentation round, per-class bars, an overlay grid."""
    mask_dir = Path(mask_dir)
    cm = ConfusionMatrix(len(class_names))
    round_cms: list[ConfusionMatrix] = []
    with ShardedStore(prob_store_paths, kind="prob", class_names=class_names) as probs:
        ids = _ids_in_store(probs, gt_paths)
        for image_id in progress(ids, desc="evaluate_masks"):
            pred = read_mask(mask_dir / f"{image_id}.png", len(class_names))
            gt = read_mask(gt_paths[image_id], len(class_names), pred.shape)
            cm.update(gt, pred)
            maps, classes = probs.read(image_id)
            rounds = probs.read_extra(image_id, "rounds")
            rounds = maps[None] if rounds is None else rounds
            round_cms += [ConfusionMatrix(len(class_names)) for _ in range(len(rounds) - len(round_cms))]
            for r, rcm in zip(rounds, round_cms):
                rcm.update(gt, assemble_labels(r, classes, bg_score, band))
        last_round = probs.attrs["rounds"]
    # Without stored rounds (reseg.keep_rounds: false) the one entry is the last round, not the first.
    first_round = last_round - len(round_cms) + 1
    per_round = [{"round": first_round + i, "miou": c.scores(class_names)["miou"]} for i, c in enumerate(round_cms)]
    result = _summary(cm, class_names, split, len(ids), rounds=per_round, bg_score=bg_score, band=band)
    write_json(out_json, result)
    series = {"pseudo masks": {n: v["iou"] for n, v in result["per_class"].items()}}
    if cam_baseline:
        base = read_json(cam_baseline)
        series = {f"CAM (t={base['best_threshold']:.2f})": {n: v["iou"] for n, v in base["per_class"].items()},
                  **series}
    viz.plot_per_class(out_plot, series["pseudo masks"], f"IoU per class on {split}", series=series)
    overlay_grid(out_overlay, sample_ids(ids, n_overlay), image_paths, gt_paths, class_names,
                 cam_stores=cam_store_paths, mask_dir=mask_dir)
    log.info("pseudo masks on %s: mIoU %.4f; per round %s", split, result["miou"],
             [round(r["miou"], 4) for r in per_round])
    return result


def evaluate_deeplab(checkpoint, image_paths: dict[str, Path], gt_paths: dict[str, Path], class_names: list[str],
                     split: str, out_json, out_plot, pred_dir, *, scales=(1.0,), flip: bool = False,
                     device: str = "auto") -> dict:
    """Predictions on the evaluation split, written as palette PNGs, and their scores."""
    dev = pick_device(device)
    model = load_deeplab(checkpoint, class_names, dev)
    cm = ConfusionMatrix(len(class_names))
    with atomic_path(pred_dir) as tmp:
        tmp.mkdir()
        for image_id in progress(list(gt_paths), desc=f"evaluate_deeplab {split}"):
            image = read_image(image_paths[image_id])
            pred = predict(model, image, dev, scales, flip)
            cm.update(read_mask(gt_paths[image_id], len(class_names), image.shape[:2]), pred)
            write_mask(tmp / f"{image_id}.png", pred)
    result = _summary(cm, class_names, split, len(gt_paths), scales=list(scales), flip=flip)
    write_json(out_json, result)
    viz.plot_per_class(out_plot, {n: v["iou"] for n, v in result["per_class"].items()},
                       f"DeepLab IoU per class on {split}")
    log.info("DeepLab on %s: mIoU %.4f", split, result["miou"])
    return result


def supervision_gap(pseudo_json, gt_json, out_json) -> dict:
    """mIoU(pseudo) / mIoU(gt) on one split: how much of full supervision the pseudo labels recover."""
    pseudo, gt = read_json(pseudo_json), read_json(gt_json)
    if pseudo["split"] != gt["split"]:
        raise ValueError(f"{pseudo_json} is on split {pseudo['split']!r} but {gt_json} on {gt['split']!r}")
    result = {"split": gt["split"], "miou_pseudo": pseudo["miou"], "miou_gt": gt["miou"],
              "ratio": pseudo["miou"] / gt["miou"] if gt["miou"] else float("nan")}
    write_json(out_json, result)
    return result
