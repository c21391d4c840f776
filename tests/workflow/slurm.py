"""A throwaway single-node SLURM for the tests: Debian packages, config for this host, daemons up and down.

`single_node_slurm()` is a context manager that yields a `SlurmNode` once `sinfo` shows this host idle;
the `slurm_node` fixture wraps it for pytest and skips (with the reason) wherever it cannot work: not
root, no apt-get, the install fails, a foreign SLURM configuration is present, or the daemons do not come
up. Every wait is bounded, and on exit exactly the daemons this module started are stopped, by the PIDs in
their pid files (a daemon that was already running is used and left running).

The node gets one fake GPU (gres.conf `File=/dev/null`) so that jobs submitted with `--gpus=1` schedule;
jobs still compute on the CPU.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

PACKAGES = ("slurm-wlm", "slurmctld", "slurmd", "slurm-client", "munge")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "munged", "munge")
PARTITION = "debug"
ETC = Path("/etc/slurm")
MARKER = "# written by locseg tests/workflow/slurm.py"
MEMORY_SHARE = 0.9  # RealMemory: this share of what `slurmd -C` detects

MUNGE_PID = Path("/run/munge/munged.pid")
CTLD_PID = Path("/run/slurmctld.pid")
SLURMD_PID = Path("/run/slurmd.pid")
LOG_DIR = Path("/var/log/slurm")

_apt_updated = False


class SlurmUnavailable(RuntimeError):
    """This machine cannot host the test cluster; the message says why."""


@dataclass(frozen=True)
class SlurmNode:
    hostname: str
    partition: str
    cpus: int
    real_memory_mb: int
    gpus: int
    log_dir: Path


def _run(cmd: list[str], timeout: float = 60, check: bool = True, **kw) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as err:
        raise SlurmUnavailable(f"`{' '.join(cmd)}` did not finish in {timeout:.0f} s") from err
    except OSError as err:
        raise SlurmUnavailable(f"`{' '.join(cmd)}` could not start: {err}") from err
    if check and proc.returncode != 0:
        raise SlurmUnavailable(f"`{' '.join(cmd)}` failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def _missing_binaries() -> list[str]:
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def install() -> None:
    """apt-get install the SLURM + munge packages (without recommends) if any binary is missing."""
    global _apt_updated
    if not _missing_binaries():
        return
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("SLURM is not installed and there is no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if not _apt_updated:
        _run(["apt-get", "update", "-q"], timeout=300, env=env)
        _apt_updated = True
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES], timeout=600, env=env)
    if missing := _missing_binaries():
        raise SlurmUnavailable(f"installed {' '.join(PACKAGES)} but still missing: {', '.join(missing)}")


def _hostname() -> str:
    """The short host name, as slurmd looks itself up."""
    return socket.gethostname().split(".")[0]


def detect_node() -> dict[str, int]:
    """CPUs, topology and memory of this host, from `slurmd -C`."""
    out = _run([_sbin("slurmd"), "-C"], timeout=30).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    try:
        return {k: int(fields[k]) for k in ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket",
                                            "ThreadsPerCore", "RealMemory")}
    except (KeyError, ValueError) as err:
        raise SlurmUnavailable(f"cannot parse `slurmd -C`: {out.strip()}") from err


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def render_config(host: str, hw: dict[str, int]) -> tuple[str, str]:
    """slurm.conf and gres.conf text: one node with one fake GPU, one default partition, no accounting,
    no cgroups."""
    memory = int(hw["RealMemory"] * MEMORY_SHARE)
    slurm_conf = f"""{MARKER}
ClusterName=locsegtest
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
PropagateResourceLimits=NONE
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
ReturnToService=2
MinJobAge=300
InactiveLimit=0
KillWait=5
SlurmctldTimeout=30
SlurmdTimeout=60
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile={CTLD_PID}
SlurmdPidFile={SLURMD_PID}
SlurmctldLogFile={LOG_DIR}/slurmctld.log
SlurmdLogFile={LOG_DIR}/slurmd.log
NodeName={host} NodeAddr=127.0.0.1 CPUs={hw['CPUs']} Boards={hw['Boards']} \
SocketsPerBoard={hw['SocketsPerBoard']} CoresPerSocket={hw['CoresPerSocket']} \
ThreadsPerCore={hw['ThreadsPerCore']} RealMemory={memory} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    # Without File= the node is marked INVAL; /dev/null stands in for the device (a job gets
    # CUDA_VISIBLE_DEVICES=0). A plain file does not work as a device, so there is one fake GPU.
    gres_conf = f"{MARKER}\nNodeName={host} Name=gpu Count=1 File=/dev/null\n"
    return slurm_conf, gres_conf


def _alive(pid_file: Path, comm: str) -> int | None:
    """The PID in `pid_file` if that process is alive and is `comm`, else None."""
    try:
        pid = int(pid_file.read_text().split()[0])
        if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
            return pid
    except (OSError, ValueError, IndexError):
        pass
    return None


def _wait_for(what: str, predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise SlurmUnavailable(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def _stop(pid: int, comm: str, timeout: float = 20) -> None:
    """SIGTERM the process, SIGKILL it if still there after `timeout`."""
    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip() != comm
        except OSError:
            return True
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5)):
        if gone():
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and not gone():
            time.sleep(0.2)


