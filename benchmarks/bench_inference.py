"""Throughput of CAM extraction and resegmentation: a naive per-image loop vs locseg's real stages.

Not a test. Generates VOC-like JPEGs (500x375 and 375x500, a few other sizes, 1-3 of 20 classes each) in a
temporary directory, builds the real models with random weights and measures, in one process, on the same
model and the same images:

  (a) naive  - the anchors' style: per-image decode, batch 1, fp32, one scale / one flip / one class at a
               time, np.save of float32 [k, H, W] maps (the naive resegmentation reads those .npy CAMs);
  (b) locseg - locseg.cam.extract_cams and locseg.reseg.resegment as the pipeline runs them (decode in
               DataLoader workers, same-size batches, bf16 + channels_last on CUDA, HDF5 written by a thread).

Both include loading the model from its checkpoint. It also reports the store's bytes against the
float32 .npy bytes, and the peak RSS of each locseg stage run alone in a subprocess for N and 4N images
(memory must stay flat: the stages stream).

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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from locseg.cam import extract_cams
from locseg.data.transforms import normalize
from locseg.data.voc import read_image
from locseg.models.cam import CamNet
from locseg.models.segmenter import Segmenter
from locseg.reseg import resegment
from locseg.checkpoints import load_checkpoint, save_checkpoint
from locseg.runtime import pick_device

VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
       "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]
# (H, W) and how often: VOC is mostly 500 wide landscape or 500 tall portrait, with a tail of other sizes.
SIZES = [((375, 500), 0.6), ((500, 375), 0.25), ((333, 500), 0.1), ((500, 332), 0.05)]


# ---------------------------------------------------------------- data and models


def make_data(root: Path, n: int, seed: int = 0) -> tuple[dict, dict, list]:
    rng = np.random.default_rng(seed)
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    shapes, p = zip(*SIZES)
    paths, labels = {}, {}
    for i in range(n):
        h, w = shapes[rng.choice(len(shapes), p=np.array(p) / sum(p))]
        # smooth colour field + a few ellipses + noise: compresses like a photo, not like flat colour
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        for _ in range(rng.integers(1, 4)):
            cy, cx, ry, rx = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, h / 3), rng.uniform(20, w / 3)
            img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.integers(0, 256, 3)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        image_id = f"2008_{i:06d}"
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
    """The model as an anchor script builds it: fp32, default memory format, eval."""
    payload = load_checkpoint(path, kind)
    m = payload["meta"]
    model = CamNet(len(VOC) - 1, m["backbone"], m["output_stride"]) if kind == "cam" else \
        Segmenter(m["backbone"], m["output_stride"], None, m["width"])
    model.load_state_dict(payload["state_dict"])
    return model.to(dev).eval()


# ---------------------------------------------------------------- (a) naive loops


@torch.no_grad()
def naive_cams(ckpt, paths, labels, ids, out_dir: Path, scales, flip, dev) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = load_plain(ckpt, "cam", dev)
    for image_id in ids:
        image = read_image(paths[image_id])
        h, w = image.shape[:2]
        x = normalize(image).unsqueeze(0).to(dev)
        classes = labels[image_id]
        total = torch.zeros(len(classes), h, w, device=dev)
        for s in scales:
            xs = x if s == 1.0 else F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear",
                                                  align_corners=False)
            for flipped in ([False, True] if flip else [False]):
                cams = model.cams(xs.flip(-1) if flipped else xs)
                for j, c in enumerate(classes):
                    up = F.interpolate(cams[:, c - 1:c], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
                    total[j] += up.flip(-1) if flipped else up
        for j in range(len(classes)):
            total[j] /= total[j].max() + 1e-5
        np.save(out_dir / f"{image_id}.npy", total.cpu().numpy().astype(np.float32))


@torch.no_grad()
def naive_reseg(ckpt, paths, ids, cam_dir: Path, out_dir: Path, rounds, dev) -> None:
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


# ---------------------------------------------------------------- (b) locseg's stages


def locseg_cams(ckpt, paths, labels, ids, out, scales, flip, dev, inference) -> None:
    extract_cams(ckpt, paths, labels, ids, VOC, out, scales=scales, flip=flip, device=str(dev), **inference)


def locseg_reseg(ckpt, cam_store, paths, out, rounds, dev, inference) -> None:
    resegment(ckpt, cam_store, paths, VOC, out, rounds=rounds, keep_rounds=False, device=str(dev), **inference)


# ---------------------------------------------------------------- measurement


def timed(fn, dev, n: int) -> dict:
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    out = {"seconds": time.perf_counter() - t}
    if dev.type == "cuda":
        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def summarise(runs: list[dict], n: int) -> dict:
    """Best of the repeats (the least disturbed by other load on the machine), with every time kept."""
    best = min(r["seconds"] for r in runs)
    out = {"images": n, "seconds": round(best, 3), "images_per_s": round(n / best, 3),
           "all_seconds": [round(r["seconds"], 3) for r in runs]}
    if "gpu_peak_mb" in runs[0]:
        out["gpu_peak_mb"] = max(r["gpu_peak_mb"] for r in runs)
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
    inference = {"batch_size": args.batch_size, "workers": args.workers, "compile": args.compile}
    t = time.perf_counter()
    if args.child == "cam":
        locseg_cams(state["cam_ckpt"], paths, state["labels"], ids, work / f"rss_cams_{args.child_n}.h5",
                    args.scales, not args.no_flip, dev, inference)
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
    cmd += ["--no-flip"] if args.no_flip else []
    cmd += ["--compile"] if args.compile else []
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, default=32, help="N: images per timed run (RSS also runs 4N)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile in locseg's path (CUDA only)")
    ap.add_argument("--small", action="store_true", help="demo 'small' backbones (fast on CPU)")
    ap.add_argument("--scales", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 0.5, 1.5, 2.0])
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=1, help="timed runs per path; the best is reported")
    ap.add_argument("--no-rss", action="store_true", help="skip the N vs 4N peak-RSS subprocess runs")
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

    dev = pick_device(args.device)
    n, flip = args.images, not args.no_flip
    work = Path(tempfile.mkdtemp(prefix="locseg_bench_"))
    args.work = work
    inference = {"batch_size": args.batch_size, "workers": args.workers, "compile": args.compile}
    try:
        if args.rss_only and args.no_rss:
            ap.error("--rss-only and --no-rss exclude each other")
        total = n if args.no_rss else 4 * n
        t = time.perf_counter()
        paths, labels, ids = make_data(work / "voc", total)
        cam_ckpt, seg_ckpt = make_checkpoints(work, args.small)
        print(f"data: {total} JPEGs in {time.perf_counter() - t:.1f}s under {work}", file=sys.stderr)
        (work / "state.json").write_text(json.dumps({
            "paths": {k: str(v) for k, v in paths.items()}, "labels": labels, "ids": ids,
            "cam_ckpt": str(cam_ckpt), "seg_ckpt": str(seg_ckpt)}))
        sub = ids[:n]
        maps = sum(len(labels[i]) for i in sub)

        res = {"device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
               platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "cpus": os.cpu_count(), "small": args.small, "images": n,
               "maps": maps, "repeat": args.repeat, "scales": args.scales, "flip": flip, "rounds": args.rounds,
               "inference": inference}
        if not args.rss_only:
            # warm-up (lazy kernel / allocator set-up) on 2 images, untimed, for each path
            warm = ids[:2]
            naive_cams(cam_ckpt, paths, labels, warm, work / "warm_npy", args.scales, flip, dev)
            locseg_cams(cam_ckpt, paths, labels, warm, work / "warm.h5", args.scales, flip, dev, inference)
            naive_reseg(seg_ckpt, paths, warm, work / "warm_npy", work / "warm_npy_r", 1, dev)
            locseg_reseg(seg_ckpt, work / "warm.h5", paths, work / "warm_r.h5", 1, dev, inference)

            runs = {k: [] for k in ("cam_naive", "cam_locseg", "reseg_naive", "reseg_locseg")}
            for rep in range(args.repeat):  # interleaved, so slow drift in machine load hits both paths alike
                print(f"[{rep + 1}/{args.repeat}] extract_cams naive, locseg; resegment naive, locseg ({n} images)",
                      file=sys.stderr)
                runs["cam_naive"].append(timed(lambda: naive_cams(cam_ckpt, paths, labels, sub, work / "npy_cams",
                                                                  args.scales, flip, dev), dev, n))
                runs["cam_locseg"].append(timed(lambda: locseg_cams(cam_ckpt, paths, labels, sub, work / "cams.h5",
                                                                    args.scales, flip, dev, inference), dev, n))
                runs["reseg_naive"].append(timed(lambda: naive_reseg(seg_ckpt, paths, sub, work / "npy_cams",
                                                                     work / "npy_reseg", args.rounds, dev), dev, n))
                runs["reseg_locseg"].append(timed(lambda: locseg_reseg(seg_ckpt, work / "cams.h5", paths,
                                                                       work / "reseg.h5", args.rounds, dev, inference),
                                                  dev, n))
            res.update({k: summarise(v, n) for k, v in runs.items()})
            res["bytes"] = {
                "cam_store": (work / "cams.h5").stat().st_size, "cam_npy_float32": dir_bytes(work / "npy_cams"),
                "reseg_store": (work / "reseg.h5").stat().st_size, "reseg_npy_float32": dir_bytes(work / "npy_reseg"),
            }
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


def report(r: dict) -> None:
    inf = r["inference"]
    print(f"\ndevice {r['device']} ({r['device_name']}), torch {r['torch']}, {r['threads']} threads; "
          f"{'small' if r['small'] else 'paper'} models; {r['images']} images, {r['maps']} class maps; "
          f"scales {r['scales']}, flip {r['flip']}, rounds {r['rounds']}; best of {r['repeat']} runs")
    print(f"locseg: batch_size {inf['batch_size']}, workers {inf['workers']}, compile {inf['compile']}\n")
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
    print("| stage | path | images/s | seconds | speedup |")
    print("| --- | --- | ---: | ---: | ---: |")
    for stage, key in (("extract_cams", "cam"), ("resegment", "reseg")):
        a, b = r[f"{key}_naive"], r[f"{key}_locseg"]
        gpu = lambda x: f" (GPU peak {x['gpu_peak_mb']} MB)" if "gpu_peak_mb" in x else ""
        print(f"| {stage} | naive: batch 1, fp32, per view/class, np.save{gpu(a)} | {a['images_per_s']:.2f} | "
              f"{a['seconds']:.1f} | 1.00 |")
        print(f"| {stage} | locseg stage{gpu(b)} | {b['images_per_s']:.2f} | {b['seconds']:.1f} | "
              f"{b['images_per_s'] / a['images_per_s']:.2f} |")
    by = r["bytes"]
    print(f"\nstore bytes: CAMs {by['cam_store'] / 2**20:.2f} MB vs float32 .npy {by['cam_npy_float32'] / 2**20:.2f} MB "
          f"({by['cam_store'] / by['cam_npy_float32']:.3f}); probabilities {by['reseg_store'] / 2**20:.2f} MB vs "
          f"{by['reseg_npy_float32'] / 2**20:.2f} MB ({by['reseg_store'] / by['reseg_npy_float32']:.3f})")


if __name__ == "__main__":
    main()
