"""Method benchmark: CAM baseline and every resegmentation round's mIoU, per dataset and setting, on CPU.

For each dataset (the demo and the held-out sets of locseg/data/heldout.py) the CAM net is trained once
with config/config.yaml's `cam` section and its CAMs (pseudo split `train` and the COCO split) are reused by
every setting. A setting is a segmenter training (`segmenter` keys over config/config.yaml's) and is scored
with `reseg.flip` off and on, and for each `reseg.bg_score` of --bg-scores, after every round (3 rounds, or
--rounds). mIoU comes from locseg.metrics.ConfusionMatrix on labels from locseg.masks.assemble_labels, the
code path of locseg.evaluate.evaluate_masks; the CAM baseline is locseg.evaluate.eval_cams.

Each seed of --seeds draws its own datasets, CAM nets and segmenters under <work>/seed<n>/; results are
cached per (dataset, setting) in <work>/seed<n>/results/<dataset>.json, so a rerun only computes what is
missing. The table is printed and written to <work>/table.md: first the decision summary over every held-out
(dataset, seed) instance (mean and worst best round, worst fall of a later round, worst gain over 3d81a16's
defaults, instances passing), then every round per seed. One command:

    PYTHONPATH=. python benchmarks/bench_method.py --work /tmp/bench_method --seeds 0,1,2

--settings and --datasets pick a subset (comma-separated names). Deterministic for a seed and --threads: the
thread count changes the order of floating-point sums, and training amplifies that into mIoU differences of
a few points (a run at --threads 2 and one at 1 differed by up to 3 on one set), the size of the differences
between settings; hence several seeds, and comparisons only within one run's figures.
"""

from __future__ import annotations

import argparse
import copy
import logging
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from locseg.cam import extract_cams, train_cam
from locseg.data import demo, heldout
from locseg.evaluate import eval_cams
from locseg.fsutil import read_json, write_json
from locseg.masks import assemble_labels
from locseg.metrics import ConfusionMatrix
from locseg.reseg import resegment, train_segmenter
from locseg.sources import coco_split, gt_paths, image_paths, images_and_labels, voc_layout
from locseg.store import ShardedStore
from locseg.data.labels import labels_from_masks
from locseg import viz
from locseg.data.voc import read_image, read_mask
from locseg.overlays import cam_panel, sample_ids

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("slim", "crowd", "wide", "demo")  # held-out first: they choose; the demo is checked last
HELD_OUT = ("slim", "crowd", "wide")

# Segmenter trainings. `3d81a16` is that commit's defaults in today's code (AdamW for its Adam, no second
# cue, the output fed back); `now` the defaults this benchmark was written against (a40fd3a); `paper` the
# paper's rule (two passes with consistency, the output fed back) at the cost of `now` (15 two-pass epochs).
SETTINGS: dict[str, dict] = {
    "defaults": {},  # config/config.yaml's segmenter as it is
    "3d81a16": {"lr": 0.002, "epochs": 30, "passes": 1, "second_cues": [], "consistency": 0.0,
                "feedback": "output"},
    "now": {"lr": 0.001, "epochs": 30, "passes": 1, "second_cues": ["perturbed_mask"], "consistency": 0.0,
            "feedback": "cam_mean"},
    "paper": {"lr": 0.001, "epochs": 15, "passes": 2, "second_cues": ["perturbed_mask"], "consistency": 1.0,
              "feedback": "output"},
    "now_output": {"lr": 0.001, "epochs": 30, "passes": 1, "second_cues": ["perturbed_mask"],
                   "consistency": 0.0, "feedback": "output"},
    "paper_lr2": {"lr": 0.002, "epochs": 15, "passes": 2, "second_cues": ["perturbed_mask"], "consistency": 1.0,
                  "feedback": "output"},
    "plain_lr1": {"lr": 0.001, "epochs": 30, "passes": 1, "second_cues": [], "consistency": 0.0,
                  "feedback": "output"},
    # One factor at a time from `3d81a16` and `now`: the feedback rule alone, and the lr alone.
    "3d81a16_cam_mean": {"lr": 0.002, "epochs": 30, "passes": 1, "second_cues": [], "consistency": 0.0,
                         "feedback": "cam_mean"},
    "now_lr2": {"lr": 0.002, "epochs": 30, "passes": 1, "second_cues": ["perturbed_mask"], "consistency": 0.0,
                "feedback": "cam_mean"},
}
# Other resegmentation rules on a segmenter trained above: `trained_as` names the setting whose segmenter.pt
# is reused (trained first if missing), `reseg_feedback` the rule its rounds run with.
SETTINGS.update({f"{trained}_{rule}_reseg": {**SETTINGS[trained], "trained_as": trained, "reseg_feedback": rule}
                 for trained in ("3d81a16", "now", "plain_lr1") for rule in ("cam_mean", "running_mean")
                 if SETTINGS[trained]["feedback"] != rule})
