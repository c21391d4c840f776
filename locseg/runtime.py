"""Where and how a job computes: seeding, device choice, autocast and memory format, threads, progress."""

from __future__ import annotations

import logging
import os
import random
import sys

import numpy as np
import torch
from tqdm import tqdm


log = logging.getLogger("locseg")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; make CPU kernels deterministic. Returns a torch generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fast, no loss scaling needed); plain fp32 on CPU so results stay exact."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


class _LineWriter:
    """Turns tqdm's carriage-return updates into plain lines, so a log file stays readable."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.strip("\r\n")
        if s:
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress(iterable=None, desc: str = "", total: int | None = None, **kw):
    """tqdm on a terminal; on a log file, one line every 20 s (and at the end)."""
    tty = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        file=sys.stderr if tty else _LineWriter(sys.stderr),
        mininterval=0.1 if tty else 20.0,
        ascii=not tty,
        dynamic_ncols=tty,
        **kw,
    )


def set_threads(n: int | None, workers: int = 0) -> int:
    """Use the threads Snakemake gave the job, no more (two jobs must not fight for two cores; on SLURM they
    are the job's --cpus-per-task): one per DataLoader worker, the rest (at least one) for the model.
    Returns the workers that fit, fewer than asked when the job got fewer cores (a local --cores cap, a
    profile's set-threads); results never depend on the worker count."""
    if not n:
        return workers
    n = int(n)
    fit = min(workers, n - 1)
    if fit < workers:
        log.warning("%d DataLoader workers do not fit the job's %d threads: using %d", workers, n, fit)
    torch.set_num_threads(n - fit)
    os.environ.setdefault("OMP_NUM_THREADS", str(n - fit))
    return fit
