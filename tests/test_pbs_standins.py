"""The PBS stand-ins print what a real OpenPBS 23.06 server prints, byte for byte.

``../shared/reference/openpbs-23.06/`` (next to the repository) holds ``qstat`` outputs
captured on a real single-node OpenPBS 23.06.06 server. Each test puts a stand-in job into
the captured situation (its state file: submission, times, outcome, measured usage) and
compares stdout, stderr and exit status of the stand-in ``qstat`` with the capture.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO.parent / "shared" / "reference" / "openpbs-23.06"
STANDINS = Path(__file__).resolve().parent / "pbs_standins"

pytestmark = pytest.mark.skipif(
    not CAPTURES.is_dir(), reason=f"captured OpenPBS outputs not found at {CAPTURES}"
)

T = 1796468180  # Sat Dec  5 10:56:20 2026 UTC, when the captured jobs were submitted
VARIABLES = {
    "PBS_O_HOME": "/home/pbsuser",
    "PBS_O_LOGNAME": "pbsuser",
    "PBS_O_PATH": "/opt/pbs/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/games:/usr/games:/opt/pbs/bin",
    "PBS_O_MAIL": "/var/mail/pbsuser",
    "PBS_O_SHELL": "/bin/bash",
    "PBS_O_INTERACTIVE_AUTH_METHOD": "resvport",
    "PBS_O_INTERACTIVE_ENCRYPT_METHOD": "",
    "PBS_O_WORKDIR": "/home/pbsuser",
    "PBS_O_SYSTEM": "Linux",
    "PBS_O_QUEUE": "workq",
    "PBS_O_HOST": "vm",
}


def usage(mem="0kb", vmem="0kb", walltime="00:00:00") -> dict:
    return {"cpupercent": 0, "cput": "00:00:00", "mem": mem, "ncpus": 1, "vmem": vmem, "walltime": walltime}


def job(seq: int, argv: list[str], submitted: int = T, **facts) -> dict:
    """A stand-in job state as qsub writes it (an ordinary user's job on host ``vm``)."""
    opts: dict = {}
    i = 0
    while i < len(argv) - 1:
        if argv[i] in ("-N", "-j", "-l", "-S"):
            opts.setdefault(argv[i], []).append(argv[i + 1])
            i += 2
        else:
            opts.setdefault(argv[i], []).append("")
            i += 1
    name = opts["-N"][0]
    held = "-h" in opts
    state = {
        "id": f"{seq}.vm",
        "host": "vm",
        "name": name,
        "owner": "pbsuser@vm",
        "opts": opts,
        "workdir": "/home/pbsuser",
        "home": "/home/pbsuser",
        "variables": VARIABLES,
        "submit_arguments": " ".join(argv),
        "error_path": f"vm:/home/pbsuser/{name}.e{seq}",
        "output_path": f"vm:/home/pbsuser/{name}.o{seq}",
        "state": "H" if held else "Q",
        "ctime": submitted,
        "qtime": submitted,
        "mtime": submitted,
        "etime": None if held else submitted,
    }
    return {**state, **facts}


def ran(session: int, slot: int, stime: int = T, **facts) -> dict:
    return {"state": "R", "stime": stime, "session_id": session, "exec_host": f"vm/{slot}", "run_count": 1, **facts}


def ended(outcome: str, code: int, at: int, usage_: dict, obit: int | None = None) -> dict:
    return {"state": "F", "outcome": outcome, "exit_status": code, "mtime": at, "obittime": obit or at,
            "resources_used": usage_}


OK = ["-N", "user_ok", "-j", "oe", "-l", "walltime=00:05:00", "ok.sh"]
FAIL = ["-N", "user_fail", "-j", "oe", "-l", "walltime=00:05:00", "fail.sh"]
QDEL = ["-N", "user_qdel", "-j", "oe", "-l", "walltime=00:10:00", "long.sh"]
WALL = ["-N", "user_walltime", "-j", "oe", "-l", "walltime=00:00:40", "long.sh"]
HELD = ["-h", "-N", "user_held_queued", "-j", "oe", "long.sh"]
NOHIST = ["-N", "nohist_running", "-j", "oe", "/home/pbsuser/long.sh"]

FINISHED_OK = job(48, OK, **ran(10542, 0) | ended("finished", 0, T + 21, usage("7412kb", "10380kb", "00:00:20"), T + 20))
RUNNING = job(48, OK, **ran(10542, 0, mtime=T + 2, resources_used=usage()))
FAILED = job(49, FAIL, **ran(10543, 1) | ended("failed", 3, T + 21, usage("7380kb", "10380kb", "00:00:20")))
DELETED = job(50, QDEL, **ran(10544, 2) | ended("deleted", 271, T + 39, usage("7500kb", "10380kb", "00:00:38")))
WALLTIME = job(51, WALL, **ran(10570, 3) | ended("walltime", -29, T + 66, usage("7208kb", "10380kb", "00:01:05")))
HELD_JOB = job(52, HELD)
DELETED_QUEUED = job(52, HELD, state="F", outcome="deleted", mtime=T + 45)
NOHIST_START = 1796469344  # Sat Dec  5 11:15:44 2026
NOHIST_RUNNING = job(111, NOHIST, NOHIST_START, **ran(26468, 0, NOHIST_START, mtime=NOHIST_START + 2, resources_used=usage()))
NOHIST_FINISHED = job(72, OK, **ran(10600, 0) | ended("finished", 0, T + 21, usage()))


def never_runs_job() -> dict:
    """The captured root job asking 8 CPUs and 64000 MB of a node with 24105 MB."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fakepbs", STANDINS / "fakepbs.py")
    fakepbs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fakepbs)
    argv = ["-N", "probe.cpu", "-S", "/bin/bash", "-l", "select=1:ncpus=8:mem=64000mb", "-l", "walltime=04:00:00", "t.sh"]
    submitted = 1796467562  # Sat Dec  5 10:46:02 2026
    base = job(2, argv, submitted)
    os.environ["FAKEPBS_NODE"] = "ncpus=8,mem=24105mb"
    try:
        comment = fakepbs.never_runs(fakepbs.resource_list(base["opts"]))
    finally:
        del os.environ["FAKEPBS_NODE"]
    variables = {
        "PBS_O_HOME": "/home/user",
        "PBS_O_LANG": "C.UTF-8",
        "PBS_O_PATH": "/opt/pbs/bin:/opt/pbs/sbin:/home/user:/home/user:/home/user:/home/user:/home/user:"
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PBS_O_SHELL": "/bin/bash",
        "PBS_O_INTERACTIVE_AUTH_METHOD": "resvport",
        "PBS_O_INTERACTIVE_ENCRYPT_METHOD": "",
        "PBS_O_WORKDIR": "/home/user/venv",
        "PBS_O_SYSTEM": "Linux",
        "PBS_O_QUEUE": "workq",
        "PBS_O_HOST": "vm",
    }
    return {
        **base,
        "owner": "root@vm",
        "variables": variables,
        # the capture's paths were edited apart from Job_Name; qsub stores them as given
        "error_path": "vm:/home/user/project.cpu.e2",
        "output_path": "vm:/home/user/project.cpu.o2",
        "queue_rank": 1796467562490641,
        "scheduler_comment": comment,
    }


def qstat(tmp_path: Path, jobs: list[dict], args: list[str], now: int, **env) -> tuple[str, str, int]:
    """Put ``jobs`` into a fresh stand-in server, run its qstat; (stdout, stderr, exit status)."""
    root = tmp_path / "pbs"
    for state in jobs:
        folder = root / "jobs" / state["id"].split(".")[0]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "state.json").write_text(json.dumps(state))
    root.mkdir(exist_ok=True)
    environment = dict(os.environ, FAKEPBS_DIR=str(root), FAKEPBS_SERVER="vm", FAKEPBS_NOW=str(now), **env)
    res = subprocess.run([str(STANDINS / "qstat"), *args], capture_output=True, text=True, env=environment, timeout=60)
    return res.stdout, res.stderr, res.returncode


JSON = ["-f", "-F", "json", "-x"]
PLAIN = ["-f", "-x"]


@pytest.mark.parametrize(
    "capture, state, now",
    [
        ("running_R", RUNNING, 1796468187),
        ("held_H_queued", HELD_JOB, 1796468186),
        ("finished_ok_F_exit0", FINISHED_OK, 1796468212),
        ("finished_failed_F_exit3", FAILED, 1796468212),
        ("deleted_while_running", DELETED, 1796468225),
        ("deleted_while_queued", DELETED_QUEUED, 1796468228),
        ("walltime_killed", WALLTIME, 1796468273),
    ],
)
def test_job_states_print_as_captured(tmp_path, capture, state, now):
    out, err, code = qstat(tmp_path, [state], [*JSON, state["id"]], now)
    assert (out, err, code) == ((CAPTURES / f"{capture}_json.json").read_text(), "", 0)
    out, err, code = qstat(tmp_path, [state], [*PLAIN, state["id"]], now)
    assert (out, err, code) == ((CAPTURES / f"{capture}_plain.txt").read_text(), "", 0)


def test_job_that_can_never_run_prints_as_captured(tmp_path):
    state = never_runs_job()
    out, err, code = qstat(tmp_path, [state], [*JSON, "2.vm"], 1796467566)
    assert (out, err, code) == ((CAPTURES / "queued_can_never_run_mem_json.json").read_text(), "", 0)


def test_two_ids_in_one_call(tmp_path):
    out, err, code = qstat(tmp_path, [FINISHED_OK], [*JSON, "48.vm"], 1796468274)
    assert (out, err, code) == ((CAPTURES / "two_jobs_one_call_json.json").read_text(), "", 0)
    out, err, code = qstat(tmp_path, [FINISHED_OK, FAILED], [*JSON, "48.vm", "49.vm"], 1796468274)
    assert list(json.loads(out)["Jobs"]) == ["48.vm", "49.vm"] and code == 0


def captured_error(stdout: str, stderr_rc: str) -> tuple[str, str]:
    return (CAPTURES / stdout).read_text(), (CAPTURES / stderr_rc).read_text()


def test_unknown_job(tmp_path):
    out, err, code = qstat(tmp_path, [], [*JSON, "999999.vm"], 1796468274)
    assert (out, f"{err}rc={code}\n") == captured_error("unknown_job_stdout.txt", "unknown_job_stderr.txt")


def test_server_without_job_history(tmp_path):
    jobs = [NOHIST_RUNNING, NOHIST_FINISHED]
    # -x is refused for a running job too: exit 0, a skeleton, the reason on stderr
    out, err, code = qstat(tmp_path, jobs, [*JSON, "111.vm"], 1796469348, FAKEPBS_NO_HISTORY="1")
    assert (out, f"{err}rc={code}\n") == captured_error(
        "nohistory_running_job_json_x.json", "nohistory_running_job_json_x.stderr"
    )
    out, err, code = qstat(tmp_path, jobs, ["-f", "-F", "json", "111.vm"], 1796469349, FAKEPBS_NO_HISTORY="1")
    assert (out, err, code) == ((CAPTURES / "nohistory_running_job_json_without_x.json").read_text(), "", 0)
    out, err, code = qstat(tmp_path, jobs, [*JSON, "72.vm"], 1796469269, FAKEPBS_NO_HISTORY="1")
    assert (out, f"{err}rc={code}\n") == captured_error(
        "nohistory_finished_job_x_stdout.txt", "nohistory_finished_job_x_stderr_rc.txt"
    )
    # without -x a finished job is gone
    out, err, code = qstat(tmp_path, jobs, ["-f", "-F", "json", "72.vm"], 1796469269, FAKEPBS_NO_HISTORY="1")
    assert code == 153 and err == "qstat: Unknown Job Id 72.vm\n" and "Jobs" not in json.loads(out)


def test_server_down(tmp_path):
    (tmp_path / "pbs").mkdir()
    (tmp_path / "pbs" / "server_down").touch()
    out, err, code = qstat(tmp_path, [RUNNING], [*JSON, "48.vm"], 1796469357)
    assert (out, f"{err}rc={code}\n") == captured_error(
        "server_down_json_x_stdout.txt", "server_down_json_x_stderr_rc.txt"
    )
