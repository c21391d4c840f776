"""`locseg doctor`: what a user checks before a long run, one line per finding.

A finding is (level, text). FAIL is a blocker (the run would stop, or run on the wrong device); warn is
something that works but may not be what was meant (CPU training, ResNets from scratch, weights still to
be fetched); ok is a fact worth seeing (versions, GPUs, image counts, free disk).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import yaml

from locseg.config import schema_problems, semantic_problems
from locseg.weights import IMAGENET_BACKBONES, STAGES, imagenet_file, imagenet_weights, requested

OK, WARN, FAIL = "ok", "warn", "FAIL"
SAMPLE = 50  # image headers read per split for the mean image size
MAPS_PER_IMAGE = 2.0  # class maps per image assumed in the disk estimate (VOC images hold 1.5 classes on average)
# Stored bytes per float32 map byte (locseg/store.py): CAMs 0.22 measured on the demo, rounded up to 0.3 for
# real images; resegmented probabilities compress ~30x, taken as 0.1.
CAM_RATIO, PROB_RATIO = 0.3, 0.1
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

Finding = tuple[str, str]


def diagnose(config_path, schema_path) -> list[Finding]:
    """Every check for one config file; the caller prints them and exits non-zero on any FAIL."""
    try:
        config = yaml.safe_load(Path(config_path).read_text())
    except (OSError, yaml.YAMLError) as e:
        return [(FAIL, f"{config_path}: cannot read config ({e})")]
    if not isinstance(config, dict):
        return [(FAIL, f"{config_path}: a config must be a mapping")]
    problems = schema_problems(config, schema_path)
    if problems:
        return gpu_findings("auto", needs_gpu=False) + [(FAIL, f"{config_path}: {p}") for p in problems]
    needs_gpu = any(config[s]["backbone"] != "small" for s in STAGES)
    findings = gpu_findings(config["device"], needs_gpu)
    gpu_bytes = smallest_gpu_bytes() if config["device"] != "cpu" else None
    if gpu_bytes:
        findings += memory_findings(config, gpu_bytes)
    findings += [(FAIL, p) for p in semantic_problems(config)]
    findings += weights_findings(config)
    findings += sam_findings(config)
    if not config["demo"]["enabled"]:
        findings += dataset_findings(config)
    return findings


# --------------------------------------------------------------------------- torch and GPUs


def _driver_cuda() -> str | None:
    """The CUDA version the NVIDIA driver supports (nvidia-smi's header), or None without a driver."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"CUDA Version:\s*([0-9.]+)", out)
    return m.group(1) if m else None


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])


