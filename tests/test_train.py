"""Tests for the shared training pieces (locseg/train.py)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from locseg import train as tr
from locseg.train import (
    load_checkpoint,
    load_weights_file,
    make_optimizer,
    pick_device,
    poly_lr,
    progress,
    save_checkpoint,
    seed_everything,
    set_threads,
)

NAMES = ["background", "ant", "bat"]


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


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


def test_pick_device(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="cuda"):
        pick_device("cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        pick_device("cuda:1")


def test_checkpoint_round_trip(tmp_path):
    model = _model()
    path = tmp_path / "sub" / "m.pt"
    save_checkpoint(path, model, "cam", {"class_names": NAMES, "epochs": 3})
    assert path.is_file() and not path.with_name("m.pt.tmp").exists()
    raw = torch.load(path, weights_only=True)  # plain, safe payload
    assert raw["format"] == tr.CHECKPOINT_FORMAT and raw["version"] == tr.CHECKPOINT_VERSION
    payload = load_checkpoint(path, "cam", NAMES)
    assert payload["meta"]["epochs"] == 3
    fresh = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    fresh.load_state_dict(payload["state_dict"])
    for k, v in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert load_checkpoint(path, "cam")["kind"] == "cam"  # no class check asked


def test_checkpoint_wrong_kind(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(), "cam", {"class_names": NAMES})
    with pytest.raises(ValueError, match="'cam'.*'segmenter'"):
        load_checkpoint(path, "segmenter", NAMES)


def test_checkpoint_wrong_classes_names_both(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, _model(), "deeplab", {"class_names": NAMES})
    other = ["background", "ant", "cow"]
    with pytest.raises(ValueError) as e:
        load_checkpoint(path, "deeplab", other)
    msg = str(e.value)
    assert str(NAMES) in msg and str(other) in msg and str(path) in msg


def test_checkpoint_foreign_files(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(ValueError, match="junk.pt"):
        load_checkpoint(junk, "cam")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="not a locseg checkpoint"):
        load_checkpoint(tensor, "cam")
    sd = tmp_path / "sd.pt"
    torch.save(_model().state_dict(), sd)
    with pytest.raises(ValueError, match="not a locseg checkpoint"):
        load_checkpoint(sd, "cam")
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        load_checkpoint(tmp_path / "absent.pt", "cam")


def test_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"format": tr.CHECKPOINT_FORMAT, "obj": _model()}, path)  # a whole module: needs pickle
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(path, "cam")


def test_checkpoint_other_version(tmp_path, monkeypatch):
    path = tmp_path / "m.pt"
    monkeypatch.setattr(tr, "CHECKPOINT_VERSION", 99)
    save_checkpoint(path, _model(), "cam", {"class_names": NAMES})
    monkeypatch.setattr(tr, "CHECKPOINT_VERSION", 1)
    with pytest.raises(ValueError, match="version 99"):
        load_checkpoint(path, "cam", NAMES)


def test_load_weights_file(tmp_path):
    sd = _model().state_dict()
    plain, wrapped, tensor = tmp_path / "plain.pth", tmp_path / "wrapped.pth", tmp_path / "tensor.pth"
    torch.save(sd, plain)
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    torch.save(torch.ones(2), tensor)
    for p in (plain, wrapped):
        got = load_weights_file(p, "test")
        assert set(got) == set(sd)
        assert torch.equal(got["0.weight"], sd["0.weight"])
    with pytest.raises(ValueError, match="tensor.pth.*state dict"):
        load_weights_file(tensor, "test")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_weights_file(tmp_path / "missing.pth", "test")


def test_poly_lr():
    assert poly_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 100, 100) == pytest.approx(0.0)
    assert poly_lr(1.0, 3, 4, power=1.0) == pytest.approx(0.25)
    assert poly_lr(0.5, 0, 0) == pytest.approx(0.5)  # no division by zero


def test_make_optimizer():
    params = list(_model().parameters())
    sgd = make_optimizer("sgd", params, 0.01, 1e-4)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 1e-4
    adam = make_optimizer("adam", params, 0.001, 0.0)
    assert isinstance(adam, torch.optim.AdamW) and adam.defaults["lr"] == 0.001
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


def test_seed_everything_generators_differ_between_seeds():
    orders = {tuple(torch.randperm(20, generator=seed_everything(s)).tolist()) for s in range(3)}
    assert len(orders) == 3


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