def _munge_works() -> bool:
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return enc.returncode == 0 and dec.returncode == 0


def _node_state(host: str) -> str:
    try:
        proc = subprocess.run(["sinfo", "-h", "-n", host, "-o", "%T"], capture_output=True, text=True,
                              timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def _log_tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def preflight() -> str | None:
    """Why this machine cannot host the test cluster, from cheap checks only (None: worth trying)."""
    if os.geteuid() != 0:
        return "needs root to install and start SLURM daemons"
    if shutil.which("apt-get") is None and _missing_binaries():
        return "no apt-get to install SLURM (Debian/Ubuntu only)"
    return None


@contextmanager
def single_node_slurm(start_timeout: float = 60) -> Iterator[SlurmNode]:
    """Install (if needed), configure and start a one-node SLURM; stop what was started on exit.

    Raises SlurmUnavailable (before yielding) when that is not possible here.
    """
    if reason := preflight():
        raise SlurmUnavailable(reason)
    install()

    host = _hostname()
    hw = detect_node()
    slurm_conf, gres_conf = render_config(host, hw)
    conf_path, gres_path = ETC / "slurm.conf", ETC / "gres.conf"
    for path in (conf_path, gres_path):
        if path.exists() and MARKER not in path.read_text(errors="replace"):
            raise SlurmUnavailable(f"{path} exists and was not written by these tests; not touching a real cluster")

    running_ctld = _alive(CTLD_PID, "slurmctld")
    conf_changed = not conf_path.exists() or conf_path.read_text() != slurm_conf \
        or not gres_path.exists() or gres_path.read_text() != gres_conf
    if running_ctld and conf_changed:
        raise SlurmUnavailable(f"a slurmctld (pid {running_ctld}) already runs with another configuration")
    ETC.mkdir(parents=True, exist_ok=True)
    conf_path.write_text(slurm_conf)
    gres_path.write_text(gres_conf)
    for d in (Path("/var/spool/slurmctld"), Path("/var/spool/slurmd"), LOG_DIR):
        d.mkdir(parents=True, exist_ok=True)

    started: list[tuple[int, str]] = []  # (pid, comm), in start order
    try:
        # munge: authentication for every SLURM RPC.
        if not _munge_works():
            if not Path("/etc/munge/munge.key").exists():
                _run(["mungekey", "--create"], timeout=30)
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            _run(["runuser", "-u", "munge", "--", _sbin("munged")], timeout=30)
            pid = _wait_for("munged pid file", lambda: _alive(MUNGE_PID, "munged"), 15)
            started.append((pid, "munged"))
            _wait_for("munge credentials", _munge_works, 15)

        if not running_ctld:
            # -c: start from a clean state (no jobs or node states from an earlier run)
            _run([_sbin("slurmctld"), "-c"], timeout=30)
            try:
                started.append((_wait_for("slurmctld pid file", lambda: _alive(CTLD_PID, "slurmctld"), 15),
                                "slurmctld"))
            except SlurmUnavailable as err:
                raise SlurmUnavailable(f"{err}\n{_log_tail(LOG_DIR / 'slurmctld.log')}") from None
        if not _alive(SLURMD_PID, "slurmd"):
            _run([_sbin("slurmd")], timeout=30)
            try:
                started.append((_wait_for("slurmd pid file", lambda: _alive(SLURMD_PID, "slurmd"), 15), "slurmd"))
            except SlurmUnavailable as err:
                raise SlurmUnavailable(f"{err}\n{_log_tail(LOG_DIR / 'slurmd.log')}") from None

        def idle() -> bool:
            state = _node_state(host)
            if state and not state.startswith(("idle", "mixed", "allocated")):
                # down/drained after an earlier run, or unknown while registering
                _run(["scontrol", "update", f"nodename={host}", "state=resume"], timeout=15, check=False)
            return state.startswith("idle")
        try:
            _wait_for(f"node {host} idle in sinfo", idle, start_timeout, interval=1)
        except SlurmUnavailable as err:
            raise SlurmUnavailable(f"{err} (state: {_node_state(host) or '?'})\n"
                                   f"{_log_tail(LOG_DIR / 'slurmctld.log')}\n"
                                   f"{_log_tail(LOG_DIR / 'slurmd.log')}") from None

        yield SlurmNode(hostname=host, partition=PARTITION, cpus=hw["CPUs"],
                        real_memory_mb=int(hw["RealMemory"] * MEMORY_SHARE), gpus=1, log_dir=LOG_DIR)
    finally:
        for pid, comm in reversed(started):
            _stop(pid, comm)


@pytest.fixture(scope="module")
def slurm_node() -> Iterator[SlurmNode]:
    """A running single-node SLURM for the test module, or a skip saying why there cannot be one."""
    cm = single_node_slurm()
    try:
        node = cm.__enter__()
    except SlurmUnavailable as err:
        pytest.skip(f"no single-node SLURM: {err}")
    try:
        yield node
    finally:
        cm.__exit__(None, None, None)