REFERENCE = ("3d81a16", "false", "0.5")  # (setting, flip, bg_score): 3d81a16's defaults, what a setting must beat
TRAIN_KEYS = ("backbone", "weights", "output_stride", "width", "second_cues", "consistency", "feedback", "passes",
              "crop", "scale_range", "batch_size", "epochs", "optimizer", "lr", "weight_decay")

log = logging.getLogger("bench_method")


def dataset_config(base: dict, name: str, data_root: Path) -> dict:
    """config/config.yaml with the dataset, classes and COCO paths of dataset `name` under data_root."""
    cfg = copy.deepcopy(base)
    root = data_root / name
    cfg["dataset"]["root"] = str(root / "voc")
    cfg["coco"]["image_dir"] = str(root / "coco/images")
    cfg["coco"]["annotations"] = str(root / "coco/annotations/instances_train.json")
    if name == "demo":
        cfg["classes"], cfg["coco"]["category_map"] = list(demo.DEMO_CLASSES), dict(demo.DEMO_COCO_CATEGORY_MAP)
    else:
        cfg["classes"], cfg["coco"]["category_map"] = list(heldout.VARIANTS[name]["classes"]), \
            heldout.category_map(name)
    return cfg


def make_data(name: str, data_root: Path, seed: int, size: str) -> None:
    if (data_root / name / "voc").is_dir():
        return
    if name == "demo":
        demo.generate(data_root / name, seed=seed, size=size)
    else:
        heldout.generate(data_root / name, name, seed=seed, size=size)


def cams(cfg: dict, work: Path, seed: int, epochs: int) -> dict:
    """CAM net and CAM stores of one dataset (cached on disk), and its CAM baseline."""
    work.mkdir(parents=True, exist_ok=True)
    layout, classes = voc_layout(cfg), cfg["classes"]
    paths, gts = image_paths(cfg, "train", layout.split_file("train")), gt_paths(cfg, layout.split_file("train"))
    labels = labels_from_masks(layout, list(paths), len(classes))
    model, t0 = work / "cam.pt", time.time()
    if not model.exists():
        c = cfg["cam"]
        train_cam(paths, labels, classes, model, seed=seed, device="cpu", epochs=epochs,
                  **{k: c[k] for k in ("backbone", "weights", "output_stride", "crop", "scale_range", "batch_size",
                                       "optimizer", "lr", "weight_decay")})
    infer = {k: cfg["cam"][k] for k in ("scales", "flip", "max_side")}  # main() may have set the scales
    for split, (p, lab) in {"train": (paths, labels), "coco": images_and_labels(cfg, "coco", None)}.items():
        if not (work / f"cams_{split}.h5").exists():
            extract_cams(model, p, lab, list(p), classes, work / f"cams_{split}.h5", device="cpu", **infer)
    baseline = eval_cams([work / "cams_train.h5"], gts, classes, "train", work / "cam_baseline.json",
                         work / "cam_curve.png", thresholds=cfg["cam"]["thresholds"])
    return {"miou": baseline["miou"], "threshold": baseline["best_threshold"], "seconds": time.time() - t0,
            "per_class": {n: v["iou"] for n, v in baseline["per_class"].items()}}


