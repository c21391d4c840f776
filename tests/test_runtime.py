"""Tests for seeding, device choice, threads and progress (locseg/runtime.py)."""

from __future__ import annotations

import random

import numpy as np
import torch

from locseg.runtime import progress, seed_everything, set_threads


def test_seed_everything_repeatable():
    g1 = seed_everything(11)
    a = (random.random(), np.random.rand(), torch.rand(3), torch.randperm(10, generator=g1))
    g2 = seed_everything(11)
    b = (random.random(), np.random.rand(), torch.rand(3), torch.randperm(10, generator=g2))
    assert a[0] == b[0] and a[1] == b[1]
    assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])
    assert isinstance(g1, torch.Generator)
    seed_everything(12)
    assert not torch.equal(torch.rand(3), a[2])


def test_seed_everything_generators_differ_between_seeds():
    orders = {tuple(torch.randperm(20, generator=seed_everything(s)).tolist()) for s in range(3)}
    assert len(orders) == 3


def test_progress_writes_lines_when_not_a_tty(capsys):
    bar = progress(range(3), desc="work")
    assert list(bar) == [0, 1, 2]
    err = capsys.readouterr().err
    assert "work" in err and "\r" not in err
    assert err.strip().splitlines()[-1].startswith("work")


def test_set_threads_fits_workers_into_the_job():
    before = torch.get_num_threads()
    try:
        assert set_threads(6, 4) == 4 and torch.get_num_threads() == 2  # SLURM: --cpus-per-task 6
        assert set_threads(2, 4) == 1 and torch.get_num_threads() == 1  # scaled down by a local --cores 2
        assert set_threads(2, 0) == 0 and torch.get_num_threads() == 2
        assert set_threads(None, 3) == 3  # outside Snakemake: as asked
    finally:
        torch.set_num_threads(before)
