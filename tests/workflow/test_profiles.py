"""Profiles: the workstation's GPU cap (profiles/default) never serialises the GPU jobs of a SLURM run.

Snakemake loads profiles/default as the workflow profile whenever no other one is named, so
`--profile profiles/slurm` runs with the workstation's `resources: gpu=1` too. A dry run through the real
command line shows what the scheduler would tally: the spy below reads Snakemake's own per-job scheduler
resources as a cluster executor computes them (a dry run itself always executes locally).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.workflow.conftest import REPO

pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install -e '.[slurm]'")

SPY = """
import json, sys
from snakemake.cli import main
from snakemake.scheduling.job_scheduler import JobScheduler
from snakemake.workflow import Workflow

init, seen = JobScheduler.__init__, {}
plain = lambda resource: getattr(resource, "value", resource)

def spy(self, workflow, *args, **kwargs):
    init(self, workflow, *args, **kwargs)
    gpu_jobs = [job for job in workflow.dag.jobs if job.resources.get("gpu")]
    local_exec = Workflow.local_exec
    Workflow.local_exec = property(lambda wf: False)  # as under a cluster executor
    try:
        for job in gpu_jobs:
            job._scheduler_resources = None
        cluster = [sorted(job._get_scheduler_resources()) for job in gpu_jobs]
    finally:
        Workflow.local_exec = local_exec
    for job in gpu_jobs:
        job._scheduler_resources = None
    seen.update(cap=plain(workflow.global_resources.get("gpu")), gpu_jobs=len(gpu_jobs),
                threads={job.rule.name: plain(job.rule.resources["_cores"]) for job in workflow.dag.jobs},
                executor=workflow.executor_plugin.name if workflow.executor_plugin else None,
                cluster=cluster, local=[sorted(job._get_scheduler_resources()) for job in gpu_jobs],
                retries={job.rule.name: job.rule.restart_times for job in workflow.dag.jobs})

JobScheduler.__init__ = spy
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("SPY " + json.dumps(seen))
"""


def scheduled_resources(workdir, *profile_args: str, overrides: dict | None = None) -> dict:
    configs = [str(REPO / "config" / "config.yaml"), str(REPO / "config" / "tiny.yaml")]
    if overrides:
        (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        configs.append(str(workdir / "overrides.yaml"))
    proc = subprocess.run([sys.executable, "-c", SPY, "-s", str(REPO / "Snakefile"), "-n", "--quiet", "all",
                           *profile_args, "--configfile", *configs], cwd=workdir, capture_output=True, text=True)
    line = [s for s in proc.stdout.splitlines() if s.startswith("SPY ")]
    assert line, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(line[-1][4:])


def test_workstation_caps_gpu_jobs(tmp_path):
    seen = scheduled_resources(tmp_path, "--cores", "2")  # profiles/default, found next to the Snakefile
    assert seen["cap"] == 1 and seen["gpu_jobs"] == 12
    assert all("gpu" in r for r in seen["local"])


def test_cpu_runs_ask_for_no_gpu(tmp_path):
    """device: cpu: no job counts against the one-GPU cap, so CPU jobs are not run one at a time."""
    seen = scheduled_resources(tmp_path, "--cores", "2", overrides={"device": "cpu"})
    assert seen["cap"] == 1 and seen["gpu_jobs"] == 0


@pytest.mark.parametrize("profile_args", [["--profile", "profiles/slurm"], ["--workflow-profile", "profiles/slurm"]],
                         ids=["profile", "workflow-profile"])
def test_slurm_profile_never_serialises_gpu_jobs(tmp_path, profile_args):
    (tmp_path / "profiles").symlink_to(REPO / "profiles")
    seen = scheduled_resources(tmp_path, *profile_args, overrides={"num_workers": 3, "inference": {"workers": 2}})
    assert seen["gpu_jobs"] == 12
    # Whatever cap a workflow profile left on, a cluster run does not count GPUs across jobs.
    assert not any("gpu" in r for r in seen["cluster"]), seen["cluster"]
    # A job's cores (SLURM: --cpus-per-task) hold its DataLoader workers.
    assert seen["threads"]["train_cam"] == seen["threads"]["train_deeplab"] == 2 + 3
    assert seen["threads"]["extract_cams"] == seen["threads"]["resegment"] == 1 + 2


def test_slurm_profile_resubmits_only_the_resumable_training_rules(tmp_path):
    """Snakemake cannot tell a time limit from a bug: only the rules that resume are resubmitted, every
    other failure is reported at once (tests/workflow/test_slurm.py measures both on a real SLURM)."""
    (tmp_path / "profiles").symlink_to(REPO / "profiles")
    retries = scheduled_resources(tmp_path, "--workflow-profile", "profiles/slurm")["retries"]
    training = {"train_cam", "train_segmenter", "train_deeplab"}
    assert {rule for rule, n in retries.items() if n} == training
    assert all(retries[rule] == 3 for rule in training)
