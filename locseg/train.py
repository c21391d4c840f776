"""The one training loop (fit) with its optimizer and LR schedule; resumable through locseg.resume."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import DataLoader

from locseg.resume import Preempted, Progress, SkipBatches, StopOnSigterm, TrainState, ignore_sigterm
from locseg.runtime import autocast, progress

log = logging.getLogger("locseg")


def poly_lr(base_lr: float, step: int, total: int, power: float = 0.9) -> float:
    return base_lr * (1 - step / max(total, 1)) ** power


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """SGD with momentum (the papers' choice for pretrained ResNets) or AdamW (Adam with decoupled weight
    decay: the from-scratch demo nets, and the paper's segmenter recipe)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose sgd or adamw")


def fit(model: torch.nn.Module, data, loss_fn, *, device: torch.device, generator: torch.Generator,
        desc: str, batch_size: int = 8, epochs: int = 10, optimizer: str = "adamw", lr: float = 1e-3,
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
                if stop.requested and at.batch < per_epoch:
                    break  # after an epoch's last step the loader must run out: its sampler draws once more
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
