"""Pieces every training and inference stage shares: seeding, device, checkpoints, progress, LR."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from locseg import __version__
from locseg.fsutil import atomic_path
from locseg.resume import Preempted, Progress, SkipBatches, StopOnSigterm, TrainState, ignore_sigterm

log = logging.getLogger("locseg")

CHECKPOINT_FORMAT = "locseg.checkpoint"
CHECKPOINT_VERSION = 1


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, numpy and torch; make CPU kernels deterministic. Returns a torch generator."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    return torch.Generator().manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("config asks for device 'cuda' but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (fast, no loss scaling needed); plain fp32 on CPU so results stay exact."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def config_hash(obj) -> str:
    """Short stable hash of a JSON-able config section, recorded in checkpoints and stores."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def save_checkpoint(path, model: torch.nn.Module, kind: str, meta: dict) -> None:
    """State dict plus plain metadata, loadable with weights_only=True; written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "locseg_version": __version__,
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    size = sum(v.nbytes for v in payload["state_dict"].values())
    with atomic_path(path, needs=lambda written: max(size, written)) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)


def load_checkpoint(path, kind: str, class_names: list[str] | None = None) -> dict:
    """Load a locseg checkpoint, refusing other formats, kinds, versions or class lists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a locseg checkpoint (no format={CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {payload.get('version')}, this locseg reads {CHECKPOINT_VERSION}"
        )
    if payload.get("kind") != kind:
        raise ValueError(f"{path}: a {payload.get('kind')!r} checkpoint where a {kind!r} one is expected")
    found = payload["meta"].get("class_names")
    if class_names is not None and found != list(class_names):
        raise ValueError(f"{path}: trained for classes {found}, config has {list(class_names)}")
    return payload


def load_weights_file(path, what: str) -> dict:
    """A user-supplied pretrained state dict (never downloaded). Accepts {'state_dict': ...} wrappers."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: {what} weights must be a state dict, found {type(state).__name__}")
    return state


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    return base_lr * (1 - step / max(total, 1)) ** power


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


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' choice for pretrained ResNets) or Adam (from-scratch demo nets)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adam")


def fit(model: torch.nn.Module, data, loss_fn, *, device: torch.device, generator: torch.Generator,
        desc: str, batch_size: int = 8, epochs: int = 10, optimizer: str = "adam", lr: float = 1e-3,
        weight_decay: float = 1e-4, num_workers: int = 0, tensorboard_dir=None,
        resume: TrainState | None = None) -> list[float]:
    """The one training loop: shuffled batches (seeded), poly LR, autocast on CUDA, progress and a log
    line per epoch. `data` has an `epoch` attribute (its augmentation is seeded by it); `loss_fn(model,
    batch)` takes the batch already on `device` and returns the scalar loss. Returns the mean loss per epoch.

    With `resume` (see locseg/resume.py) training continues from a matching saved state, saves one after
    every epoch (and every `resume.every_s` inside an epoch), and on SIGTERM saves at the next step boundary
    and raises `Preempted`."""
    if len(data) < 2:
        raise ValueError(f"{desc} needs at least 2 training samples, found {len(data)}")
    batch_size = min(batch_size, len(data))
    per_epoch = len(data) // batch_size  # full batches only (drop_last)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    total = epochs * per_epoch
    at = resume.restore(model, opt, generator, epochs) if resume else Progress()
    log.info("%s: %d samples, %d steps on %s", desc, len(data), total, device)
    board = _tensorboard(tensorboard_dir)
    with progress(total=total, initial=at.epoch * per_epoch + at.batch, desc=desc) as bar, \
            StopOnSigterm() as stop:
        for epoch in range(at.epoch, epochs):
            data.epoch = epoch
            at.loader_rng = generator.get_state()
            loader = DataLoader(data, batch_sampler=SkipBatches(data, batch_size, generator, at.batch),
                                num_workers=num_workers, generator=generator, worker_init_fn=ignore_sigterm)
            model.train()
            for batch in loader:
                step = epoch * per_epoch + at.batch
                for group in opt.param_groups:
                    group["lr"] = poly_lr(lr, step, total)
                batch = [x.to(device) for x in batch]
                with autocast(device):
                    loss = loss_fn(model, batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                at.running += loss.item()
                at.batch += 1
                if board is not None:
                    board.add_scalar("loss", loss.item(), step)
                    board.add_scalar("lr", opt.param_groups[0]["lr"], step)
                bar.update()
                if resume and at.batch < per_epoch and (stop.requested or resume.due()):
                    resume.save(model, opt, generator, at)
                if stop.requested:
                    break
            if at.batch == per_epoch:
                at.losses.append(at.running / per_epoch)
                at.epoch, at.batch, at.running = epoch + 1, 0, 0.0
                bar.set_postfix(loss=f"{at.losses[-1]:.4f}")
                log.info("epoch %d/%d loss %.4f", epoch + 1, epochs, at.losses[-1])
                if resume:
                    resume.save(model, opt, generator, at)
            if stop.requested:
                where = f"state saved to {resume.path}, a rerun resumes" if resume else "no resumable state"
                raise Preempted(f"{desc} stopped by SIGTERM at epoch {at.epoch + 1} of {epochs}, batch "
                                f"{at.batch}: {where}")
    if board is not None:
        board.close()
    return at.losses


def _tensorboard(log_dir):
    """Loss and LR per step for TensorBoard, as the paper's code logged them; optional (needs `tensorboard`)."""
    if log_dir is None:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
        return None
    return SummaryWriter(str(log_dir))
