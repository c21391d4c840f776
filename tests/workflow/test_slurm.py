"""The tiny demo DAG through a real (single-node) SLURM with profiles/slurm: same bytes as a local run.

Opt-in, because it installs Debian packages and writes /etc/slurm: set LOCSEG_TEST_SLURM=1. Needs root and
apt-get (Debian/Ubuntu) to install and start SLURM, and snakemake-executor-plugin-slurm; skips with the
reason otherwise. Run alone with: LOCSEG_TEST_SLURM=1 python -m pytest tests/workflow/test_slurm.py -s
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import yaml

from tests.workflow.conftest import REPO, copy_run, same_checkpoint, snakemake
from tests.workflow.slurm import preflight, slurm_node  # noqa: F401  (pytest fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
if os.environ.get("LOCSEG_TEST_SLURM") != "1":
    pytest.skip("opt-in: set LOCSEG_TEST_SLURM=1 (installs SLURM from Debian packages as root)",
                allow_module_level=True)
pytest.importorskip("snakemake_executor_plugin_slurm", reason="pip install snakemake-executor-plugin-slurm")
if _reason := preflight():  # before the session's local tiny run is built for nothing
    pytest.skip(f"no single-node SLURM: {_reason}", allow_module_level=True)

PROFILE = REPO / "profiles" / "slurm"
GPU_RULES = {"train_cam", "extract_cams", "train_segmenter", "resegment", "train_deeplab", "evaluate_deeplab"}
# The rules the profile sizes; their cluster-sized memory is scaled down to this machine below.
SIZED = list(yaml.safe_load((PROFILE / "config.yaml").read_text())["set-resources"])
TIMEOUT_S = 900  # the tiny DAG took 520 s with another job busy on the 2 cores
SUBMITTED = re.compile(r"Job (\d+) has been submitted with SLURM jobid (\d+)")


class JobWatcher(threading.Thread):
    """Records `scontrol show job` for every job slurmctld knows, while the run goes on."""

    def __init__(self, interval: float = 2.0):
        super().__init__(daemon=True)
        self.interval, self.jobs, self._stop_event = interval, {}, threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.poll()
            self._stop_event.wait(self.interval)

    def poll(self):
        try:
            out = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True,
                                 timeout=15).stdout
        except (OSError, subprocess.TimeoutExpired):
            return
        for line in out.splitlines():
            fields = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" in fields:
                self.jobs[fields["JobId"]] = fields

    def stop(self):
        self._stop_event.set()
        self.join(timeout=30)
        self.poll()


def _cancel(job_ids):
    if job_ids:
        subprocess.run(["scancel", *sorted(job_ids)], capture_output=True, timeout=30)


def _slurm_cmd(slurm_node, *targets: str, configs=(), set_resources=()) -> list[str]:
    """snakemake with profiles/slurm on the test cluster: the tiny config (+ `configs`), local sizes."""
    # Cluster-sized memory would run one job at a time here: let at least two fit on the node.
    mem_mb = max(100, min(1000, slurm_node.real_memory_mb // 4))
    return [sys.executable, "-m", "snakemake", *targets, "-s", str(REPO / "Snakefile"),
            "--configfile", str(REPO / "config" / "config.yaml"), str(REPO / "config" / "tiny.yaml"), *configs,
            "--workflow-profile", str(PROFILE),
            # local-cluster values only; everything else comes from the profile
            "--default-resources", f"slurm_partition={slurm_node.partition}", f"mem_mb={mem_mb}", "runtime=30",
            "--set-resources", *[f"{rule}:mem_mb={mem_mb}" for rule in SIZED], *set_resources,
            "--slurm-no-account",                      # no accounting on the test cluster
            "--slurm-status-command", "squeue",        # no sacct without slurmdbd
            "--slurm-init-seconds-before-status-checks", "2",
            "--slurm-keep-successful-logs",
            "--latency-wait", "5", "--jobs", "4"]


def test_tiny_dag_on_slurm_matches_local_run(slurm_node, tiny_run, tmp_path):
    mem_mb = max(100, min(1000, slurm_node.real_memory_mb // 4))
    workdir = tmp_path / "slurm_run"
    workdir.mkdir()
    cmd = _slurm_cmd(slurm_node)
    watcher = JobWatcher()
    watcher.start()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)        # snakemake cancels its SLURM jobs on SIGINT
        try:
            out, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        _cancel({slurm_id for _, slurm_id in SUBMITTED.findall(out)})
        pytest.fail(f"snakemake on SLURM did not finish in {TIMEOUT_S} s:\n{out[-6000:]}")
    finally:
        watcher.stop()
    elapsed = time.monotonic() - start
    print(f"\n[slurm] tiny DAG through SLURM: {elapsed:.1f} s "
          f"({len(SUBMITTED.findall(out))} sbatch jobs, mem_mb={mem_mb}, node {slurm_node.hostname}: "
          f"{slurm_node.cpus} CPUs, {slurm_node.real_memory_mb} MB)")
    assert proc.returncode == 0, f"snakemake on SLURM failed ({proc.returncode}):\n{out[-6000:]}"

    # Every job except the target rule `all` went through sbatch and ran as a SLURM job.
    submitted = dict(SUBMITTED.findall(out))
    steps = re.search(r"(\d+) of (\d+) steps \(100%\) done", out)
    assert steps, out[-3000:]
    assert len(submitted) == int(steps.group(2)) - 1 > 10
    slurm_ids = set(submitted.values())
    logs = {p.stem for p in (workdir / ".snakemake" / "slurm_logs").rglob("*.log")}
    assert slurm_ids <= logs, f"no SLURM log for jobs {sorted(slurm_ids - logs)}"
    unseen = slurm_ids - set(watcher.jobs)
    assert not unseen, f"slurmctld never listed jobs {sorted(unseen)}"
    gpu_jobs = 0
    for jid in slurm_ids:
        job = watcher.jobs[jid]
        assert job.get("JobState") == "COMPLETED", job
        assert job.get("Partition") == slurm_node.partition, job
        rule = job.get("Comment", "").removeprefix("rule_").split("_wildcards_")[0]
        wants_gpu = "gpu" in job.get("TresPerJob", "") + job.get("TresPerNode", "")
        assert wants_gpu == (rule in GPU_RULES), f"{rule}: {job.get('TresPerJob')}"
        gpu_jobs += wants_gpu
    print(f"[slurm] {len(slurm_ids)} SLURM jobs completed, {gpu_jobs} of them with --gpus=1 "
          f"(one fake GPU: those run one at a time)")

    # Same seed, same CPU: the pseudo labels and their metrics are byte-identical to the local run.
    rel = "results/eval/masks_train.json"
    assert (workdir / rel).read_bytes() == (tiny_run / rel).read_bytes()
    assert json.loads((workdir / rel).read_text())["miou"] == json.loads((tiny_run / rel).read_text())["miou"]
    local_masks = sorted(p.relative_to(tiny_run) for p in (tiny_run / "results/masks").rglob("*.png"))
    slurm_masks = sorted(p.relative_to(workdir) for p in (workdir / "results/masks").rglob("*.png"))
    assert local_masks and slurm_masks == local_masks
    differ = [str(p) for p in local_masks if (workdir / p).read_bytes() != (tiny_run / p).read_bytes()]
    assert not differ, f"masks differ from the local run: {differ}"


# Long enough that training outlives a 1-minute time limit (SLURM kills at 1-1.5 min) on 2 idle cores (60
# epochs took 42 s there); the CAM net only has to exist.
EPOCHS = 200
LONG = {"cam": {"epochs": 2}, "segmenter": {"epochs": EPOCHS}}
SEGMENTER, STATE = "results/models/segmenter.pt", "results/resume/train_segmenter.pt"
SEG_LOG = "results/logs/train_segmenter.log"


@pytest.fixture(scope="module")
def segmenter_inputs(tmp_path_factory):
    """A local run of everything train_segmenter needs, copied by each test that trains it on SLURM."""
    workdir = tmp_path_factory.mktemp("segmenter_inputs")
    snakemake(workdir, SEGMENTER, "--omit-from", "train_segmenter", overrides=LONG)
    (workdir / "long.yaml").write_text(yaml.safe_dump(LONG))
    return workdir


@pytest.fixture(scope="module")
def uninterrupted_segmenter(segmenter_inputs, tmp_path_factory):
    """The segmenter checkpoint of an uninterrupted (local) run."""
    workdir = copy_run(segmenter_inputs, tmp_path_factory.mktemp("uninterrupted"))
    snakemake(workdir, SEGMENTER, overrides=LONG)
    return workdir / SEGMENTER


def _train_segmenter_on_slurm(slurm_node, workdir, interrupt=None, set_resources=(), extra=()) -> tuple[int, str, dict]:
    """train_segmenter alone through profiles/slurm (its inputs are up to date in `workdir`); `interrupt` is
    called with the SLURM job id once the job has saved a state. Returns Snakemake's exit code, its output
    and every SLURM job seen."""
    cmd = [*_slurm_cmd(slurm_node, SEGMENTER, configs=[str(workdir / "long.yaml")], set_resources=set_resources),
           *extra]
    watcher = JobWatcher(interval=1.0)
    watcher.start()
    start = time.monotonic()
    with open(workdir / "snakemake.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    job_id = None
    try:
        deadline = time.monotonic() + TIMEOUT_S
        if interrupt:
            while time.monotonic() < deadline and proc.poll() is None and not (workdir / STATE).is_file():
                time.sleep(0.5)
            assert (workdir / STATE).is_file(), "train_segmenter never saved a state"
            log = (workdir / SEG_LOG).read_text()
            assert f"epoch {EPOCHS}/{EPOCHS}" not in log, "training ended before the interruption"
            job_id = _job_of_rule("train_segmenter")
            interrupt(job_id)
        proc.wait(timeout=max(60.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=60)
            _cancel({job_id} if job_id else set())
        watcher.stop()
    text = (workdir / "snakemake.out").read_text()
    print(f"\n[slurm] train_segmenter ({EPOCHS} epochs) through SLURM: "
          f"{time.monotonic() - start:.0f} s")
    return proc.returncode, text, watcher.jobs


def _job_of_rule(rule: str) -> str:
    queue = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, timeout=15).stdout
    return next(j for j, comment in (line.split(maxsplit=1) for line in queue.splitlines())
                if comment.startswith(f"rule_{rule}"))


def _rule_jobs(jobs: dict, rule: str, workdir) -> list[dict]:
    """The SLURM jobs of `rule` that ran in `workdir`, oldest first: slurmctld still lists the jobs of
    earlier tests for MinJobAge seconds."""
    return [job for _, job in sorted(jobs.items(), key=lambda kv: int(kv[0]))
            if job.get("Comment", "").startswith(f"rule_{rule}") and job.get("WorkDir") == str(workdir)]


def _assert_resumed_to_the_uninterrupted_bytes(workdir, uninterrupted):
    log = (workdir / SEG_LOG).read_text()
    assert re.search(rf"resumed at epoch \d+ of {EPOCHS}", log), log[-3000:]
    assert same_checkpoint(workdir / SEGMENTER, uninterrupted)
    assert not (workdir / STATE).exists() and not (workdir / "results/resume").exists()


def test_requeued_training_job_resumes_to_the_uninterrupted_bytes(slurm_node, segmenter_inputs,
                                                                   uninterrupted_segmenter, tmp_path):
    """Preemption with requeue, as SLURM does it: `scontrol requeue` stops train_segmenter mid-epoch once it
    has saved a state (SIGTERM, SIGKILL after KillWait) and queues the same job again; the job resumes and
    writes the uninterrupted run's bytes, and Snakemake finishes without noticing (no retry)."""
    workdir = copy_run(segmenter_inputs, tmp_path / "requeue")
    requeue = lambda job_id: subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True,
                                            timeout=30)
    code, text, jobs = _train_segmenter_on_slurm(slurm_node, workdir, interrupt=requeue)
    assert code == 0, text[-4000:]
    [job] = _rule_jobs(jobs, "train_segmenter", workdir)  # one SLURM job, run twice
    assert job.get("Restarts") == "1" and job.get("JobState") == "COMPLETED", job
    assert "Trying to restart job" not in text
    _assert_resumed_to_the_uninterrupted_bytes(workdir, uninterrupted_segmenter)