def round_scores(prob_store, gts: dict, classes: list[str], bg_scores) -> dict:
    """mIoU (and per-class IoU) after every stored round, for each background score."""
    cms: dict[float, list[ConfusionMatrix]] = {b: [] for b in bg_scores}
    with ShardedStore([prob_store], kind="prob", class_names=classes) as probs:
        for image_id, gt_path in gts.items():
            maps, present = probs.read(image_id)
            rounds = probs.read_extra(image_id, "rounds")
            rounds = maps[None] if rounds is None else rounds
            gt = read_mask(gt_path, len(classes), maps.shape[1:])
            for b, per_round in cms.items():
                per_round += [ConfusionMatrix(len(classes)) for _ in range(len(rounds) - len(per_round))]
                for r, cm in zip(rounds, per_round):
                    cm.update(gt, assemble_labels(r, present, b))
    out = {}
    for b, per_round in cms.items():
        scores = [cm.scores(classes) for cm in per_round]
        out[f"{b:g}"] = {"miou": [s["miou"] for s in scores],
                         "per_class": [{n: v["iou"] for n, v in s["per_class"].items()} for s in scores]}
    return out


def segmenter_setting(cfg: dict, overrides: dict) -> tuple[dict, str | None, str | None]:
    """A setting's segmenter keys (config/config.yaml's, then the setting's), `trained_as`, `reseg_feedback`."""
    overrides = dict(overrides)
    trained_as, reseg_feedback = overrides.pop("trained_as", None), overrides.pop("reseg_feedback", None)
    return {**{k: cfg["segmenter"][k] for k in TRAIN_KEYS}, **overrides}, trained_as, reseg_feedback


def is_cached(entry: dict | None, cfg: dict, overrides: dict, bg_scores, rounds: int) -> bool:
    """A cached result counts only if it ran with the segmenter keys and rule the setting has now (a changed
    config or SETTINGS entry recomputes it instead of reusing a stale figure), and scored every bg_score and
    round asked for."""
    if entry is None:
        return False
    seg, _, reseg_feedback = segmenter_setting(cfg, overrides)
    scored = entry["flip"]["false"]
    return entry["segmenter"] == seg and entry["reseg_feedback"] == (reseg_feedback or seg["feedback"]) and \
        all(f"{b:g}" in scored and len(scored[f"{b:g}"]["miou"]) == rounds for b in bg_scores)


def segmenter_path(work: Path, trained_as: str | None) -> Path:
    """The segmenter a setting's run dir `work` scores: its own, or that of the setting it was trained as."""
    return (work.parent / trained_as if trained_as else work) / "segmenter.pt"


def run_setting(cfg: dict, overrides: dict, work: Path, seed: int, rounds: int, bg_scores) -> dict:
    """Train the setting's segmenter (or reuse that of `trained_as`, which has the same training), then score
    every round with flip off and on, resegmenting with `reseg_feedback` where given."""
    seg, trained_as, reseg_feedback = segmenter_setting(cfg, overrides)
    model, t0 = segmenter_path(work, trained_as), time.time()
    work.mkdir(parents=True, exist_ok=True)
    if not (trained_as and model.exists()):
        model.parent.mkdir(parents=True, exist_ok=True)
        train_segmenter(coco_split(cfg), [work.parent / "cams_coco.h5"], cfg["classes"], model, seed=seed,
                        device="cpu", **seg)
    train_s = time.time() - t0
    split_file = voc_layout(cfg).split_file("train")
    gts, paths = gt_paths(cfg, split_file), image_paths(cfg, "train", split_file)
    result = {"segmenter": seg, "train_s": train_s, "trained_as": trained_as,
              "reseg_feedback": reseg_feedback or seg["feedback"], "flip": {}}
    for flip in (False, True):
        store = work / f"probs_flip{int(flip)}.h5"
        resegment(model, work.parent / "cams_train.h5", paths, cfg["classes"], store, rounds=rounds, flip=flip,
                  feedback=reseg_feedback, device="cpu")
        result["flip"][str(flip).lower()] = round_scores(store, gts, cfg["classes"], bg_scores)
        store.unlink()  # probabilities are large; the scores are what the table needs
    return result


