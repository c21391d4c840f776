"""Throughput of CAM extraction and resegmentation: the naive arms vs locseg's real stages.

Not a test. Generates JPEGs with a VOC-like or COCO-like size mix (below) and 1-3 of 20 classes each in a
temporary directory, builds the real models with random weights and measures, in one process, on the same
model and the same images:

  naive CAMs   - what IRN's make_cam does: DataLoader decode workers, batch 1, per scale the image and
                 its flip as one batch of 2 (flip summed at the CAM's resolution), all classes from one
                 conv and upsampled together, fp32; np.save of float32 [k, H, W] maps;
  naive reseg  - the paper's inference script: batch 1, fp32, one class at a time, per-image decode; reads
                 the naive .npy CAMs, np.save of float32 maps;
  locseg       - locseg.cam.extract_cams and locseg.reseg.resegment as the pipeline runs them (decode in
                 DataLoader workers, images padded to their canvas (inference.canvas; --no-canvas: not)
                 and batched in size order, HDF5 written by a thread), three times: fp32 at batch 1,
                 fp32 at --batch-size, bf16 at --batch-size (bf16 autocast and channels_last, what CUDA
                 runs by default; on CPU bf16 is emulated).

All include loading the model from its checkpoint. Outputs are compared: locseg fp32 against the naive
arms on canvas-sized images (no padding: the same computation, must agree within 2/1024), on the mix (the
padding's effect near the right/bottom border), and bf16 against fp32. It also reports the store's bytes
against the float32 .npy bytes, and the peak RSS of each locseg stage run alone in a subprocess for N and
4N images (memory must stay flat: the stages stream).

    python benchmarks/bench_inference.py --small --images 8            # quick CPU check (demo backbones)
    python benchmarks/bench_inference.py --images 200 --batch-size 16 --workers 6 --out gpu.json   # on a GPU

Models: CamNet resnet50 OS16 for CAMs, Segmenter resnet101 width 256 for resegmentation (the paper config);
--small uses the demo's small backbone (segmenter width 64).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from locseg.cam import extract_cams
from locseg.data.transforms import normalize
from locseg.data.voc import read_image
from locseg.models.cam import CamNet
from locseg.models.segmenter import Segmenter
from locseg.reseg import resegment
from locseg.checkpoints import load_checkpoint, save_checkpoint
from locseg.devices import pick_device
from locseg.store import StoreReader

VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
# Size mixes, (long side, portrait share, the commonest short sides with their shares); the rest of the
# images get a short side drawn uniformly from [0.4, 1] x the long side (the long tail real datasets have).
# VOC2012: at most 500 px, 500x375 and 500x333 most common, about a fifth portrait. COCO: capped at 640,
# 640x480 and 640x427 most common, hundreds of sizes.
MIXES = {
    "voc": (500, 0.2, {375: 0.36, 333: 0.18, 334: 0.04, 332: 0.03, 500: 0.03, 281: 0.02, 366: 0.02}),
    "coco": (640, 0.25, {480: 0.30, 427: 0.15, 426: 0.05, 428: 0.04, 424: 0.03, 640: 0.03, 425: 0.03, 360: 0.02}),
}
TOL = 2 / 1024  # the store's float16 grid: two arms that compute the same maps agree to this


# ---------------------------------------------------------------- data and models


def size_mix(name: str, n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n (H, W) sizes drawn from MIXES[name]."""
    long, portrait, common = MIXES[name]
    shorts, shares = list(common), list(common.values())
    sizes = []
    for _ in range(n):
        pick = rng.random()
        cum = np.cumsum(shares)
        j = int(np.searchsorted(cum, pick, side="right"))
        short = shorts[j] if j < len(shorts) else int(rng.integers(int(0.4 * long), long + 1))
        sizes.append((long, short) if rng.random() < portrait else (short, long))
    return sizes