def gpu_findings(device: str, needs_gpu: bool) -> list[Finding]:
    """torch version and build, the GPUs torch sees, and if none, the likely reason."""
    import torch

    build = torch.version.cuda
    findings = [(OK, f"torch {torch.__version__}, {f'CUDA {build} build' if build else 'CPU-only build'}")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    driver = _driver_cuda()
    if build and driver and _version_tuple(driver) < _version_tuple(build):
        findings.append((WARN, f"driver mismatch: the NVIDIA driver supports CUDA {driver}, torch is built for "
                               f"CUDA {build}: update the driver or install a torch built for CUDA <= {driver}"))
    if count:
        for i in range(count):
            p = torch.cuda.get_device_properties(i)
            findings.append((OK, f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB"))
        return findings
    if not build:
        why = "torch is a CPU-only build (install a CUDA build of torch)"
    elif os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        why = f"CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r} hides every GPU"
    elif driver is None:
        why = "no NVIDIA driver found (nvidia-smi is missing or fails): not a GPU node?"
    else:
        why = "; ".join(str(w.message) for w in caught) or "torch.cuda.is_available() is False"
    if device.startswith("cuda"):
        return findings + [(FAIL, f"no GPU seen, config asks for device {device!r}: {why}")]
    if needs_gpu:
        return findings + [(WARN, f"no GPU seen, ResNet stages will train on CPU (days for the paper setting): "
                                  f"{why}")]
    return findings + [(OK, f"no GPU seen, the demo runs on CPU ({why})")]


def smallest_gpu_bytes() -> int | None:
    """Total memory of the smallest GPU torch sees (a job may get any of them), or None without one."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.device_count():
        return None
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def memory_findings(config: dict, gpu_bytes: int) -> list[Finding]:
    """Each GPU stage's estimated peak (locseg.gpu_memory) at the configured batch sizes against the GPU."""
    from locseg.gpu_memory import stage_estimates

    findings, largest = [], None
    for est in stage_estimates(config):
        need = est.needed_bytes()
        if largest is None or need > largest.needed_bytes():
            largest = est
        if need <= gpu_bytes:
            continue
        fits = est.largest_batch(gpu_bytes)
        where = (f"{est.stage}: a batch of {est.batch} x {est.item} needs about {_gib(need)} of GPU memory, the "
                 f"GPU has {_gib(gpu_bytes)}")
        if est.key and fits >= est.minimum:
            findings.append((WARN, f"{where}: lower {est.key} to {fits} ({_gib(est.needed_bytes(fits))})"))
        else:
            findings.append((WARN, f"{where}; a smaller batch does not fit either: lower the size {est.stage} "
                                   f"runs at (its crop, max_side or scales)"))
    if not findings:
        findings.append((OK, f"GPU memory: every stage fits in {_gib(gpu_bytes)} at the configured batch sizes "
                             f"(largest: {largest.stage}, about {_gib(largest.needed_bytes())})"))
    return findings


# --------------------------------------------------------------------------- weights


def weights_findings(config: dict) -> list[Finding]:
    findings = []
    for stage, backbone in requested(config).items():
        path = imagenet_file(backbone)
        if path.is_file():
            findings.append((OK, f"{stage}.weights: {backbone} ImageNet weights cached at {path}"))
        else:
            findings.append((WARN, f"{stage}.weights: {path.name} not in the torch cache: `snakemake --cores 1 "
                                   f"--until fetch_weights` downloads it (needs internet); offline, download "
                                   f"{imagenet_weights(backbone).url} elsewhere and place it at {path}"))
    for stage in STAGES:
        backbone = config[stage]["backbone"]
        if not config[stage]["weights"] and backbone in IMAGENET_BACKBONES:
            findings.append((WARN, f"{stage}.weights: null: {backbone} is trained from scratch (far below "
                                   f"published results; set weights: imagenet)"))
    return findings


def sam_findings(config: dict) -> list[Finding]:
    """`segmenter.kind: sam`: the optional package, and the checkpoint (a cached release is hash-checked)."""
    import importlib.util

    from locseg.weights import SAM_CHECKPOINTS, sam_file, sam_hash_problem

    sam = config["segmenter"]["sam"]
    if config["segmenter"]["kind"] != "sam":
        return []
    findings = []
    if importlib.util.find_spec("segment_anything") is None:
        findings.append((FAIL, "segmenter.kind: sam needs the segment-anything package: pip install -e \".[sam]\""))
    if sam["checkpoint"]:
        path = Path(sam["checkpoint"])
        ok = path.is_file()
        return findings + [(OK if ok else FAIL, f"segmenter.sam.checkpoint: {path} {'found' if ok else 'not found'}")]
    path = sam_file(sam["model"])
    if not path.is_file():
        return findings + [(WARN, f"segmenter.sam: {path.name} not in the torch cache: `snakemake --cores 1 --until "
                                  f"fetch_weights` downloads it (needs internet); offline, download "
                                  f"{SAM_CHECKPOINTS[sam['model']][0]} elsewhere and place it at {path}")]
    problem = sam_hash_problem(sam["model"], path)
    return findings + [(FAIL, problem) if problem else
                       (OK, f"segmenter.sam: SAM {sam['model']} checkpoint cached at {path}, SHA-256 as released")]


# --------------------------------------------------------------------------- dataset and disk


def _mean_pixels(paths: list[Path]) -> float | None:
    """Mean H*W over an even sample of image headers (PIL reads the header only)."""
    from PIL import Image

    sample = paths[:: max(1, len(paths) // SAMPLE)][:SAMPLE]
    sizes = []
    for p in sample:
        try:
            with Image.open(p) as img:
                sizes.append(img.width * img.height)
        except OSError:
            continue  # validate_dataset reports bad images; here they only drop out of the estimate
    return sum(sizes) / len(sizes) if sizes else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def dataset_findings(config: dict, results_dir="results") -> list[Finding]:
    """Images per split (from the split lists), COCO images, and free disk against the stores' size."""
    from locseg.data.voc import VocLayout

    ds, coco = config["dataset"], config["coco"]
    layout = VocLayout(Path(ds["root"]), ds["image_dir"], ds["mask_dir"], ds["split_dir"])
    pixels: dict[str, tuple[int, float]] = {}  # split -> (images, mean pixels)
    findings = []
    for split in sorted(set(ds["splits"].values())):
        split_file = layout.split_file(split)
        if not split_file.is_file():
            continue  # already a FAIL from the config check
        ids = split_file.read_text().split()
        mean = _mean_pixels([layout.image_path(i) for i in ids])
        findings.append((OK, f"dataset split {split}: {len(ids)} images ({split_file})"))
        if mean:
            pixels[split] = (len(ids), mean)
    image_dir = Path(coco["image_dir"])
    if image_dir.is_dir():
        files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        findings.append((OK, f"COCO: {len(files)} images in {image_dir} (those with a mapped category are used)"))
        mean = _mean_pixels(files)
        if mean:
            pixels["coco"] = (len(files), mean)
    return findings + (disk_findings(config, pixels, results_dir) if pixels else [])


def store_bytes(config: dict, pixels: dict[str, tuple[int, float]]) -> float:
    """Estimated bytes of the CAM and resegmentation stores (the bulk of results/)."""
    splits = config["dataset"]["splits"]
    cam_splits = {splits["pseudo"], splits["pseudo_eval"], "coco"}
    reseg_splits = {splits["pseudo"], splits["pseudo_eval"]}
    copies = 1 + (config["reseg"]["rounds"] if config["reseg"]["keep_rounds"] else 0)
    per_map = {s: n * mean * MAPS_PER_IMAGE * 4 for s, (n, mean) in pixels.items()}
    return (sum(per_map.get(s, 0) * CAM_RATIO for s in cam_splits)
            + sum(per_map.get(s, 0) * PROB_RATIO * copies for s in reseg_splits))


def disk_findings(config: dict, pixels: dict[str, tuple[int, float]], results_dir) -> list[Finding]:
    need = store_bytes(config, pixels)
    where = Path(results_dir).resolve()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    text = (f"disk: {_gib(free)} free at {where}; the CAM and resegmentation stores need about {_gib(need)} "
            f"(estimate from image counts and sizes, {MAPS_PER_IMAGE:g} maps per image)")
    if free < need:
        return [(FAIL, text)]
    return [(WARN if free < 2 * need else OK, text)]


def render(findings: list[Finding]) -> str:
    fails = sum(level == FAIL for level, _ in findings)
    warns = sum(level == WARN for level, _ in findings)
    lines = [f"{level:<4}  {text}" for level, text in findings]
    lines.append(f"doctor: {fails} blocker(s), {warns} warning(s)")
    return "\n".join(lines)
