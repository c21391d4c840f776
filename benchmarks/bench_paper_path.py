"""The paper config's GPU stages at real sizes, on CPU: seconds per image or training step, peak RSS, and the
GPU memory each stage would need per batch at the config's batch sizes in bf16.

    python benchmarks/bench_paper_path.py [--config config/voc12_coco.yaml] [--steps 2] [--out paper.json]

Each stage runs alone in a subprocess (so its peak RSS is its own) with the real models of the config and
random weights, on generated images at the datasets' sizes (a VOC 500x375 image for the VOC stages, a COCO
640x480 one for extract_cams, whose COCO split holds the larger images), through the library functions the
pipeline calls: `infer_cams_batch`, `resegment_batch`, `predict`, and `fit`'s step (loss, backward, optimizer)
at a training batch of 2 (the paper's 16 / 4 / 10 do not fit a 2-core machine's patience). One untimed warm-up,
then `--steps` timed runs (their mean is reported).

GPU memory comes from `locseg.gpu_memory` (a fake-tensor trace, bf16 autocast). The same subprocess checks
that trace against torch.profiler's memory records of the real CPU run (fp32, same batch): the `trace / CPU`
column is how far the estimate is from what torch allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

STAGES = ("train_cam", "extract_cams", "train_segmenter", "resegment", "train_deeplab", "evaluate_deeplab")
TRAIN_BATCH = 2
# What torch reports as total memory for the usual cards of each nominal size (GiB).
GPUS = {"12 GB": 11.8, "24 GB": 23.6, "40 GB": 39.4, "80 GB": 79.2}


def _image(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 RGB image of smooth colour blobs (content does not change the cost; size does)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (h // 32 + 2, w // 32 + 2, 3))
    return np.kron(coarse, np.ones((32, 32, 1)))[:h, :w].astype(np.uint8)


def _held_bytes(*groups) -> int:
    seen, total = set(), 0
    for t in (t for group in groups for t in group):
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def _profiled_peak(run, held: int) -> int:
    """Peak bytes torch allocated on CPU while `run()` ran (profiler memory records, in time order), plus
    the `held` bytes that were live before."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    live = peak = 0
    for _, delta in sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                           if e.self_cpu_memory_usage):
        live += delta
        peak = max(peak, live)
    return held + peak


def _stage_runner(stage: str, config: dict):
    """(run once, what one run is, items per run, bytes held before a run, trace batch) for one stage."""
    from locseg.batching import Compute
    from locseg.cam import _bce, infer_cams_batch
    from locseg.gpu_memory import CLASSES_PER_IMAGE, COCO_HW, VOC_HW
    from locseg.models.cam import CamNet
    from locseg.models.deeplab import build_deeplab
    from locseg.models.segmenter import Segmenter
    from locseg.reseg import resegment_batch, segmenter_loss
    from locseg.retrain import _cross_entropy, predict
    from locseg.train import make_optimizer

    cpu = torch.device("cpu")
    cam, seg, dl = config["cam"], config["segmenter"], config["deeplab"]
    n_fg = len(config["classes"]) - 1
    compute = Compute.on(cpu, canvas=config["inference"]["canvas"])
    voc, coco = _image(*VOC_HW, 0), _image(*COCO_HW, 1)
    classes = list(range(1, CLASSES_PER_IMAGE + 1))

    def training(model, loss_fn, optimizer, batch):
        model.train()
        opt = make_optimizer(optimizer, model.parameters(), lr=1e-3, weight_decay=1e-4)

        def step():
            loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        def held():
            return _held_bytes(model.parameters(), model.buffers(), batch,
                               [p.grad for p in model.parameters() if p.grad is not None],
                               [t for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)])

        return step, f"training step (batch {TRAIN_BATCH})", TRAIN_BATCH, held, TRAIN_BATCH

    def inference(model, run, what):
        model.eval()

        def step():
            with torch.no_grad():
                run(model)

        return step, what, 1, lambda: _held_bytes(model.parameters(), model.buffers()), 1

    b = TRAIN_BATCH
    if stage == "train_cam":
        c = cam["crop"]
        return training(CamNet(n_fg, cam["backbone"], cam["output_stride"]), _bce, cam["optimizer"],
                        [torch.randn(b, 3, c, c), torch.randint(0, 2, (b, n_fg)).float()])
    if stage == "extract_cams":
        return inference(CamNet(n_fg, cam["backbone"], cam["output_stride"]),
                         lambda m: infer_cams_batch(m.cams, [coco], [classes], cam["scales"], cam["flip"], compute,
                                                    cam["max_side"]),
                         f"image {COCO_HW[1]}x{COCO_HW[0]}, {len(cam['scales'])} scales{' + flip' * cam['flip']}")
    if stage == "train_segmenter":
        c = seg["crop"]
        batch = [torch.randn(b, 3, c, c), torch.rand(b, 1, c, c), torch.randint(0, 2, (b, c, c))]
        if seg["passes"] == 2 and seg["second_cues"]:
            batch += [torch.rand(b, 1, c, c), torch.zeros(b)]
        return training(Segmenter(seg["backbone"], seg["output_stride"], None, seg["width"]),
                        lambda m, x: segmenter_loss(m, x, seg["consistency"], seg["feedback"]), seg["optimizer"],
                        batch)
    if stage == "resegment":
        cams = np.random.default_rng(2).uniform(0, 1, (CLASSES_PER_IMAGE, *VOC_HW)).astype(np.float32)
        rs = config["reseg"]
        return inference(Segmenter(seg["backbone"], seg["output_stride"], None, seg["width"]),
                         lambda m: resegment_batch(m, [voc], [cams], rs["rounds"], compute, rs["keep_rounds"],
                                                   rs["max_side"], seg["feedback"], rs["flip"]),
                         f"image {VOC_HW[1]}x{VOC_HW[0]}, {CLASSES_PER_IMAGE} classes, {rs['rounds']} rounds"
                         f"{' + flip' * rs['flip']}")
    if stage == "train_deeplab":
        c = dl["crop"]
        return training(build_deeplab(n_fg + 1, dl["backbone"]), _cross_entropy, dl["optimizer"],
                        [torch.randn(b, 3, c, c), torch.randint(0, n_fg + 1, (b, c, c))])
    if stage == "evaluate_deeplab":
        return inference(build_deeplab(n_fg + 1, dl["backbone"]),
                         lambda m: predict(m, voc, cpu, dl["eval_scales"], dl["eval_flip"]),
                         f"image {VOC_HW[1]}x{VOC_HW[0]}, scales {dl['eval_scales']}{' + flip' * dl['eval_flip']}")
    raise ValueError(f"unknown stage {stage!r}")


