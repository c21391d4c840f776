"""Which device a job runs on: one GPU per job on a multi-GPU machine, and never a silent CPU run.

Snakemake's `--resources gpu=N` only bounds how many GPU jobs run at once; it gives local jobs no GPU ids,
so without this every job would land on cuda:0. A job claims a GPU by taking an exclusive `flock` on a
lock file named after the GPU's machine-wide identity (its UUID; see `visible_gpus`), so jobs to which a
scheduler such as SLURM gave different GPUs never contend, whatever index those GPUs have inside a job.
The lock lives as long as the process: the OS releases it when the job ends, however it ends (kill -9
included), so no stale lock outlives a crash.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
import warnings
from pathlib import Path

import torch

log = logging.getLogger("locseg.devices")

LOCK_DIR_ENV = "LOCSEG_GPU_LOCK_DIR"  # where the per-GPU lock files live (default: a per-user temp dir)
_claimed: tuple[int, object] | None = None  # (index, open lock file) held by this process until it exits


def cuda_problem() -> str:
    """Why CUDA is unusable, in torch's own words: its CUDA build and what it reports."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        available, count = torch.cuda.is_available(), torch.cuda.device_count()
    build = torch.version.cuda
    said = "; ".join(" ".join(str(w.message).split()) for w in caught)
    return (f"torch {torch.__version__} is {'a CPU-only build' if build is None else f'built for CUDA {build}'} "
            f"and reports torch.cuda.is_available() = {available}, device_count() = {count}"
            + (f" ({said})" if said else "")
            + f"; CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")


def visible_gpus() -> list[str]:
    """Machine-wide names of the GPUs this process sees, in torch's index order: each GPU's UUID when torch
    reports it (a scheduler that hides GPUs may renumber the rest, e.g. SLURM shows every job its GPU as
    0), else the CUDA_VISIBLE_DEVICES entry, else the index."""
    n = torch.cuda.device_count()
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    entries = [e.strip() for e in env.split(",") if e.strip()] if env is not None else []
    names = []
    for i in range(n):
        uuid = getattr(torch.cuda.get_device_properties(i), "uuid", None)
        names.append(str(uuid) if uuid else entries[i] if i < len(entries) else str(i))
    return names


def default_lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / f"locseg-gpu-locks-{os.getuid()}")


def claim_gpu(names: list[str], lock_dir=None, poll_s: float = 2.0) -> int:
    """Index into `names` of a GPU that no other locseg job holds, locked until this process exits (a
    second call in the same process returns the same index). Waits, with a warning, while all are held."""
    global _claimed
    if _claimed is not None:
        return _claimed[0]
    if not names:
        raise ValueError("no GPU to claim")
    lock_dir = Path(lock_dir) if lock_dir else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    warned = False
    while True:
        for i, name in enumerate(names):
            f = open(lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.lock", "a+")  # noqa: SIM115 - held
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            f.truncate(0)
            f.write(f"pid {os.getpid()}\n")
            f.flush()
            _claimed = (i, f)
            return i
        if not warned:
            log.warning("all %d GPUs (%s) are held by other locseg jobs (locks in %s); waiting for one",
                        len(names), ", ".join(names), lock_dir)
            warned = True
        time.sleep(poll_s)


def pick_device(name: str = "auto") -> torch.device:
    """`cpu`; `cuda` / `auto`: a GPU no other locseg job on this machine holds (see the module docstring);
    `cuda:N`: that GPU, unclaimed. `cuda` without a usable CUDA is an error naming what torch reports;
    `auto` then runs on CPU with a WARNING (the GPU rules are meant for a GPU)."""
    if name == "cpu":
        log.info("running on cpu")  # the device line the report reads (locseg/report.py)
        return torch.device("cpu")
    if not torch.cuda.is_available():
        if name == "auto":
            log.warning("device auto: no usable CUDA, running on CPU: %s", cuda_problem())
            log.info("running on cpu")
            return torch.device("cpu")
        raise RuntimeError(f"config asks for device {name!r}, but CUDA is not usable: {cuda_problem()}")
    if name in ("auto", "cuda"):
        names = visible_gpus()
        dev = torch.device("cuda", claim_gpu(names))
        where = f"GPU {names[dev.index]} of this machine"
    else:
        dev = torch.device(name)
        where = "as configured"
    torch.cuda.set_device(dev)
    log.info("running on %s (%s), %s", dev, torch.cuda.get_device_name(dev), where)
    return dev
