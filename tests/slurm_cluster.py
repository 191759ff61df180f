"""A single-node SLURM cluster in a temporary folder, for the workflow's SLURM tests.

Debian's packages (``munge slurmctld slurmd slurm-client``, Slurm 22.05) run as plain
child processes of the test: ``munged -F``, ``slurmctld -D`` and ``slurmd -D`` with their
own key, socket, configuration, state, spool, pid and log files in one folder, so
nothing under /etc, /run or /var and no system daemon is touched, and stopping the
cluster stops exactly these three processes. Clients find the cluster through
``SLURM_CONF`` (:attr:`Cluster.env`).

The configuration is the usual one for a container without systemd or cgroups
(proctrack/linuxproc, task/none) and without an accounting database
(accounting_storage/none, so ``sacct`` has nothing: the Snakemake plugin must poll
with ``squeue``, which sees finished jobs for ``MinJobAge`` = 300 s). With
``SlurmdParameters=config_overrides`` the node offers the CPUs, memory and GPUs of
the configuration rather than of the machine: two "GPUs" whose device files are
/dev/null and /dev/zero, enough for ``--gpus=N`` jobs to be scheduled and get
``CUDA_VISIBLE_DEVICES``, while torch still finds no CUDA and trains on the CPU.

A plain module, like ``trainer_helpers.py``: pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

__all__ = ["Cluster", "missing_binaries", "single_node_slurm"]

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sinfo", "squeue", "sbatch", "srun", "scancel", "scontrol")
_SEARCH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin", "/usr/bin"]
)


def which(name: str) -> str | None:
    """Path of a SLURM/munge binary (daemons live in sbin, often not on a user's PATH)."""
    return shutil.which(name, path=_SEARCH)


def missing_binaries() -> list[str]:
    """The daemons and clients this module needs that are not installed."""
    return [name for name in (*DAEMONS, "munge", *CLIENTS) if which(name) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """\
ClusterName=vocabsegtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300
KillWait=5
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

# Count-only GPUs are dropped by slurmd ("file-less GPU"); any character device will do.
GRES_CONF = """\
NodeName={host} Name=gpu File=/dev/null
NodeName={host} Name=gpu File=/dev/zero
"""


@dataclass
class Cluster:
    """A running single-node cluster: its folder, node name and client environment."""

    root: Path
    node: str
    env: dict[str, str]
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> str:
        """Run a client command (``sinfo``, ``squeue``, ...) against this cluster; its stdout."""
        res = subprocess.run(
            [which(cmd[0]) or cmd[0], *cmd[1:]],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {res.stderr.strip()}\n{self.logs()}")
        return res.stdout

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", self.node, "-o", "%T", check=False).strip()

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld still knows (finished ones for MinJobAge): id, name, state,
        comment (the Snakemake plugin writes rule and wildcards there) and GPUs requested
        with --gpus (tres-per-job, e.g. ``gres:gpu:1``; ``N/A`` without)."""
        fields = "JobID:30|,Name:100|,State:30|,Comment:500|,tres-per-job:100|"
        out = self.run("squeue", "--states=all", "-h", "-O", fields)
        keys = ("id", "name", "state", "comment", "gpus")
        return [dict(zip(keys, (v.strip() for v in line.split("|")))) for line in out.splitlines() if line]

    def logs(self, lines: int = 30) -> str:
        """The last lines of the daemons' logs, for failure messages."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munge/munged.log"):
            path = self.root / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {name}\n" + "\n".join(tail))
        return "\n".join(parts)


def _wait(predicate, timeout: float, what: str, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.processes.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}\n{cluster.logs()}")
        if predicate():
            return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.logs()}")


def _start(cluster: Cluster, name: str, *args: str) -> None:
    log = open(cluster.root / f"{name}.out", "wb")
    cluster.processes[name] = subprocess.Popen(
        [which(name), *args],
        env=cluster.env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C of the test run reaches the daemons only via stop
    )
    log.close()


def _stop(proc: subprocess.Popen, timeout: float = 15) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _cancel_all_jobs(cluster: Cluster, timeout: float = 30) -> None:
    """Cancel this cluster's jobs and wait until none runs, so slurmd leaves no job steps."""
    with contextlib.suppress(Exception):
        ids = [j["id"] for j in cluster.jobs() if j["state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")]
        if ids:
            cluster.run("scancel", *ids, check=False)
            _wait(
                lambda: not any(
                    j["state"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for j in cluster.jobs()
                ),
                timeout,
                "cancelled jobs to end",
                cluster,
            )


def _srun_shim(root: Path) -> Path:
    """A folder with an ``srun`` that restores SLURM_CONF, to be put first on PATH.

    Inside a job, the Snakemake plugin (snakemake-executor-plugin-slurm-jobstep 0.6.1)
    runs the rule with ``srun`` after removing every SLURM_* variable but a few job ids,
    SLURM_CONF included; srun then finds no configuration (this cluster's is not at
    /etc/slurm/slurm.conf) and fails with "Could not establish a configuration source".
    Real clusters keep theirs at the default path or serve it (configless), so only this
    test cluster needs the shim; the real srun does the work.
    """
    folder = root / "bin"
    folder.mkdir(mode=0o755)
    shim = folder / "srun"
    shim.write_text(f'#!/bin/sh\nSLURM_CONF="{root}/slurm.conf" exec "{which("srun")}" "$@"\n')
    shim.chmod(0o755)
    return folder


@contextlib.contextmanager
def single_node_slurm(cpus: int = 8, mem_mb: int = 16000, ready_timeout: float = 60) -> Iterator[Cluster]:
    """Start munged, slurmctld and slurmd on a fresh configuration; stop them on exit.

    The folder is made with :func:`tempfile.mkdtemp` rather than pytest's ``tmp_path``:
    munged insists that every folder above its socket is searchable by everyone, which
    pytest's private ``/tmp/pytest-of-<user>`` is not. It is removed on exit.
    """
    root = Path(tempfile.mkdtemp(prefix="vocabseg-slurm-"))
    root.chmod(0o755)
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir(mode=0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    values = dict(
        host=host, root=root, cpus=cpus, mem_mb=mem_mb, ctld_port=free_port(), slurmd_port=free_port()
    )
    (root / "slurm.conf").write_text(SLURM_CONF.format(**values))
    (root / "gres.conf").write_text(GRES_CONF.format(**values))
    env = dict(os.environ, SLURM_CONF=str(root / "slurm.conf"))
    for var in [v for v in env if v.startswith("SLURM_") and v != "SLURM_CONF"]:
        del env[var]  # a test run inside a SLURM job must not talk to that job's cluster
    env["PATH"] = f"{_srun_shim(root)}{os.pathsep}{env['PATH']}"
    cluster = Cluster(root=root, node=host, env=env)
    munge = root / "munge"
    try:
        _start(
            cluster,
            "munged",
            "--foreground",
            f"--key-file={key}",
            f"--socket={munge / 'munge.socket'}",
            f"--pid-file={munge / 'munged.pid'}",
            f"--log-file={munge / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        )
        _wait(lambda: (munge / "munge.socket").exists(), 20, "munged's socket", cluster)
        _start(cluster, "slurmctld", "-D", "-f", str(cluster.conf))
        _start(cluster, "slurmd", "-D", "-f", str(cluster.conf), "-N", host)
        _wait(lambda: cluster.node_state() in ("idle", "mixed"), ready_timeout, "the node to be idle", cluster)
        yield cluster
    finally:
        if "slurmd" in cluster.processes and cluster.processes["slurmd"].poll() is None:
            _cancel_all_jobs(cluster)
        for name in ("slurmd", "slurmctld", "munged"):
            if name in cluster.processes:
                _stop(cluster.processes[name])
        shutil.rmtree(root, ignore_errors=True)