def make_data(root: Path, sizes: list[tuple[int, int]], seed: int = 0, prefix: str = "2008") -> tuple[dict, dict, list]:
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    paths, labels = {}, {}
    for i, (h, w) in enumerate(sizes):
        # smooth colour field + a few ellipses + noise: compresses like a photo, not like flat colour
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(rng.integers(1, 4)):
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, h / 3), rng.uniform(20, w / 3)
            img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.integers(0, 256, 3)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        image_id = f"{prefix}_{i:06d}"
        paths[image_id] = root / "JPEGImages" / f"{image_id}.jpg"
        Image.fromarray(img).save(paths[image_id], quality=90)
        labels[image_id] = sorted(rng.choice(np.arange(1, len(VOC)), rng.integers(1, 4), replace=False).tolist())
    return paths, labels, list(paths)


def make_checkpoints(root: Path, small: bool) -> tuple[Path, Path]:
    torch.manual_seed(0)
    backbone = "small" if small else "resnet50"
    cam = CamNet(len(VOC) - 1, backbone, 16)
    with torch.no_grad():  # random-init CAMs are ~1e-4; scale so the maps are not flat (compression is real)
        cam.classifier.weight.mul_(1000)
    save_checkpoint(root / "cam.pt", cam, "cam", {"class_names": VOC, "backbone": backbone, "output_stride": 16})
    seg_backbone, width = ("small", 64) if small else ("resnet101", 256)
    seg = Segmenter(seg_backbone, 16, None, width)
    save_checkpoint(root / "seg.pt", seg, "segmenter",
                    {"class_names": VOC, "backbone": seg_backbone, "output_stride": 16, "width": width})
    return root / "cam.pt", root / "seg.pt"


def load_plain(path: Path, kind: str, dev: torch.device):
    """The model as the reference scripts (IRN, the paper's inference) build it: fp32, default memory format, eval."""
    payload = load_checkpoint(path, kind)
    m = payload["meta"]
    model = CamNet(len(VOC) - 1, m["backbone"], m["output_stride"]) if kind == "cam" else \
        Segmenter(m["backbone"], m["output_stride"], None, m["width"])
    model.load_state_dict(payload["state_dict"])
    return model.to(dev).eval()


# ---------------------------------------------------------------- the naive arms


class _MultiScaleFlip(Dataset):
    """IRN's VOC12ClassificationDatasetMSF: per scale, the image and its flip as one [2, 3, h, w] batch,
    built in the DataLoader worker. (IRN rescales the uint8 image with PIL; here the normalised tensor is
    rescaled bilinearly, as locseg does, so that the two arms' maps are comparable.)"""

    def __init__(self, ids, paths, scales):
        self.ids, self.paths, self.scales = ids, paths, scales

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        image_id = self.ids[i]
        x = normalize(read_image(self.paths[image_id]))[None]
        h, w = x.shape[-2:]
        views = []
        for s in self.scales:
            xs = x if s == 1.0 else F.interpolate(x, size=(max(1, round(h * s)), max(1, round(w * s))),
                                                  mode="bilinear", align_corners=False)
            views.append(torch.cat([xs, xs.flip(-1)]))
        return image_id, (h, w), views


@torch.no_grad()
def naive_cams(ckpt, paths, labels, ids, out_dir: Path, scales, workers, dev) -> None:
    """IRN's make_cam (flip always on, as there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_plain(ckpt, "cam", dev)
    loader = DataLoader(_MultiScaleFlip(ids, paths, scales), batch_size=None, num_workers=workers,
                        pin_memory=dev.type == "cuda")
    for image_id, (h, w), views in loader:
        total = 0
        for v in views:
            raw = model.cams(v.to(dev, non_blocking=True))  # all classes from one conv
            raw = raw[0] + raw[1].flip(-1)
            total = total + F.interpolate(raw[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        cams = total[[c - 1 for c in labels[image_id]]]
        cams /= F.adaptive_max_pool2d(cams, (1, 1)) + 1e-5
        np.save(out_dir / f"{image_id}.npy", cams.cpu().numpy().astype(np.float32))


@torch.no_grad()
def naive_reseg(ckpt, paths, ids, cam_dir: Path, out_dir: Path, rounds, dev) -> None:
    """The paper's inference script: batch 1, one class at a time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_plain(ckpt, "segmenter", dev)
    for image_id in ids:
        x = normalize(read_image(paths[image_id])).unsqueeze(0).to(dev)
        cams = np.load(cam_dir / f"{image_id}.npy")
        probs = []
        for cam in cams:
            cue = torch.from_numpy(cam)[None, None].to(dev)
            for _ in range(rounds):
                cue = torch.sigmoid(model(x, cue))
            probs.append(cue[0, 0].cpu().numpy())
        np.save(out_dir / f"{image_id}.npy", np.stack(probs).astype(np.float32))