def test_training_job_killed_by_its_time_limit_resumes_to_the_uninterrupted_bytes(slurm_node, segmenter_inputs,
                                                                                   uninterrupted_segmenter,
                                                                                   tmp_path):
    """A 1-minute limit: SLURM ends the job (SIGTERM, the state is saved), Snakemake resubmits it
    (preemptible-retries of the training rules), and the next attempt resumes, as often as it takes: the
    profile's 3 retries are raised here, since a busy 2-core machine may need more 1-minute attempts (the
    profile's counts are checked in test_profiles.py)."""
    workdir = copy_run(segmenter_inputs, tmp_path / "timeout")
    code, text, jobs = _train_segmenter_on_slurm(slurm_node, workdir, set_resources=["train_segmenter:runtime=1"],
                                                 extra=["--preemptible-retries", "10"])
    assert code == 0, text[-4000:]
    states = [job.get("JobState") for job in _rule_jobs(jobs, "train_segmenter", workdir)]
    print(f"[slurm] train_segmenter's SLURM jobs under a 1-minute limit: {states}")
    assert len(states) >= 2 and states[0] == "TIMEOUT" and states[-1] == "COMPLETED", states
    assert "Trying to restart job" in text
    _assert_resumed_to_the_uninterrupted_bytes(workdir, uninterrupted_segmenter)


def test_a_genuine_failure_is_reported_at_once(slurm_node, tmp_path):
    """A failing job of a rule that is not a training rule (a labels file that is no JSON) is submitted once:
    the run stops with its error, no resubmission."""
    workdir = tmp_path / "failure"
    workdir.mkdir()
    (workdir / "bad_labels.json").write_text("{not json")
    (workdir / "bad.yaml").write_text("dataset:\n  labels_file: bad_labels.json\n")
    watcher = JobWatcher(interval=1.0)
    watcher.start()
    start = time.monotonic()
    try:
        proc = subprocess.run(_slurm_cmd(slurm_node, "results/labels/train.json", configs=[str(workdir / "bad.yaml")]),
                              cwd=workdir, capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        watcher.stop()
    text = proc.stdout + proc.stderr
    print(f"\n[slurm] a genuine failure (image_labels) reported after {time.monotonic() - start:.0f} s")
    assert proc.returncode != 0
    assert [job.get("JobState") for job in _rule_jobs(watcher.jobs, "image_labels", workdir)] == ["FAILED"], text[-4000:]
    assert "Trying to restart job" not in text and "Error in rule image_labels" in text
    assert "not valid JSON" in (workdir / "results/logs/image_labels/train.log").read_text()
