"""Resumable training: a preempted or killed training job continues where it stopped and ends with the same
bytes as an uninterrupted run (CPU, same seed).

One state file per training job, at a path the rule passes in, outside Snakemake's outputs (Snakemake
deletes an incomplete output before it reruns a job, never this file). It holds the model, the optimizer,
the position (epochs done, batches done in the current epoch; the poly LR follows from them), the losses so
far and every random generator a step draws from: Python, numpy, torch (CPU and CUDA), and the DataLoader
generator as it was when the epoch began (the epoch's shuffled order is drawn again from it and the batches
already trained are skipped by index, without loading them). The DataLoader workers' own generators are not
saved: the training sets seed each sample's augmentation by (seed, epoch, index) instead.

`locseg.train.fit` writes it atomically after every epoch, every `every_s` seconds inside long epochs, and
at the next step boundary after SIGTERM (what SLURM sends at a time limit or on preemption, ~30 s before
SIGKILL), then stops with `Preempted`. A state is resumed only if its fingerprint (the job's params, its
inputs' sha256, the locseg version) equals the current one; otherwise it is deleted and the log says what
changed. The caller removes it once the job's output is written (`TrainState.remove`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, RandomSampler, Sampler

from locseg import __version__
from locseg.fsutil import atomic_path
from locseg.logs import StageStop
from locseg.store import file_sha256

log = logging.getLogger("locseg")

STATE_FORMAT = "locseg.train_state"
STATE_VERSION = 1
EVERY_S = 600.0  # a killed job (no SIGTERM: node loss, OOM kill) loses at most this much training
# Inputs above this size are fingerprinted by size and mtime, as Snakemake does: hashing a COCO-sized CAM
# store (tens of GB) at every start would cost minutes; a rewritten file gets a new mtime anyway.
HASH_LIMIT = 256 << 20


class Preempted(StageStop):
    """SIGTERM arrived; the state was saved at the step boundary after it."""

    exit_code = 128 + signal.SIGTERM


@dataclass
class Progress:
    """Where training stands: `epoch` epochs done, `batch` batches of the next one, their loss sum so far,
    and the DataLoader generator's state at the start of that epoch."""

    epoch: int = 0
    batch: int = 0
    losses: list[float] = field(default_factory=list)
    running: float = 0.0
    loader_rng: torch.Tensor | None = None


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > HASH_LIMIT:
        return f"size {stat.st_size} mtime_ns {stat.st_mtime_ns}"
    return file_sha256(path)


