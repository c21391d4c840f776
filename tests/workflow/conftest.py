"""Run the real Snakemake DAG on tiny demo data in a temporary working directory."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]


def snakemake_cmd(workdir: Path, *args: str, overrides: dict | None = None, repo: Path = REPO) -> list[str]:
    """The command line of `snakemake` (below), for tests that start it with Popen."""
    configs = [str(repo / "config" / "config.yaml"), str(repo / "config" / "tiny.yaml")]
    if overrides:
        extra = workdir / f"override_{abs(hash(repr(overrides)))}.yaml"
        extra.write_text(yaml.safe_dump(overrides))
        configs.append(str(extra))
    # --configfile takes every following word: targets and flags must come before it.
    return [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--cores", "2", *args,
            "--configfile", *configs]


def snakemake(workdir: Path, *args: str, overrides: dict | None = None, check: bool = True, repo: Path = REPO):
    """`snakemake` on the repo's Snakefile (or a copy's) with the default + tiny configs (+ overrides) in
    `workdir`."""
    cmd = snakemake_cmd(workdir, *args, overrides=overrides, repo=repo)
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def planned_jobs(workdir: Path, overrides: dict | None = None, *args: str, repo: Path = REPO) -> dict[str, int]:
    """Rule -> job count of a dry run (parsed from Snakemake's 'Job stats' table). `args` (targets, flags)
    go before `--quiet rules`, whose nargs would swallow a target."""
    proc = snakemake(workdir, *args, "-n", "--quiet", "rules", overrides=overrides, repo=repo)
    out = proc.stdout + proc.stderr
    jobs, in_table = {}, False
    for line in out.splitlines():
        parts = line.split()
        if parts[:2] == ["job", "count"]:
            in_table = True
            continue
        if in_table and len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "total":
                break
            jobs[parts[0]] = int(parts[1])
    return jobs


def copy_run(src: Path, dst: Path) -> Path:
    """A copy of a run's working directory, mtimes kept (so it is as up to date as `src`)."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    return dst


def same_checkpoint(path, reference) -> bool:
    """Byte-identical; if not, fail naming what differs (a byte diff of a checkpoint would take pytest ages)."""
    if path.read_bytes() == reference.read_bytes():
        return True
    a, b = (torch.load(p, weights_only=True) for p in (path, reference))
    tensors = [k for k in b["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    meta = {k: (a["meta"].get(k), v) for k, v in b["meta"].items() if a["meta"].get(k) != v}
    raise AssertionError(f"{path} differs from the uninterrupted {reference}: tensors {tensors[:5]} "
                         f"({len(tensors)} of {len(b['state_dict'])}), meta {meta}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One full run of the tiny demo DAG, shared by the end-to-end tests (they must not modify it)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    snakemake(workdir)
    return workdir


def stored_maps(workdir: Path, split: str, stage: str = "cams") -> dict[str, tuple]:
    """image id -> (maps, classes) of every shard of one store stage, read with plain h5py."""
    maps = {}
    for path in sorted((workdir / f"results/{stage}/{split}").glob("*.h5")):
        with h5py.File(path, "r") as f:
            for image_id in f:
                if not image_id.startswith("_"):
                    maps[image_id] = (f[image_id]["maps"][()], f[image_id]["classes"][()])
    return maps


@pytest.fixture()
def tiny_copy(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run (mtimes kept, so it is up to date) that a test may modify."""
    copy = tmp_path / "tiny_copy"
    shutil.copytree(tiny_run, copy, symlinks=True)
    return copy
