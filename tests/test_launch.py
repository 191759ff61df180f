"""The training launcher (vocabseg.engine.launch): torchrun with workers in the job's session.

Batch schedulers account, limit and kill a job by its session (PBS) or step; torchrun's
workers start sessions of their own. The launcher runs here as a session leader, as a PBS
job's shell is, and its worker reports its session; a preempted worker's exit 143 must
come out as 143.
"""

import os
import subprocess
import sys

WORKER = """
import os, sys
print("session", os.getsid(0), "group", os.getpgid(0), "pid", os.getpid(), flush=True)
sys.exit(int(sys.argv[1]))
"""


def launch(tmp_path, code: int) -> tuple[subprocess.CompletedProcess, int]:
    """Run one worker exiting ``code`` under the launcher in a new session; (result, launcher pid)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vocabseg.engine.launch", "--standalone", "--nnodes=1",
         "--nproc_per_node=1", str(script), str(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def test_workers_stay_in_the_jobs_session_and_preemption_exits_143(tmp_path):
    res, leader = launch(tmp_path, 143)
    session, group, pid = (int(v) for v in res.stdout.split()[1::2])
    # in the launcher's session (the job's), in a process group of its own
    assert session == leader and group == pid != leader
    assert res.returncode == 143
    assert "trainer preempted: checkpoint written" in res.stderr and "rank 0: exit 143" in res.stderr
    res, _ = launch(tmp_path, 3)
    assert res.returncode == 1 and "launch: trainer failed (rank 0: exit 3); exit 1" in res.stderr
