"""``torchrun`` for cluster jobs: workers stay in the job's session, exit codes pass through.

    python -m vocabseg.engine.launch --standalone --nnodes=1 --nproc_per_node=N -m vocabseg.train ...

Takes exactly torchrun's arguments. Two differences, both for batch schedulers:

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
"""

import subprocess
import sys

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


def main(argv: list[str] | None = None) -> int:
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
