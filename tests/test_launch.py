"""The training launcher (vocabseg.engine.launch): torchrun with workers in the job's session.

Batch schedulers account, limit and kill a job by its session (PBS) or step; torchrun's
workers start sessions of their own. The launcher runs here as a session leader, as a PBS
job's shell is, and its worker reports its session; a preempted worker's exit 143 must
come out as 143, and each run's output must stay in a file of its own.
"""

import os
import re
import subprocess
import sys

WORKER = """
import os, sys
print("session", os.getsid(0), "group", os.getpgid(0), "pid", os.getpid(), flush=True)
sys.exit(int(sys.argv[1]))
"""


def launch(tmp_path, code: int) -> tuple[subprocess.CompletedProcess, int]:
    """Run one worker exiting ``code`` under the launcher in a new session, its output to
    logs/train/x.log; (result, launcher pid)."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen(
        [sys.executable, "-m", "vocabseg.engine.launch", "--log", str(tmp_path / "logs/train/x.log"),
         "--standalone", "--nnodes=1", "--nproc_per_node=1", str(script), str(code)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), proc.pid


def test_workers_stay_in_the_jobs_session_and_each_run_keeps_its_log(tmp_path):
    res, leader = launch(tmp_path, 143)
    logs = tmp_path / "logs/train"
    first = (logs / "x.run1.log").read_text()
    session, group, pid = map(int, re.search(r"^session (\d+) group (\d+) pid (\d+)$", first, re.M).groups())
    # in the launcher's session (the job's), in a process group of its own
    assert session == leader and group == pid != leader
    assert res.returncode == 143 and res.stdout == res.stderr == ""
    assert first.startswith("launch: run 1 of this job")
    assert "trainer preempted: checkpoint written" in first and "rank 0: exit 143" in first
    # the next run (Snakemake deleted x.log first) gets a file of its own; run 1's stays
    (logs / "x.log").unlink()
    res, _ = launch(tmp_path, 3)
    second = (logs / "x.run2.log").read_text()
    assert res.returncode == 1 and "launch: trainer failed (rank 0: exit 3); exit 1" in second
    assert (logs / "x.run1.log").read_text() == first
    assert os.readlink(logs / "x.log") == "x.run2.log"
