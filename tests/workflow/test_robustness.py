"""Determinism and crash safety of the real DAG: same seed -> same bytes; kill -9 or SIGTERM -> the rerun
resumes training and ends with the same bytes."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.workflow.conftest import copy_run, same_checkpoint, snakemake, snakemake_cmd

pytestmark = pytest.mark.slow


def _digests(workdir) -> dict[str, str]:
    """sha256 of every pseudo mask and every metrics JSON of a run."""
    files = sorted((workdir / "results/masks").rglob("*.png")) + sorted((workdir / "results/eval").glob("*.json"))
    return {str(p.relative_to(workdir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_two_runs_with_one_seed_are_byte_identical(tiny_run, tmp_path):
    snakemake(tmp_path)
    first, second = _digests(tiny_run), _digests(tmp_path)
    assert first and first == second


LONGER = {"segmenter": {"epochs": 6}}  # long enough to interrupt between its first saved epoch and its end
SEGMENTER = "results/models/segmenter.pt"
STATE = "results/resume/train_segmenter.pt"
SEG_LOG = "results/logs/train_segmenter.log"


@pytest.fixture(scope="module")
def before_segmenter(tmp_path_factory) -> Path:
    """A run of everything train_segmenter needs, copied by each test that interrupts the segmenter."""
    workdir = tmp_path_factory.mktemp("before_segmenter")
    snakemake(workdir, SEGMENTER, "--omit-from", "train_segmenter", overrides=LONGER)
    return workdir


@pytest.fixture(scope="module")
def clean_segmenter(before_segmenter, tmp_path_factory) -> Path:
    """The segmenter checkpoint of an uninterrupted run."""
    workdir = copy_run(before_segmenter, tmp_path_factory.mktemp("clean"))
    snakemake(workdir, SEGMENTER, overrides=LONGER)
    return workdir / SEGMENTER


def _interrupt(workdir: Path, sig: int) -> tuple[int, float]:
    """Start the segmenter's training and send `sig` to the whole job tree (as SLURM does) once it has saved
    an epoch. Returns Snakemake's exit code and the seconds it took to exit after the signal."""
    proc = subprocess.Popen(snakemake_cmd(workdir, SEGMENTER, overrides=LONGER), cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None and not (workdir / STATE).is_file():
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        assert "epoch 6/6" not in (workdir / SEG_LOG).read_text(), "training ended before the signal"
        sent = time.monotonic()
        os.killpg(proc.pid, sig)
        proc.wait(timeout=120)
        return proc.returncode, time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _epochs(log: str) -> list[int]:
    return [int(k) for k in re.findall(r"INFO epoch (\d+)/6 ", log)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_interrupted_training_resumes_to_thesame_checkpoint(before_segmenter, clean_segmenter, tmp_path, sig):
    """Killed (or preempted) after >= 1 saved epoch, the rerun resumes, trains only the remaining epochs and
    writes the uninterrupted run's bytes; nothing is left behind."""
    workdir = copy_run(before_segmenter, tmp_path)
    code, seconds = _interrupt(workdir, sig)
    assert not (workdir / SEGMENTER).exists() and (workdir / STATE).is_file()
    if sig == signal.SIGTERM:
        assert code != 0 and seconds < 30, (code, seconds)
        log = (workdir / SEG_LOG).read_text()
        assert "stopped by SIGTERM" in log.splitlines()[-1] and "Traceback" not in log
    snakemake(workdir, "--unlock", overrides=LONGER)
    snakemake(workdir, SEGMENTER, overrides=LONGER)
    log = (workdir / SEG_LOG).read_text()
    resumed = re.search(r"resumed at epoch (\d+) of 6", log)
    assert resumed and int(resumed.group(1)) >= 2, log
    assert _epochs(log) == list(range(int(resumed.group(1)), 7))
    assert same_checkpoint(workdir / SEGMENTER, clean_segmenter)
    assert not (workdir / STATE).exists()
    assert not list(workdir.glob("results/**/*.tmp"))


def test_changed_param_after_a_kill_starts_fresh(before_segmenter, tmp_path):
    workdir = copy_run(before_segmenter, tmp_path)
    _interrupt(workdir, signal.SIGKILL)
    snakemake(workdir, "--unlock", overrides=LONGER)
    snakemake(workdir, SEGMENTER, overrides={"segmenter": {"epochs": 6, "lr": 0.001}})
    log = (workdir / SEG_LOG).read_text()
    assert f"not resuming from {STATE}: params changed: train.lr 0.002 -> 0.001; starting fresh" in log
    assert "resumed" not in log and _epochs(log) == list(range(1, 7))


def test_full_disk_ends_the_job_with_one_line_and_leaves_nothing(before_segmenter, tmp_path, small_fs):
    """extract_cams writing its store onto a 32 KB filesystem: the job fails, its log ends with which path
    ran out of space and how much it needs (no h5py traceback wall), and no temporary is left on the disk."""
    workdir = copy_run(before_segmenter, tmp_path)
    disk = small_fs(workdir / "results/cams/coco", "32k")  # hides the stores there: the job reruns
    target = "results/cams/coco/000.h5"
    proc = snakemake(workdir, target, overrides=LONGER, check=False)
    assert proc.returncode != 0
    log = (workdir / "results/logs/extract_cams/coco/000.log").read_text()
    assert f"ERROR no space left on device writing {target}: it needs " in log.splitlines()[-1], log[-3000:]
    assert "Traceback" not in log and "dealloc" not in log
    assert list(disk.iterdir()) == []