def input_fingerprint(path) -> str:
    """sha256 of a file, or of a directory's file names and contents (size+mtime above HASH_LIMIT)."""
    path = Path(path)
    if not path.is_dir():
        return _file_fingerprint(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(f"{p.relative_to(path)}\0{_file_fingerprint(p)}\0".encode())
    return h.hexdigest()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _what_changed(old: dict, new: dict) -> str:
    """One short phrase naming what differs between two fingerprints."""
    if old.get("locseg") != new["locseg"]:
        return f"locseg version {old.get('locseg')} -> {new['locseg']}"
    a, b = _flat(old.get("params", {})), _flat(new["params"])
    params = [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    if params:
        return "params changed: " + ", ".join(params)
    a, b = old.get("inputs", {}), new["inputs"]
    inputs = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "inputs changed: " + ", ".join(inputs)


class TrainState:
    """The resumable state of one training job at `path`, valid only for these params and inputs."""

    def __init__(self, path, params: dict, inputs, every_s: float = EVERY_S):
        self.path = Path(path)
        self.every_s = every_s
        self.fingerprint = {
            "locseg": __version__,
            "params": json.loads(json.dumps(params, sort_keys=True)),
            "inputs": {str(p): input_fingerprint(p) for p in inputs},
        }
        self._saved_at = time.monotonic()

    def restore(self, model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator,
                epochs: int) -> Progress:
        """Load a matching saved state into model, optimizer and random generators; Progress() if none."""
        self._saved_at = time.monotonic()
        if not self.path.is_file():
            return Progress()
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            ok = state.get("format") == STATE_FORMAT and state.get("version") == STATE_VERSION
            why = None if ok else "another format or version"
        except Exception as e:  # noqa: BLE001 - torch raises several types for foreign files
            state, why = None, f"unreadable ({e})"
        if why is None:
            old = json.loads(state["fingerprint"])
            why = None if old == self.fingerprint else _what_changed(old, self.fingerprint)
        if why is not None:
            log.info("not resuming from %s: %s; starting fresh", self.path, why)
            self.remove()
            return Progress()
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng = state["rng"]
        random.setstate(rng["python"])
        n = rng["numpy"]
        np.random.set_state({"bit_generator": n["bit_generator"], "has_gauss": n["has_gauss"], "gauss": n["gauss"],
                             "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]}})
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        generator.set_state(rng["loader"])
        at = Progress(state["epoch"], state["batch"], list(state["losses"]), state["running"], rng["loader"])
        log.info("resumed at epoch %d of %d (batch %d of it) from %s", min(at.epoch + 1, epochs), epochs,
                 at.batch, self.path)
        return at

    def due(self) -> bool:
        """Time for a save inside an epoch."""
        return time.monotonic() - self._saved_at >= self.every_s

    def save(self, model: torch.nn.Module, opt: torch.optim.Optimizer, generator: torch.Generator,
             at: Progress) -> None:
        """Write the state atomically (a kill during the write keeps the previous one)."""
        np_state = np.random.get_state(legacy=False)
        state = {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "fingerprint": json.dumps(self.fingerprint, sort_keys=True),
            "epoch": at.epoch,
            "batch": at.batch,
            "losses": list(at.losses),
            "running": at.running,
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": {"bit_generator": np_state["bit_generator"], "has_gauss": np_state["has_gauss"],
                          "gauss": np_state["gauss"], "pos": np_state["state"]["pos"],
                          "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64))},
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                # mid-epoch: the epoch's start, from which its order is drawn again; else the next epoch's
                "loader": at.loader_rng if at.batch else generator.get_state(),
            },
        }
        try:
            self._write(state)
        except FileNotFoundError:  # another job's `remove` took the empty folder between mkdir and open
            self._write(state)
        self._saved_at = time.monotonic()

    def _write(self, state: dict) -> None:
        with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)

    def remove(self) -> None:
        """Drop the state: the job's output is complete (or the state is stale). The folder goes too once no
        other job's state is in it: rmdir refuses a non-empty folder, and a job that saves into it just
        after rmdir (atomic_path made the folder, rmdir took it) writes once more (`save`)."""
        self.path.unlink(missing_ok=True)
        try:
            self.path.parent.rmdir()
        except OSError:  # another job's state (or its .tmp) is there, or the folder is already gone
            pass


class SkipBatches(Sampler):
    """One epoch's shuffled full batches less the first `skip` (trained before a resume). The generator
    draws exactly as a DataLoader with shuffle=True, drop_last=True would, wherever a run was resumed."""

    def __init__(self, data, batch_size: int, generator: torch.Generator, skip: int = 0):
        self.batches = BatchSampler(RandomSampler(data, generator=generator), batch_size, drop_last=True)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(self.batches, self.skip, None)

    def __len__(self) -> int:
        return len(self.batches) - self.skip


class StopOnSigterm:
    """Turns SIGTERM into a flag that the training loop checks at each step boundary (main thread only;
    elsewhere SIGTERM keeps its default action). The previous handler comes back on exit."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self) -> "StopOnSigterm":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> bool:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def ignore_sigterm(worker_id: int) -> None:
    """DataLoader worker init: SLURM signals every process of a job; the workers must keep serving batches
    until the main process reaches its step boundary and saves (it shuts them down itself)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)