def rounds_analysis(cfg: dict, work: Path, setting: dict, bg_score: float, n_overlay: int = 8) -> dict:
    """What a later round changes, for one trained setting (its segmenter, flip on): an overlay grid
    (image | GT | CAM | round 1 | 2 | 3) of a fixed sample, and per round the object pixels' precision and
    recall (class-agnostic: did masks grow or shrink?) and the images whose mIoU moved most from round 1 to 2."""
    split_file = voc_layout(cfg).split_file("train")
    gts, paths, classes = gt_paths(cfg, split_file), image_paths(cfg, "train", split_file), cfg["classes"]
    store = work / "probs_analysis.h5"
    if not store.exists():
        resegment(segmenter_path(work, setting.get("trained_as")), work.parent / "cams_train.h5", paths, classes,
                  store, rounds=3, flip=True, feedback=setting.get("reseg_feedback"), device="cpu")
    counts = np.zeros((3, 3))  # per round: true positive, predicted, GT object pixels
    moved = []
    rows, ids = [], sample_ids(list(gts), n_overlay)
    with ShardedStore([store], kind="prob", class_names=classes) as probs, \
            ShardedStore([work.parent / "cams_train.h5"], kind="cam", class_names=classes) as cam_store:
        for image_id, gt_path in gts.items():
            maps, present = probs.read(image_id)
            gt = read_mask(gt_path, len(classes), maps.shape[1:])
            labels = [assemble_labels(r, present, bg_score) for r in probs.read_extra(image_id, "rounds")]
            valid = gt != 255
            for r, lab in enumerate(labels):
                counts[r] += [((lab == gt) & (gt > 0) & valid).sum(), ((lab > 0) & valid).sum(), ((gt > 0) & valid).sum()]
            per_round = []
            for lab in labels[:2]:
                cm = ConfusionMatrix(len(classes))
                cm.update(gt, lab)
                per_round.append(cm.scores(classes)["miou"])
            moved.append((per_round[1] - per_round[0], image_id))
            if image_id in ids:
                image = read_image(paths[image_id])
                rows.append([image, viz.blend(image, gt), cam_panel(image, cam_store.read(image_id)[0]),
                             *(viz.blend(image, lab) for lab in labels)])
    viz.save_grid(work / "rounds_overlay.png", rows, ["image", "ground truth", "CAM", "round 1", "round 2",
                                                       "round 3"], ids)
    moved.sort()
    return {"precision": (counts[:, 0] / counts[:, 1]).tolist(), "recall": (counts[:, 0] / counts[:, 2]).tolist(),
            "most_worse_1_to_2": moved[:3], "most_better_1_to_2": moved[-3:], "overlay": str(work / "rounds_overlay.png")}