def measure(stage: str, config: dict, steps: int) -> dict:
    """One stage in this process: timings, peak RSS, profiler peak against the fp32 trace."""
    from locseg.gpu_memory import stage_estimates

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    step, what, items, held, trace_batch = _stage_runner(stage, config)
    step()  # warm-up (and the optimizer state of a training step)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    profiled = _profiled_peak(step, held())
    traced = {e.stage: e for e in stage_estimates(config, bf16=False)}[stage].bytes_at(trace_batch)
    return {"stage": stage, "what": what, "seconds": sum(times) / len(times), "items": items, "times": times,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "profiled_fp32_bytes": profiled, "traced_fp32_bytes": traced, "trace_batch": trace_batch,
            "threads": torch.get_num_threads()}


def _table(config: dict, rows: list[dict]) -> str:
    from locseg.gpu_memory import stage_estimates

    est = {e.stage: e for e in stage_estimates(config, bf16=True)}
    gib = 2**30
    lines = ["| stage | one run | CPU s / run | CPU s / image or sample | peak RSS (MB) | trace / CPU profiler "
             "(fp32) | batch (key) | est. GPU GiB per batch, bf16 | " + " | ".join(f"fits {g}" for g in GPUS) + " |",
             "|" + " --- |" * (8 + len(GPUS))]
    for r in rows:
        e = est[r["stage"]]
        fits = [str(min(e.largest_batch(int(g * gib)), 999)) if e.key else
                ("yes" if e.needed_bytes() <= g * gib else "no") for g in GPUS.values()]
        lines.append(f"| {r['stage']} | {r['what']} | {r['seconds']:.1f} | {r['seconds'] / r['items']:.1f} | "
                     f"{r['rss_mb']:.0f} | {r['traced_fp32_bytes'] / r['profiled_fp32_bytes']:.2f} | {e.batch} "
                     f"({e.key or 'one image'}) | {e.needed_bytes() / gib:.1f} | " + " | ".join(fits) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).parents[1] / "config/voc12_coco.yaml"))
    parser.add_argument("--steps", type=int, default=2, help="timed runs per stage, after one warm-up")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--out", help="write every figure as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one stage, in a subprocess
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    if args.child:
        print(json.dumps(measure(args.child, config, args.steps)))
        return
    rows = []
    for stage in args.stages.split(","):
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, __file__, "--config", args.config, "--steps", str(args.steps),
                               "--child", stage], capture_output=True, text=True, check=True)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{stage}: {rows[-1]['seconds']:.1f} s per {rows[-1]['what']} ({time.perf_counter() - t:.0f} s "
              f"with model set-up)", file=sys.stderr)
    print(f"torch {torch.__version__}, {rows[0]['threads']} threads, config {args.config}")
    print(_table(config, rows))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