# ---------------------------------------------------------------- locseg's stages


def locseg_cams(ckpt, paths, labels, ids, out, scales, dev, inference) -> dict:
    return extract_cams(ckpt, paths, labels, ids, VOC, out, scales=scales, flip=True, device=str(dev), **inference)


def locseg_reseg(ckpt, cam_store, paths, out, rounds, dev, inference) -> dict:
    return resegment(ckpt, cam_store, paths, VOC, out, rounds=rounds, keep_rounds=False, device=str(dev),
                     **inference)


def diff(store: Path, other) -> dict:
    """Max and mean |a - b| of every map, and the share of pixels beyond TOL; `other` is a store or a
    directory of the naive arm's .npy files."""
    worst, total, beyond, pixels = 0.0, 0.0, 0, 0
    with StoreReader(store) as a:
        b = StoreReader(other) if Path(other).suffix == ".h5" else None
        for i in a.ids:
            x = a.read(i)[0]
            y = b.read(i)[0] if b else np.load(Path(other) / f"{i}.npy")
            d = np.abs(x.astype(np.float64) - y)
            worst, total = max(worst, float(d.max(initial=0))), total + float(d.sum())
            beyond, pixels = beyond + int((d > TOL).sum()), pixels + d.size
        if b:
            b.close()
    return {"max": round(worst, 5), "mean": round(total / max(pixels, 1), 6),
            "beyond_2_1024": round(beyond / max(pixels, 1), 5)}


# ---------------------------------------------------------------- measurement


def timed(fn, dev) -> dict:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out = {"seconds": time.perf_counter() - t}
    if isinstance(result, dict):  # a locseg stage's forward-pass summary
        out["images_per_batch"] = result["images_per_batch"]
        out["images_per_pass"] = result["images_per_pass"]
    if dev.type == "cuda":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def summarise(runs: list[dict], n: int) -> dict:
    """Best of the repeats (the least disturbed by other load on the machine), with every time kept."""
    best = min(r["seconds"] for r in runs)
    out = {"images": n, "seconds": round(best, 3), "images_per_s": round(n / best, 3),
           "all_seconds": [round(r["seconds"], 3) for r in runs]}
    for key in ("gpu_peak_mb", "images_per_batch", "images_per_pass"):
        if key in runs[0]:
            out[key] = max(r[key] for r in runs)
    return out


def dir_bytes(d: Path) -> int:
    return sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())