def table(results: dict, datasets, settings, bg: str) -> str:
    """Markdown: CAM and rounds 1..R per dataset, per setting and flip at one bg_score, then mean/worst."""
    lines = [f"bg_score {bg}; cells: rounds 1 / 2 / 3 (best in the last column group)", "",
             "| setting | flip | " + " | ".join(datasets) + " | held-out mean best | held-out worst best |",
             "| --- | --- | " + " | ".join("---" for _ in datasets) + " | ---: | ---: |"]
    lines.insert(2, "CAM baseline: " + ", ".join(
        f"{d} {100 * results[d]['cam']['miou']:.1f}" for d in datasets if d in results))
    lines.insert(3, "")
    for s in settings:
        for flip in ("false", "true"):
            cells, best = [], []
            for d in datasets:
                r = results.get(d, {}).get("settings", {}).get(s)
                if r is None:
                    cells.append("")
                    continue
                m = [100 * x for x in r["flip"][flip][bg]["miou"]]
                cells.append(" / ".join(f"{x:.1f}" for x in m))
                if d in HELD_OUT:
                    best.append(max(m))
            full = len(best) == len([d for d in datasets if d in HELD_OUT])
            mean = f"{np.mean(best):.1f}" if best and full else ""
            worst = f"{min(best):.1f}" if best and full else ""
            lines.append(f"| {s} | {flip} | " + " | ".join(cells) + f" | {mean} | {worst} |")
    return "\n".join(lines)


