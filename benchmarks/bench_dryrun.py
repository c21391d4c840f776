"""How long a no-op `snakemake -n` takes at VOC + COCO scale, with the data fingerprints on.

Not a test. Every stage's params carry a (path, size, mtime) digest of the dataset files it reads, so a
dry run stats every image and GT mask of the configured splits and walks coco.image_dir. This script
generates a tree of the paper's size (empty files: the fingerprints only stat them), brings the paper
config's DAG up to date without running any stage (each job's script is replaced by one that creates its
outputs, so Snakemake records the same metadata, params included, as a real run), then times
`snakemake -n`, which must print "Nothing to be done", and, in this process, what the fingerprints alone
cost. Wall and CPU seconds are both printed; on a loaded machine only the CPU seconds mean something.

    python benchmarks/bench_dryrun.py                      # 10,582 + 1,449 VOC ids, 118,287 COCO images
    python benchmarks/bench_dryrun.py --coco 20000 --keep /tmp/bench_tree
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from locseg.fingerprint import code_fingerprint, stat_files, stats_fingerprint
from locseg.sources import EXTERNAL, dataset_files

REPO = Path(__file__).resolve().parents[1]

# Runs Snakemake with every `script:` replaced by "create the outputs": an up-to-date DAG in seconds.
_FAKE_RUN = """
import sys
from pathlib import Path
from snakemake.cli import main
import snakemake.workflow

def outputs_only(path, basedir, input, output, params, wildcards, threads, resources, log, config, rulename,
                 conda_env, conda_base_path, container_img, singularity_args, env_modules, bench_record,
                 *args, **kwargs):
    for f in map(Path, output):  # the workflow's directory() outputs are the ones without a suffix
        f.mkdir(parents=True, exist_ok=True) if not f.suffix else f.touch()
    bench_record.running_time = 0.0

snakemake.workflow.script = outputs_only
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


def make_tree(root: Path, train_aug: int, train: int, val: int, coco: int) -> None:
    """VOC layout (train is a subset of train_aug, as in SBD) and a flat COCO image directory."""
    voc = root / "voc"
    for d in ("JPEGImages", "SegmentationClassAug", "ImageSets/Segmentation"):
        (voc / d).mkdir(parents=True)
    trainval = [f"2008_{i:06d}" for i in range(train_aug)]
    val_ids = [f"2011_{i:06d}" for i in range(val)]
    splits = {"train_aug": trainval, "train": trainval[:train], "val": val_ids}
    for name, ids in splits.items():
        (voc / f"ImageSets/Segmentation/{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    for image_id in trainval + val_ids:
        (voc / f"JPEGImages/{image_id}.jpg").touch()
        (voc / f"SegmentationClassAug/{image_id}.png").touch()
    images = root / "coco/train2017"
    images.mkdir(parents=True)
    for i in range(coco):
        (images / f"{i:012d}.jpg").touch()
    (root / "coco/annotations").mkdir()
    (root / "coco/annotations/instances_train2017.json").write_text(
        json.dumps({"images": [], "annotations": [], "categories": []}))


def snakemake_cmd(configs: list[Path], *args: str, fake: bool = False) -> list[str]:
    head = [sys.executable, "-c", _FAKE_RUN] if fake else [sys.executable, "-m", "snakemake"]
    return [*head, "-s", str(REPO / "Snakefile"), "--cores", "2", "--resources", "gpu=1", *args,
            "--configfile", *map(str, configs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-aug", type=int, default=10582)
    ap.add_argument("--train", type=int, default=1464)
    ap.add_argument("--val", type=int, default=1449)
    ap.add_argument("--coco", type=int, default=118287)
    ap.add_argument("--repeat", type=int, default=3, help="dry runs timed; the best is reported")
    ap.add_argument("--keep", type=Path, help="build the tree and workdir here and keep them")
    args = ap.parse_args()

    base = args.keep or Path(tempfile.mkdtemp(prefix="locseg_bench_dryrun_"))
    tree, workdir = base / "data", base / "work"
    configs = [REPO / "config/voc12_coco.yaml", workdir / "bench.yaml"]
    try:
        if not workdir.exists():  # a kept tree and workdir are reused as they are
            build(tree, workdir, configs, args)
        times = [dry_run(workdir, configs) for _ in range(args.repeat)]
        print(f"no-op snakemake -n, best of {args.repeat}: {min(t[0] for t in times):.2f} s wall, "
              f"{min(t[1] for t in times):.2f} s CPU")
        print(f"of which fingerprints (computed once each, in this process): {fingerprint_cpu(configs):.2f} s CPU")
        print(f"cpu count {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)


def fingerprint_cpu(configs: list[Path]) -> float:
    """CPU seconds of what the workflow's data and code params compute: every split's files stat'ed once
    (the DAG caches them per split) and digested per kind, and every script's code fingerprint."""
    config = {}
    for path in configs:
        for key, value in yaml.safe_load(path.read_text()).items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    t0 = time.process_time()
    for split in {*config["dataset"]["splits"].values(), EXTERNAL}:
        files = dataset_files(config, split)
        stats = stat_files(p for paths in files.values() for p in paths)
        for kinds in (["images"], ["masks"], ["images", "masks"]):
            stats_fingerprint({p: stats[p] for kind in kinds for p in files.get(kind, [])})
        stats_fingerprint(stats, contents=False)
    for script in (REPO / "workflow/scripts").glob("*.py"):
        code_fingerprint(script)
    return time.process_time() - t0


def build(tree: Path, workdir: Path, configs: list[Path], args) -> None:
    if not tree.exists():
        t0 = time.perf_counter()
        make_tree(tree, args.train_aug, args.train, args.val, args.coco)
        print(f"tree: {args.train_aug + args.val} VOC ids (image + mask each), {args.coco} COCO images "
              f"in {time.perf_counter() - t0:.1f} s")
    workdir.mkdir()
    configs[-1].write_text(yaml.safe_dump({
        "dataset": {"root": str(tree / "voc")},
        "coco": {"image_dir": str(tree / "coco/train2017"),
                 "annotations": str(tree / "coco/annotations/instances_train2017.json")}}))
    t0 = time.perf_counter()
    proc = subprocess.run(snakemake_cmd(configs, "--quiet", fake=True), cwd=workdir, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"the fake run failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    print(f"fake run (outputs and metadata of every job) in {time.perf_counter() - t0:.1f} s")


def dry_run(workdir: Path, configs: list[Path]) -> tuple[float, float]:
    """(wall, CPU) seconds of one `snakemake -n`, which must find nothing to do."""
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run(snakemake_cmd(configs, "-n"), cwd=workdir, capture_output=True, text=True)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode or "Nothing to be done" not in proc.stdout + proc.stderr:
        sys.exit(f"the dry run planned jobs or failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


if __name__ == "__main__":
    main()
