"""Tests for the training loop, optimizer and LR schedule (locseg/train.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from locseg import train as tr
from locseg.train import make_optimizer, poly_lr


def test_poly_lr():
    assert poly_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 100, 100) == pytest.approx(0.0)
    assert poly_lr(1.0, 3, 4, power=1.0) == pytest.approx(0.25)
    assert poly_lr(0.5, 0, 0) == pytest.approx(0.5)  # no division by zero


def test_make_optimizer():
    params = list(nn.Conv2d(3, 4, 3).parameters())
    sgd = make_optimizer("sgd", params, 0.01, 1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    adam = make_optimizer("adamw", params, 0.001, 0.0)
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["lr"] == 0.001
    with pytest.raises(ValueError, match="'adam'; choose sgd or adamw"):
        make_optimizer("adam", params, 0.1, 0.0)  # the name says what it is
    with pytest.raises(ValueError, match="rmsprop"):
        make_optimizer("rmsprop", params, 0.1, 0.0)


class _Recorder(torch.utils.data.Dataset):
    """Records which sample each step sees, and the epoch its augmentation is seeded by."""

    def __init__(self, n=8):
        self.n, self.epoch, self.seen = n, 0, []

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        self.seen.append((self.epoch, index))
        return torch.full((1,), float(index)), torch.zeros(1)


def _run_fit(generator, epochs=3):
    data = _Recorder()
    model = nn.Linear(1, 1)
    tr.fit(model, data, lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), device=torch.device("cpu"),
           generator=generator, desc="t", batch_size=4, epochs=epochs)
    return data.seen


def test_fit_shuffles_with_the_given_generator():
    torch.manual_seed(123)  # the same global state each time: only the generator may change the order
    a = _run_fit(torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    b = _run_fit(torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    c = _run_fit(torch.Generator().manual_seed(1))
    assert a == b
    assert [i for _, i in a] != [i for _, i in c]
    assert sorted(i for e, i in a if e == 0) == list(range(8))  # every sample once per epoch


def test_fit_sets_the_epoch_before_each_epoch():
    seen = _run_fit(torch.Generator().manual_seed(0), epochs=3)
    assert [e for e, _ in seen] == [0] * 8 + [1] * 8 + [2] * 8


def test_fit_steps_the_optimizer_and_learns():
    """y = 3x on a few points: the loss must fall by orders of magnitude (an optimizer that never steps,
    or a zeroed learning rate, leaves it where it started)."""
    class Line(torch.utils.data.Dataset):
        epoch = 0

        def __len__(self):
            return 8

        def __getitem__(self, i):
            x = torch.tensor([i / 8.0])
            return x, 3 * x

    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    losses = tr.fit(model, Line(), lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(), device=torch.device("cpu"),
                    generator=torch.Generator().manual_seed(0), desc="line", batch_size=4, epochs=200, lr=0.05)
    assert losses[-1] < 1e-2 * losses[0], (losses[0], losses[-1])
    assert model.weight.item() == pytest.approx(3.0, abs=0.3)
