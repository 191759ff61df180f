"""A stand-in PBS server for tests: qsub, qstat and qdel on one machine.

There is no PBS server to be had on the development and CI machines, so tests put the
executables of this folder (qsub, qstat, qdel, each a thin wrapper of this module) first
on PATH and run the real profiles/pbs against them, as the cluster-generic plugin's own
tests do with shell stand-ins. Behaviour copied from PBS where the profile depends on it:

* ``qsub [options] script`` copies the script, prints ``<n>.standin`` and runs the script in
  the background in its own session, with a bare environment (PATH=/usr/bin:/bin, HOME,
  PBS_JOBID, PBS_JOBNAME, PBS_O_WORKDIR = the submission folder, plus ``-v`` variables), in
  a scratch folder (PBS starts jobs in the home folder, not the submission folder), with
  stdout and stderr joined into the ``-o`` file. ``-l walltime=HH:MM:SS`` is enforced:
  past it the job's process group gets SIGTERM and the job ends with Exit_status -29.
  ``FAKEPBS_SECONDS_PER_MINUTE`` (default 60) shrinks walltime minutes for tests.
* ``qstat -f -F json -x <id>``: PBS Pro JSON (job_state Q/R/F, Exit_status when F), with an
  unescaped backslash in Variable_List as real qstat emits. With ``FAKEPBS_FLAVOR=torque``
  qstat rejects ``-F`` and answers ``qstat -f -x <id>`` in Torque's XML (state C).
  Unknown ids: "qstat: Unknown Job Id <id>" on stderr, exit 153. ``FAKEPBS_NO_HISTORY=1``
  forgets finished jobs (a server without job history).
* ``qdel <id>...``: SIGTERM to the job's process group; it ends with Exit_status 271.

Every submission's argument list is appended to ``$FAKEPBS_DIR/submissions.jsonl`` so tests
can check what the profile asked for. State lives in ``$FAKEPBS_DIR`` (required).
"""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

FLAGS_WITH_VALUE = {
    "-N",
    "-S",
    "-l",
    "-q",
    "-A",
    "-j",
    "-o",
    "-e",
    "-v",
    "-W",
    "-M",
    "-m",
    "-P",
    "-r",
}


def state_dir() -> str:
    root = os.environ.get("FAKEPBS_DIR")
    if not root:
        sys.exit("fakepbs: set FAKEPBS_DIR")
    os.makedirs(os.path.join(root, "jobs"), exist_ok=True)
    return root


def job_dir(jobid: str) -> str:
    return os.path.join(state_dir(), "jobs", jobid.split(".")[0])


