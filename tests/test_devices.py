"""One GPU per job (flock on a per-GPU lock file, freed by the OS however a job dies) and no silent CPU run.

There is no GPU here: the device list is faked (names passed to claim_gpu, or torch.cuda patched), and the
jobs are real concurrent processes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import locseg
from locseg import devices
from locseg.cam import extract_cams, train_cam
from locseg.devices import claim_gpu, pick_device, visible_gpus
from locseg.reseg import resegment

CHILD = """
import pathlib, sys, time
from locseg.devices import claim_gpu
i = claim_gpu(sys.argv[2].split(","), sys.argv[1], poll_s=0.05)
print(i, flush=True)
while not pathlib.Path(sys.argv[1], "release").exists():
    time.sleep(0.05)
"""


def _job(lock_dir: Path, names: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(locseg.__file__).parents[1])}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(lock_dir), names], stdout=subprocess.PIPE, text=True,
                            env=env)


def _claimed(job: subprocess.Popen, timeout_s: float = 60) -> int:
    """The GPU index the job printed once it held the lock (fails rather than hangs if it never does)."""
    ready, _, _ = select.select([job.stdout], [], [], timeout_s)
    assert ready, f"job {job.pid} claimed no GPU within {timeout_s} s"
    return int(job.stdout.readline())


def test_concurrent_jobs_get_distinct_gpus_and_a_killed_jobs_gpu_is_free_again(tmp_path):
    jobs = [_job(tmp_path, "0,1,2") for _ in range(3)]
    try:
        got = [_claimed(j) for j in jobs]
        assert sorted(got) == [0, 1, 2]  # no two jobs on one GPU
        waiting = _job(tmp_path, "0,1,2")  # a 4th job: every GPU is held, it waits
        jobs.append(waiting)
        time.sleep(2)
        assert waiting.poll() is None
        victim = jobs[got.index(1)]
        os.kill(victim.pid, signal.SIGKILL)  # no cleanup code runs: the OS drops the lock
        victim.wait()
        assert _claimed(waiting) == 1
    finally:
        (tmp_path / "release").touch()
        for j in jobs:
            try:
                j.wait(timeout=30)
            except subprocess.TimeoutExpired:
                j.kill()


def test_claim_is_once_per_process(tmp_path, monkeypatch):
    monkeypatch.setattr(devices, "_claimed", None)
    assert claim_gpu(["a", "b"], tmp_path) == 0
    assert claim_gpu(["a", "b"], tmp_path) == 0  # a second stage in the same process keeps its GPU
    devices._claimed[1].close()


class _Props:
    def __init__(self, uuid):
        self.uuid = uuid


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """torch reports two GPUs; the scheduler made physical GPUs 3 and 5 visible."""
    monkeypatch.setattr(devices, "_claimed", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda dev: None)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Props(None))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    monkeypatch.setenv(devices.LOCK_DIR_ENV, str(tmp_path))
    yield tmp_path
    if devices._claimed is not None:
        devices._claimed[1].close()


def test_pick_device_skips_a_gpu_another_job_holds_and_names_physical_gpus(fake_cuda, caplog):
    assert visible_gpus() == ["3", "5"]
    with open(fake_cuda / "gpu-3.lock", "a+") as other:  # another job holds physical GPU 3
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with caplog.at_level(logging.INFO, logger="locseg.devices"):
            assert pick_device("cuda") == torch.device("cuda", 1)
    assert "GPU 5 of this machine" in caplog.text
    assert pick_device("auto") == torch.device("cuda", 1)


def test_gpus_are_named_by_uuid_when_torch_knows_it(fake_cuda, monkeypatch):
    """SLURM with constrained devices shows each job its own GPU as 0: the UUID tells them apart."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: _Props("GPU-1234-abcd"))
    assert visible_gpus() == ["GPU-1234-abcd"]
    with open(fake_cuda / "gpu-0.lock", "a+") as other:  # a job on another physical GPU, also "0" to it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert pick_device("cuda") == torch.device("cuda", 0)
    assert (fake_cuda / "gpu-GPU-1234-abcd.lock").read_text() == f"pid {os.getpid()}\n"


def test_cuda_without_cuda_names_torch_build_and_what_it_reports(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(RuntimeError, match=r"device 'cuda'.*CPU-only build.*is_available\(\) = False"):
        pick_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(RuntimeError, match=r"device 'cuda:1'.*built for CUDA 12\.4.*device_count\(\) = "):
        pick_device("cuda:1")


def test_auto_without_cuda_warns(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="locseg.devices"):
        assert pick_device("auto") == torch.device("cpu")
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "running on CPU" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="locseg.devices"):
        assert pick_device("cpu") == torch.device("cpu")
    assert [(r.levelname, r.message) for r in caplog.records] == [("INFO", "running on cpu")]  # no warning


@pytest.mark.parametrize("stage", ["extract_cams", "resegment", "train_cam"])
def test_cuda_without_cuda_fails_before_any_work(stage, tmp_path, monkeypatch):
    """The checkpoint, images and stores do not even exist: the device check must come first."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "out.h5"
    run = {
        "extract_cams": lambda: extract_cams(tmp_path / "no.pt", {}, {}, ["a"], ["background", "x"], out,
                                             device="cuda"),
        "resegment": lambda: resegment(tmp_path / "no.pt", tmp_path / "no.h5", {}, ["background", "x"], out,
                                       device="cuda"),
        "train_cam": lambda: train_cam({}, {}, ["background", "x"], out, device="cuda"),
    }[stage]
    with pytest.raises(RuntimeError, match="CUDA is not usable: torch"):
        run()
    assert not out.exists()


def test_pick_device_cpu_auto_and_missing_cuda(monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="cuda"):
        pick_device("cuda")
    with pytest.raises(RuntimeError, match="cuda"):
        pick_device("cuda:1")