def child(args) -> None:
    """One locseg stage alone, for peak RSS (this process and its DataLoader workers)."""
    work = Path(args.work)
    state = json.loads((work / "state.json").read_text())
    paths = {k: Path(v) for k, v in state["paths"].items()}
    ids = state["ids"][: args.child_n]
    dev = pick_device(args.device)
    inference = {"batch_size": args.batch_size, "workers": args.workers, "compile": args.compile,
                 "canvas": not args.no_canvas}
    t = time.perf_counter()
    if args.child == "cam":
        locseg_cams(state["cam_ckpt"], paths, state["labels"], ids, work / f"rss_cams_{args.child_n}.h5",
                    args.scales, dev, inference)
    else:
        locseg_reseg(state["seg_ckpt"], work / f"rss_cams_{args.child_n}.h5", paths,
                     work / f"rss_reseg_{args.child_n}.h5", args.rounds, dev, inference)
    seconds = time.perf_counter() - t
    print(json.dumps({
        "images": len(ids), "seconds": round(seconds, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "workers_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }))


def run_child(args, stage: str, n: int) -> dict:
    cmd = [sys.executable, __file__, "--_child", stage, "--_child-n", str(n), "--_work", str(args.work),
           "--device", args.device, "--batch-size", str(args.batch_size), "--workers", str(args.workers),
           "--rounds", str(args.rounds), "--scales", ",".join(map(str, args.scales))]
    cmd += ["--compile"] if args.compile else []
    cmd += ["--no-canvas"] if args.no_canvas else []
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


ARMS = {  # locseg's arms: (label, inference options beyond --workers / --compile)
    "fp32_b1": ("locseg fp32, batch 1", {"batch_size": 1, "bf16": False}),
    "fp32": ("locseg fp32, batch B", {"bf16": False}),
    "bf16": ("locseg bf16 + channels_last, batch B", {"bf16": True, "channels_last": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--mix", choices=sorted(MIXES), default="voc", help="generated image size mix")
    ap.add_argument("--images", type=int, default=32, help="N: images per timed run (RSS also runs 4N)")
    ap.add_argument("--check-images", type=int, default=4, help="canvas-sized images for the agreement check")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile in locseg's path (CUDA only)")
    ap.add_argument("--no-canvas", action="store_true",
                    help="locseg with inference.canvas false (no padding: only same-size images share a batch)")
    ap.add_argument("--small", action="store_true", help="demo 'small' backbones (fast on CPU)")
    ap.add_argument("--scales", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 0.5, 1.5, 2.0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per path; the best is reported")
    ap.add_argument("--no-rss", action="store_true", help="skip the N vs 4N peak-RSS subprocess runs")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 arm (emulated, slow on CPU)")
    ap.add_argument("--rss-only", action="store_true", help="only the N vs 4N peak-RSS subprocess runs")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    ap.add_argument("--_child", choices=["cam", "reseg"], help=argparse.SUPPRESS)
    ap.add_argument("--_child-n", dest="child_n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_work", dest="work", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.child = args._child
    if args.child:
        return child(args)
    if args.rss_only and args.no_rss:
        ap.error("--rss-only and --no-rss exclude each other")

    dev = pick_device(args.device)
    n = args.images
    work = Path(tempfile.mkdtemp(prefix="locseg_bench_"))
    args.work = work
    base = {"batch_size": args.batch_size, "workers": args.workers, "compile": args.compile,
            "canvas": not args.no_canvas}
    try:
        total = n if args.no_rss else 4 * n
        t = time.perf_counter()
        sizes = size_mix(args.mix, total, np.random.default_rng(0))
        paths, labels, ids = make_data(work / "voc", sizes)
        cam_ckpt, seg_ckpt = make_checkpoints(work, args.small)
        print(f"data: {total} JPEGs in {time.perf_counter() - t:.1f}s under {work}", file=sys.stderr)
        (work / "state.json").write_text(json.dumps({
            "paths": {k: str(v) for k, v in paths.items()}, "labels": labels, "ids": ids,
            "cam_ckpt": str(cam_ckpt), "seg_ckpt": str(seg_ckpt)}))
        sub = ids[:n]
        counts = Counter(sizes[:n])
        res = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
               platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "small": args.small, "images": n,
               "mix": args.mix, "distinct_sizes": len(counts),
               "most_common_size": [*counts.most_common(1)[0][0], round(counts.most_common(1)[0][1] / n, 3)],
               "maps": sum(len(labels[i]) for i in sub), "repeat": args.repeat, "scales": args.scales,
               "rounds": args.rounds, "inference": base}
        if not args.rss_only:
            res.update(timings(args, dev, work, paths, labels, sub, cam_ckpt, seg_ckpt, base))
            res["agreement"] = agreement(args, dev, work, cam_ckpt, seg_ckpt, base)
        if not args.no_rss:
            res["rss"] = {}
            for stage in ("cam", "reseg"):
                for m in (n, 4 * n):
                    print(f"peak RSS: {stage} alone on {m} images ...", file=sys.stderr)
                    res["rss"][f"{stage}_{m}"] = run_child(args, stage, m)
        report(res)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(res, indent=2))
    finally:
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def timings(args, dev, work, paths, labels, sub, cam_ckpt, seg_ckpt, base) -> dict:
    """Every arm on the same images, interleaved `--repeat` times (slow drift in machine load hits all
    arms alike); the best run of each, its images per forward pass, and the store / .npy bytes."""
    n, scales = len(sub), args.scales
    arms = {key: {**base, **opts} for key, (_, opts) in ARMS.items() if not (args.no_bf16 and key == "bf16")}
    # warm-up (lazy kernel / allocator set-up) on 2 images, untimed, for each path
    warm = sub[:2]
    naive_cams(cam_ckpt, paths, labels, warm, work / "warm_npy", scales, args.workers, dev)
    naive_reseg(seg_ckpt, paths, warm, work / "warm_npy", work / "warm_npy_r", 1, dev)
    for key, inference in arms.items():
        locseg_cams(cam_ckpt, paths, labels, warm, work / f"warm_{key}.h5", scales, dev, inference)
        locseg_reseg(seg_ckpt, work / f"warm_{key}.h5", paths, work / f"warm_{key}_r.h5", 1, dev, inference)
    runs: dict[str, list] = {}
    for rep in range(args.repeat):
        print(f"[{rep + 1}/{args.repeat}] naive and {len(arms)} locseg arms on {n} images", file=sys.stderr)
        runs.setdefault("cam_naive", []).append(timed(lambda: naive_cams(
            cam_ckpt, paths, labels, sub, work / "npy_cams", scales, args.workers, dev), dev))
        for key, inference in arms.items():
            runs.setdefault(f"cam_{key}", []).append(timed(lambda: locseg_cams(
                cam_ckpt, paths, labels, sub, work / f"cams_{key}.h5", scales, dev, inference), dev))
        runs.setdefault("reseg_naive", []).append(timed(lambda: naive_reseg(
            seg_ckpt, paths, sub, work / "npy_cams", work / "npy_reseg", args.rounds, dev), dev))
        for key, inference in arms.items():
            runs.setdefault(f"reseg_{key}", []).append(timed(lambda: locseg_reseg(
                seg_ckpt, work / f"cams_{key}.h5", paths, work / f"reseg_{key}.h5", args.rounds, dev, inference), dev))
    out = {k: summarise(v, n) for k, v in runs.items()}
    out["bytes"] = {
        "cam_store": (work / "cams_fp32.h5").stat().st_size, "cam_npy_float32": dir_bytes(work / "npy_cams"),
        "reseg_store": (work / "reseg_fp32.h5").stat().st_size, "reseg_npy_float32": dir_bytes(work / "npy_reseg"),
    }
    pairs = {  # on the size mix: padding changes maps near the right/bottom border
        "cam_fp32_vs_naive": ("cams_fp32.h5", "npy_cams"), "cam_bf16_vs_fp32": ("cams_bf16.h5", "cams_fp32.h5"),
        "cam_fp32_b16_vs_b1": ("cams_fp32.h5", "cams_fp32_b1.h5"),
        "reseg_fp32_vs_naive": ("reseg_fp32.h5", "npy_reseg"), "reseg_bf16_vs_fp32": ("reseg_bf16.h5", "reseg_fp32.h5"),
        "reseg_fp32_b16_vs_b1": ("reseg_fp32.h5", "reseg_fp32_b1.h5"),
    }
    out["mix_diff"] = {k: diff(work / a, work / b) for k, (a, b) in pairs.items() if (work / a).exists()}
    return out


def agreement(args, dev, work, cam_ckpt, seg_ckpt, base) -> dict:
    """locseg fp32 (batched) against the naive arms on canvas-sized images (384x512 and 512x384, the canvas
    of VOC's commonest sizes): no padding, so the two compute the same maps and must agree within 2/1024."""
    sizes = [(384, 512), (512, 384)] * (args.check_images // 2) + [(384, 512)] * (args.check_images % 2)
    paths, labels, ids = make_data(work / "check", sizes, seed=1, prefix="check")
    inference = {**base, "bf16": False}
    naive_cams(cam_ckpt, paths, labels, ids, work / "check_npy", args.scales, args.workers, dev)
    naive_reseg(seg_ckpt, paths, ids, work / "check_npy", work / "check_npy_r", args.rounds, dev)
    locseg_cams(cam_ckpt, paths, labels, ids, work / "check.h5", args.scales, dev, inference)
    locseg_reseg(seg_ckpt, work / "check.h5", paths, work / "check_r.h5", args.rounds, dev, inference)
    out = {"images": len(ids), "cam": diff(work / "check.h5", work / "check_npy"),
           "reseg": diff(work / "check_r.h5", work / "check_npy_r")}
    out["within_2_1024"] = out["cam"]["max"] <= TOL and out["reseg"]["max"] <= TOL
    return out


def report(r: dict) -> None:
    inf = r["inference"]
    print(f"\ndevice {r['device']} ({r['device_name']}), torch {r['torch']}, {r['threads']} threads; "
          f"{'small' if r['small'] else 'paper'} models; {r['images']} images ({r['mix']} mix, "
          f"{r['distinct_sizes']} sizes, commonest {r['most_common_size']}), {r['maps']} class maps; "
          f"scales {r['scales']} + flip, rounds {r['rounds']}; best of {r['repeat']} runs")
    print(f"locseg: batch B = {inf['batch_size']}, workers {inf['workers']}, compile {inf['compile']}, "
          f"canvas {inf['canvas']}\n")
    if "cam_naive" in r:
        report_timing(r)
    if "rss" in r:
        n = r["images"]
        for stage in ("cam", "reseg"):
            a, b = r["rss"][f"{stage}_{n}"], r["rss"][f"{stage}_{4 * n}"]
            print(f"peak RSS {stage}: {n} images {a['peak_rss_mb']:.0f} MB (workers {a['workers_peak_rss_mb']:.0f}), "
                  f"{4 * n} images {b['peak_rss_mb']:.0f} MB (workers {b['workers_peak_rss_mb']:.0f}); "
                  f"ratio {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")


def report_timing(r: dict) -> None:
    print("| stage | arm | images/s | seconds | images per batch / per forward pass | speedup |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    naive = {"cam": "naive: IRN make_cam (batch 1, flip in one batch of 2, fp32)",
             "reseg": "naive: paper's loop (batch 1, one class at a time, fp32)"}
    gpu = lambda x: f" (GPU peak {x['gpu_peak_mb']} MB)" if "gpu_peak_mb" in x else ""
    for stage, key in (("extract_cams", "cam"), ("resegment", "reseg")):
        a = r[f"{key}_naive"]
        print(f"| {stage} | {naive[key]}{gpu(a)} | {a['images_per_s']:.2f} | {a['seconds']:.1f} | 1 / 1 | 1.00 |")
        for arm, (label, _) in ARMS.items():
            if f"{key}_{arm}" not in r:
                continue
            b = r[f"{key}_{arm}"]
            print(f"| {stage} | {label}{gpu(b)} | {b['images_per_s']:.2f} | {b['seconds']:.1f} | "
                  f"{b['images_per_batch']:.1f} / {b['images_per_pass']:.1f} | "
                  f"{b['images_per_s'] / a['images_per_s']:.2f} |")
    by = r["bytes"]
    print(f"\nstore bytes: CAMs {by['cam_store'] / 2**20:.2f} MB vs float32 .npy {by['cam_npy_float32'] / 2**20:.2f} MB "
          f"({by['cam_store'] / by['cam_npy_float32']:.3f}); probabilities {by['reseg_store'] / 2**20:.2f} MB vs "
          f"{by['reseg_npy_float32'] / 2**20:.2f} MB ({by['reseg_store'] / by['reseg_npy_float32']:.3f})")
    a = r["agreement"]
    print(f"\nagreement on {a['images']} canvas-sized images, locseg fp32 vs naive: CAMs max {a['cam']['max']}, "
          f"probabilities max {a['reseg']['max']} -> within 2/1024: {a['within_2_1024']}")
    print("on the mix (max | mean | share of pixels beyond 2/1024):")
    for k, d in r["mix_diff"].items():
        print(f"  {k}: {d['max']} | {d['mean']} | {d['beyond_2_1024']}")


if __name__ == "__main__":
    main()