def read_state(jobid: str) -> dict | None:
    try:
        with open(os.path.join(job_dir(jobid), "state.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_state(jobid: str, **changes) -> dict:
    path = os.path.join(job_dir(jobid), "state.json")
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(jobid) or {}
        state.update(changes)
        with open(path + ".tmp", "w") as f:
            json.dump(state, f)
        os.replace(path + ".tmp", path)
    return state


def next_id() -> str:
    root = state_dir()
    with open(os.path.join(root, "counter.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = os.path.join(root, "counter")
        n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
        open(counter, "w").write(str(n))
    return f"{n}.standin"


def parse_qsub(argv: list[str]) -> tuple[dict, str]:
    """Options (lists per flag) and the script path (the last argument)."""
    opts: dict[str, list[str]] = {}
    i = 0
    while i < len(argv) - 1:
        flag = argv[i]
        if flag in FLAGS_WITH_VALUE:
            opts.setdefault(flag, []).append(argv[i + 1])
            i += 2
        else:
            opts.setdefault(flag, []).append("")
            i += 1
    return opts, argv[-1]


def walltime_seconds(opts: dict) -> float | None:
    scale = float(os.environ.get("FAKEPBS_SECONDS_PER_MINUTE", "60"))
    for request in opts.get("-l", []):
        match = re.search(r"walltime=(\d+):(\d+):(\d+)", request)
        if match:
            h, m, s = (int(g) for g in match.groups())
            return (h * 60 + m + s / 60) * scale
    return None


def qsub(argv: list[str]) -> int:
    if not argv:
        print("usage: qsub [options] script", file=sys.stderr)
        return 2
    opts, script = parse_qsub(argv)
    if not os.path.isfile(script):
        print(f"qsub: script file:: No such file or directory {script}", file=sys.stderr)
        return 2
    for out in opts.get("-o", []):
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            print(f"qsub: output folder of {out} does not exist", file=sys.stderr)
            return 2
    jobid = next_id()
    folder = job_dir(jobid)
    os.makedirs(folder)
    shutil.copy(script, os.path.join(folder, "script"))
    with open(os.path.join(state_dir(), "submissions.jsonl"), "a") as f:
        f.write(json.dumps({"id": jobid, "argv": argv}) + "\n")
    write_state(jobid, id=jobid, state="Q", opts=opts, workdir=os.getcwd(), submitted=time.time())
    subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "run", jobid],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=dict(os.environ),
        cwd=folder,
    )
    print(jobid)
    return 0


def run(jobid: str) -> int:
    """The job's life: start, wait (enforcing walltime), record the exit status."""
    state = read_state(jobid)
    opts, folder = state["opts"], job_dir(jobid)
    if state.get("deleted"):  # qdel while queued
        write_state(jobid, state="F", exit_status=271, finished=time.time())
        return 0
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/"),
        "LANG": "C.UTF-8",
        "PBS_JOBID": jobid,
        "PBS_JOBNAME": (opts.get("-N") or ["script"])[0],
        "PBS_O_WORKDIR": state["workdir"],
        "PBS_O_HOST": "localhost",
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "FAKEPBS_DIR": os.environ["FAKEPBS_DIR"],
    }
    for spec in opts.get("-v", []):
        for item in spec.split(","):
            key, _, value = item.partition("=")
            env[key] = value
    if "-V" in opts:
        env.update(os.environ)
    out = (opts.get("-o") or [os.path.join(folder, "output")])[0]
    shell = (opts.get("-S") or ["/bin/sh"])[0]
    scratch = os.path.join(folder, "home")
    os.makedirs(scratch, exist_ok=True)
    with open(out, "w") as log:
        proc = subprocess.Popen(
            [shell, os.path.join(folder, "script")],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=scratch,
            start_new_session=True,
        )
        write_state(jobid, state="R", pgid=proc.pid, started=time.time())
        limit = walltime_seconds(opts)
        try:
            code = proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.write(f"=>> PBS: job killed: walltime {limit:.0f} exceeded limit {limit:.0f}\n")
            code = -29
        else:
            if code < 0:  # killed by a signal: PBS reports 256 + signal
                code = 256 - code
    write_state(jobid, state="F", exit_status=code, finished=time.time())
    return 0


def pbspro_json(job: dict) -> str:
    """One job as ``qstat -f -F json -x`` prints it, including its invalid escape."""
    fields = {
        "Job_Name": (job["opts"].get("-N") or ["script"])[0],
        "Job_Owner": "tester@localhost",
        "job_state": job["state"],
        "queue": (job["opts"].get("-q") or ["workq"])[0],
        "server": "standin",
        "Resource_List": {"select": " ".join(job["opts"].get("-l", []))},
    }
    if job["state"] == "F":
        fields["Exit_status"] = job["exit_status"]
    body = json.dumps(fields, indent=4)[:-2]
    # qstat does not escape backslashes of environment values: "\h" is no JSON escape
    variables = (
        ',\n    "Variable_List":{\n        "PS1":"[\\u@\\h \\W]\\$ ",\n'
        f'        "PBS_O_WORKDIR":"{job["workdir"]}"\n    }}\n}}'
    )
    text = body + variables
    return (
        '{\n"timestamp":%d,\n"pbs_version":"2022.1.1",\n"pbs_server":"standin",\n"Jobs":{\n"%s":%s\n}\n}\n'
        % (time.time(), job["id"], text)
    )


def torque_xml(job: dict) -> str:
    state = "C" if job["state"] == "F" else job["state"]
    exit_status = f"<exit_status>{job['exit_status']}</exit_status>" if state == "C" else ""
    return (
        f"<Data><Job><Job_Id>{job['id']}</Job_Id><Job_Name>{(job['opts'].get('-N') or ['script'])[0]}"
        f"</Job_Name><job_state>{state}</job_state>{exit_status}</Job></Data>"
    )


def qstat(argv: list[str]) -> int:
    flavor = os.environ.get("FAKEPBS_FLAVOR", "pro")
    if flavor == "torque" and "-F" in argv:
        print("qstat: invalid option -- 'F'", file=sys.stderr)
        print(
            "usage: qstat [-f [-1]] [-W site_specific] [-x] [ job_identifier... ]", file=sys.stderr
        )
        return 2
    ids = [a for a in argv if not a.startswith("-") and a != "json"]
    code = 0
    for jobid in ids:
        job = read_state(jobid)
        forgotten = job and job["state"] == "F" and os.environ.get("FAKEPBS_NO_HISTORY") == "1"
        if job is None or forgotten:
            print(f"qstat: Unknown Job Id {jobid}", file=sys.stderr)
            code = 153
            continue
        print(pbspro_json(job) if flavor == "pro" else torque_xml(job), end="")
    return code


def qdel(argv: list[str]) -> int:
    code = 0
    for jobid in argv:
        job = read_state(jobid)
        if job is None or job["state"] == "F":
            print(f"qdel: Unknown Job Id {jobid}", file=sys.stderr)
            code = 153
            continue
        if job.get("pgid"):
            try:
                os.killpg(job["pgid"], signal.SIGTERM)
            except ProcessLookupError:
                pass
        write_state(jobid, deleted=True)
    return code


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    return {"qsub": qsub, "qstat": qstat, "qdel": qdel, "run": lambda a: run(a[0])}[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
