"""``torchrun`` for cluster jobs: workers stay in the job's session, exit codes pass through.

    python -m vocabseg.engine.launch [--log LOG] --standalone --nnodes=1 --nproc_per_node=N -m vocabseg.train ...

Takes torchrun's arguments, after an optional ``--log``. Three differences, all for batch
schedulers:

* **Session.** torch's elastic agent starts every worker with ``start_new_session=True``.
  PBS's execution daemon accounts and signals a job by its session: workers in sessions
  of their own were outside it (PBS recorded 3 s of CPU for an 87 s training), the job's
  limits did not cover them and a ``qdel``/walltime kill reached them only through the
  agent. Here each worker gets a process group of its own instead (``process_group=0``):
  the agent still signals a worker's group as before (``os.killpg``), and the workers stay
  in the job's session (PBS) and in its cgroup/step (SLURM) as ordinary members.
* **Exit status.** torchrun exits 1 whenever a worker fails. A trainer stopped by
  SIGTERM/SIGUSR1 writes its checkpoint and exits 143; here the launcher then exits 143
  too, after a line saying so, and it exits 128 + signal when it was signalled itself, so
  the job's log and exit status show a preemption, not a crash.
* **One log per run.** With ``--log logs/<study>/train/x.log`` everything the launcher and
  the workers print goes to ``x.run<N>.log`` (N = 1, 2, ...: the first number not taken),
  and ``x.log`` becomes a link to it. Snakemake deletes a job's log before a retry; the
  numbered files stay, so a preempted attempt's "checkpoint written" and the next one's
  "resumed from" are both kept.
"""

import os
import socket
import subprocess
import sys
import time

from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.elastic.multiprocessing.subprocess_handler import subprocess_handler
from torch.distributed.run import parse_args, run

PREEMPTED = 143  # the trainer's exit status after writing a checkpoint on SIGTERM/SIGUSR1


def _popen_in_session(self, args: tuple, env: dict[str, str]) -> subprocess.Popen:
    """SubprocessHandler._popen without a new session: a new process group only."""
    return subprocess.Popen(
        args=args, env=env, stdout=self._stdout, stderr=self._stderr, process_group=0
    )


def exit_status(failures: dict) -> int:
    """143 if every failed worker exited 143 or died of SIGTERM, else 1 (as torchrun)."""
    codes = {failure.exitcode for failure in failures.values()}
    return PREEMPTED if codes <= {PREEMPTED, -15} else 1


def open_run_log(path: str) -> tuple[int, int]:
    """Create ``<stem>.run<N>.log`` next to ``path`` (first free N), link ``path`` to it.

    Returns (file descriptor, N). ``logs/s/train/a.log`` -> ``logs/s/train/a.run1.log``.
    """
    stem = path[: -len(".log")] if path.endswith(".log") else path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    n = 1
    while True:
        try:
            fd = os.open(f"{stem}.run{n}.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            break
        except FileExistsError:
            n += 1
    link = f"{path}.{os.getpid()}.tmp"
    os.symlink(os.path.basename(f"{stem}.run{n}.log"), link)
    os.replace(link, path)
    return fd, n


def redirect_to_run_log(path: str) -> None:
    """Send this process's (and its children's) stdout and stderr to a new run log."""
    fd, n = open_run_log(path)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    job = os.environ.get("PBS_JOBID") or os.environ.get("SLURM_JOB_ID") or "-"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"launch: run {n} of this job, {stamp} on {socket.gethostname()}, batch job {job}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--log"]:
        redirect_to_run_log(argv[1])
        argv = argv[2:]
    subprocess_handler.SubprocessHandler._popen = _popen_in_session
    try:
        run(parse_args(argv))
    except ChildFailedError as err:
        code = exit_status(err.failures)
        ranks = ", ".join(f"rank {r}: exit {f.exitcode}" for r, f in sorted(err.failures.items()))
        what = "preempted: checkpoint written, resumes on the next attempt" if code == PREEMPTED else "failed"
        print(f"launch: trainer {what} ({ranks}); exit {code}", file=sys.stderr, flush=True)
        return code
    except SignalException as err:
        print(f"launch: stopped by signal {int(err.sigval)}", file=sys.stderr, flush=True)
        return 128 + int(err.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