def summary(per_seed: dict, settings, bg: str) -> str:
    """Markdown: per setting and flip at one bg_score, over every held-out (dataset, seed) instance: the mean
    best and last round (the last is what the masks are made of), the worst best round, the worst change from
    round 1 to a later round, the worst gain of the best round over REFERENCE's best on the same instance, on
    how many instances a setting passes both tests (later rounds >= round 1 - 0.5 points, best >=
    REFERENCE's best), and each dataset's gain averaged over seeds."""
    ref_s, ref_flip, ref_bg = REFERENCE
    lines = [f"bg_score {bg}, held-out sets x seeds {sorted(per_seed)}; gain: best round minus {ref_s}'s best "
             f"(flip {ref_flip}, bg_score {ref_bg}) on the same set and seed", "",
             "| setting | flip | mean best | mean last | worst best | worst later round - round 1 | worst gain "
             "| passes | " + " | ".join(f"{d} mean gain" for d in HELD_OUT) + " |",
             "| --- | --- |" + " ---: |" * (6 + len(HELD_OUT))]
    for s in settings:
        for flip in ("false", "true"):
            rows = []  # per (seed, dataset) instance: dataset, best round, last round, worst later - round 1, gain
            for results in per_seed.values():
                for d in HELD_OUT:
                    run = results.get(d, {}).get("settings", {})
                    if s in run:
                        m = [100 * x for x in run[s]["flip"][flip][bg]["miou"]]
                        ref = 100 * max(run[ref_s]["flip"][ref_flip][ref_bg]["miou"]) if ref_s in run else None
                        rows.append((d, max(m), m[-1], min(m[1:], default=0.0) - m[0],
                                     None if ref is None else max(m) - ref))
            if not rows:
                continue
            _, best, last, drop, gain = zip(*rows)
            cells = [f"{np.mean(best):.1f}", f"{np.mean(last):.1f}", f"{min(best):.1f}", f"{min(drop):+.1f}", "", ""]
            if None not in gain:  # the reference ran on every instance
                passes = sum(dr >= -0.5 and g >= 0 for dr, g in zip(drop, gain))
                cells[4:] = [f"{min(gain):+.1f}", f"{passes}/{len(rows)}"]
            per_set = [[g for d, *_, g in rows if d == name and g is not None] for name in HELD_OUT]
            cells += [f"{np.mean(g):+.1f}" if g else "" for g in per_set]
            lines.append(f"| {s} | {flip} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance() -> str:
    """The commit and command line, so a table in docs/ can say exactly what produced it."""
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                                text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown (not a git checkout)"
    return f"bench_method at commit {commit}: `{shlex.join(['python', *sys.argv])}`"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True,
                    help="seed<n>/ with data, models and results/<dataset>.json go here")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--config", type=Path, default=ROOT / "config/config.yaml")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bg-scores", default="0.3,0.4,0.5,0.6")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seeds", default="0", help="comma-separated: each seed draws its own datasets and trainings, "
                                                 "under <work>/seed<n>/")
    ap.add_argument("--size", default="default", help="dataset size: default, or tiny (a smoke run)")
    ap.add_argument("--cam-epochs", type=int, default=None, help="CAM net epochs (default: the config's)")
    ap.add_argument("--cam-scales", default=None, help="CAM inference scales, e.g. 1.0 (default: the config's)")
    ap.add_argument("--epoch-scale", type=float, default=1.0,
                    help="multiplies every setting's segmenter epochs (same ratio between settings); a cache entry "
                         "records the epochs it ran")
    ap.add_argument("--analyse", default=None, metavar="DATASET:SETTING,...",
                    help="after the benchmark, the rounds analysis of these trained settings (flip on, bg 0.5)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    base = yaml.safe_load(args.config.read_text())
    datasets, settings = args.datasets.split(","), args.settings.split(",")
    unknown = sorted(set(datasets) - set(DATASETS)) + sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise SystemExit(f"unknown dataset(s) or setting(s) {unknown}; datasets {DATASETS}, settings {list(SETTINGS)}")
    bg_scores = [float(b) for b in args.bg_scores.split(",")]
    if args.cam_scales:
        base["cam"]["scales"] = [float(x) for x in args.cam_scales.split(",")]
    per_seed = {seed: run_seed(args, base, args.work / f"seed{seed}", seed, datasets, settings, bg_scores)
                for seed in (int(x) for x in args.seeds.split(","))}
    for pair in args.analyse.split(",") if args.analyse else []:
        d, s = pair.split(":")
        for seed, results in per_seed.items():
            work = args.work / f"seed{seed}"
            cfg = dataset_config(base, d, work / "data")
            results[d]["settings"][s]["analysis"] = rounds_analysis(cfg, work / "runs" / d / s, SETTINGS[s], 0.5)
            write_json(work / "results" / f"{d}.json", results[d])
            print(seed, d, s, results[d]["settings"][s]["analysis"])
    blocks = [provenance(), *(summary(per_seed, settings, f"{b:g}") for b in bg_scores)]
    for seed, results in per_seed.items():
        blocks += [f"## seed {seed}", *(table(results, datasets, settings, f"{b:g}") for b in bg_scores)]
    text = "\n\n".join(blocks)
    (args.work / "table.md").write_text(text + "\n")
    print(text)


def run_seed(args, base: dict, work: Path, seed: int, datasets, settings, bg_scores) -> dict:
    """Every (setting, dataset) of one seed not yet in work/results/<dataset>.json; returns the results. One
    cache file per dataset, so runs on different datasets can go in parallel."""
    results = {p.stem: read_json(p) for p in sorted((work / "results").glob("*.json"))}
    for s in settings:  # setting-major: each setting's row fills across datasets before the next one starts
        for d in datasets:
            make_data(d, work / "data", seed, args.size)
            cfg = dataset_config(base, d, work / "data")
            entry = results.setdefault(d, {"settings": {}})
            if "cam" not in entry:
                entry["cam"] = {**cams(cfg, work / "runs" / d, seed, args.cam_epochs or cfg["cam"]["epochs"]),
                                "epochs": args.cam_epochs or cfg["cam"]["epochs"], "scales": cfg["cam"]["scales"]}
                write_json(work / "results" / f"{d}.json", entry)
            epochs = SETTINGS[s].get("epochs", cfg["segmenter"]["epochs"])
            overrides = {**SETTINGS[s], "epochs": max(1, round(epochs * args.epoch_scale))}
            if is_cached(entry["settings"].get(s), cfg, overrides, bg_scores, args.rounds):
                continue
            log.info("seed %d, dataset %s, setting %s", seed, d, s)
            entry["settings"][s] = {**run_setting(cfg, overrides, work / "runs" / d / s, seed, args.rounds,
                                                  bg_scores), "seed": seed}
            write_json(work / "results" / f"{d}.json", entry)
    return {d: results[d] for d in datasets if d in results}


if __name__ == "__main__":
    main()
