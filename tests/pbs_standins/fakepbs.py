"""A stand-in PBS server for tests: qsub, qstat and qdel on one machine.

There is no PBS server to be had on the development and CI machines, so tests put the
executables of this folder (qsub, qstat, qdel, each a thin wrapper of this module) first
on PATH and run the real profiles/pbs against them. What qstat prints is OpenPBS 23.06's
output byte for byte (tests/test_pbs_standins.py compares it with outputs captured on a
real server): the same attributes in the same order for each job state, the same JSON
layout (tab indents, ``": "``; the job-less skeleton with ``":\\t"``), the same line
wrapping of ``qstat -f``, and the same exit status, stderr and stdout skeleton for an
unknown job, a server without job history and a server that is down.

Behaviour, as PBS where the profile depends on it:

* ``qsub [options] script`` prints ``<n>.<server>`` and runs the script in the background
  as the session leader of a new session (as PBS's execution daemon does), with a bare
  environment (PATH=/usr/bin:/bin, HOME, PBS_JOBID, PBS_JOBNAME, PBS_O_WORKDIR, ``-v``
  variables; and the submitter's PYTHONPATH, which a real job gets only with ``-V``, so that
  tests of a source checkout run its code in the jobs), in a scratch home folder, stdout and stderr joined into the ``-o`` file.
  Resources named in ``-l`` must be known: the built-in ones plus
  ``FAKEPBS_CUSTOM_RESOURCES`` (comma-separated, default ``ngpus``, as a site that defined
  it); otherwise "qsub: Unknown resource: <name>", exit 187.
* A job asking for more than the node has (``FAKEPBS_NODE``, e.g. ``ncpus=4,mem=24105mb``;
  unlimited by default) stays queued forever with the scheduler's "Can Never Run" comment.
* ``-l walltime`` is enforced: past it every process of the job's session gets SIGTERM,
  the job ends with Exit_status -29. ``FAKEPBS_SECONDS_PER_MINUTE`` (default 60) shrinks
  walltime minutes for tests.
* ``qdel``: SIGTERM to every process of the job's session (not only its process group);
  the job ends deleted (substate 91), Exit_status 271 after running, none if it never ran.
* ``resources_used`` is sampled like the execution daemon does: CPU time and memory of the
  processes in the job's session only. A process that starts its own session escapes it.
* ``qstat -f [-F json] [-x] <id>...``. ``FAKEPBS_NO_HISTORY=1``: a server with
  ``job_history_enable=False`` (``-x`` is refused for every job, finished jobs are
  unknown; Torque: finished jobs are unknown). A file ``$FAKEPBS_DIR/server_down``: the server does not answer.
  ``FAKEPBS_FLAVOR=torque``: qstat rejects ``-F`` and answers ``-f -x`` in Torque's XML.

Every submission's argument list is appended to ``$FAKEPBS_DIR/submissions.jsonl`` so tests
can check what the profile asked for. State lives in ``$FAKEPBS_DIR`` (required), one
``jobs/<n>/state.json`` per job; a test may write such a state itself to put a job in a
given situation. ``FAKEPBS_SERVER`` (default ``standin``) names the server and its only
host, ``FAKEPBS_USER`` the job owner, ``FAKEPBS_NOW`` pins qstat's ``timestamp``.
"""

import fcntl
import getpass
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

FLAGS_WITH_VALUE = {"-N", "-S", "-l", "-q", "-A", "-j", "-o", "-e", "-v", "-W", "-M", "-m", "-P", "-r"}
BUILTIN_RESOURCES = {"ncpus", "mem", "vmem", "walltime", "select", "place", "host", "vnode", "nodes", "cput"}
VERSION = "23.06.06"
LINE = 78  # qstat -f wraps attribute values past this column
# The captured `qstat -f` outputs had the first line of Variable_List (the submitter's
# home and login) replaced by this line; the stand-in prints the same.
ENV_REMOVED = "    Variable_List = PBS_O_HOME=/home/user,PBS_O_LOGNAME=user,... (environment removed)"
UNKNOWN_RESOURCE_EXIT = 187  # PBSE_UNKRESC 15035 % 256
SUBSTATE = {"Q": 10, "H": 20, "R": 42, "deleted": 91, "finished": 92, "failed": 93, "walltime": 93}
ENDING = {
    "finished": "and finished",
    "failed": "and failed",
    "walltime": "and exceeded resource walltime",
    "deleted": "and terminated by {owner}",
}


# ---------------------------------------------------------------- state


def state_dir() -> str:
    root = os.environ.get("FAKEPBS_DIR")
    if not root:
        sys.exit("fakepbs: set FAKEPBS_DIR")
    os.makedirs(os.path.join(root, "jobs"), exist_ok=True)
    return root


def server() -> str:
    return os.environ.get("FAKEPBS_SERVER", "standin")


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


def next_seq() -> int:
    root = state_dir()
    with open(os.path.join(root, "counter.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        counter = os.path.join(root, "counter")
        n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
        open(counter, "w").write(str(n))
    return n


def server_down() -> bool:
    return os.path.exists(os.path.join(state_dir(), "server_down"))


# ---------------------------------------------------------------- resources


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


def requests(opts: dict) -> dict[str, str]:
    """``-l`` requests by name (``select`` kept whole): ``{"select": "1:ncpus=8", ...}``."""
    out = {}
    for spec in opts.get("-l", []):
        for item in spec.split(","):
            key, _, value = item.partition("=")
            out[key] = value
    return out


def chunk_resources(select: str) -> tuple[int, dict[str, str]]:
    """``"2:ncpus=4:mem=8gb"`` -> (2, {"ncpus": "4", "mem": "8gb"})."""
    count, *items = select.split(":")
    return int(count), dict(item.partition("=")[::2] for item in items)


def kilobytes(size: str) -> int:
    """``"64000mb"`` -> 65536000 (PBS sizes are binary; no unit = bytes)."""
    match = re.fullmatch(r"(\d+)([kmgt]?)(b|w)?", size.strip().lower())
    if not match:
        return 0
    number, unit = int(match.group(1)), match.group(2)
    return number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}[unit] // 1024


def unknown_resource(opts: dict) -> str | None:
    custom = os.environ.get("FAKEPBS_CUSTOM_RESOURCES", "ngpus")
    known = BUILTIN_RESOURCES | {r.strip() for r in custom.split(",") if r.strip()}
    req = requests(opts)
    names = list(req)
    if "select" in req:
        names += list(chunk_resources(req["select"])[1])
    return next((name for name in names if name not in known), None)


def resource_list(opts: dict) -> dict:
    """Resource_List as the server derives it from ``-l`` (keys sorted as qstat prints)."""
    req = requests(opts)
    select = req.get("select", "1:ncpus=1")
    count, chunk = chunk_resources(select)
    out: dict = {"ncpus": count * int(chunk.get("ncpus", 1)), "nodect": count, "select": select}
    if "mem" in chunk:
        out["mem"] = chunk["mem"] if count == 1 else f"{count * kilobytes(chunk['mem'])}kb"
    if "ngpus" in chunk:
        out["ngpus"] = count * int(chunk["ngpus"])
    out["place"] = req.get("place", "free" if "select" in req else "pack")
    if "walltime" in req:
        out["walltime"] = req["walltime"]
    return dict(sorted(out.items()))


def walltime_seconds(opts: dict) -> float | None:
    scale = float(os.environ.get("FAKEPBS_SECONDS_PER_MINUTE", "60"))
    match = re.fullmatch(r"(\d+):(\d+):(\d+)", requests(opts).get("walltime", ""))
    if not match:
        return None
    h, m, s = (int(g) for g in match.groups())
    return (h * 60 + m + s / 60) * scale


def never_runs(resources: dict) -> str | None:
    """The scheduler's comment for a request the node cannot ever satisfy, else None."""
    node = dict(item.partition("=")[::2] for item in os.environ.get("FAKEPBS_NODE", "").split(",") if item)
    for name, have in node.items():
        want = resources.get(name)
        if want is None:
            continue
        too_much = kilobytes(str(want)) > kilobytes(have) if name in ("mem", "vmem") else int(want) > int(have)
        if too_much:
            return f"Can Never Run: Insufficient amount of resource: {name} (R: {want} A: {have} T: {have})"
    return None


# ---------------------------------------------------------------- qsub and the job's life


def qsub(argv: list[str]) -> int:
    if not argv:
        print("usage: qsub [options] script", file=sys.stderr)
        return 2
    opts, script = parse_qsub(argv)
    if not os.path.isfile(script):
        print(f"qsub: script file:: No such file or directory {script}", file=sys.stderr)
        return 2
    bad = unknown_resource(opts)
    if bad:
        print(f"qsub: Unknown resource: {bad}", file=sys.stderr)
        return UNKNOWN_RESOURCE_EXIT
    for out in opts.get("-o", []):
        if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
            print(f"qsub: output folder of {out} does not exist", file=sys.stderr)
            return 2
    seq, host = next_seq(), server()
    jobid = f"{seq}.{host}"
    folder = job_dir(jobid)
    os.makedirs(folder)
    shutil.copy(script, os.path.join(folder, "script"))
    with open(os.path.join(state_dir(), "submissions.jsonl"), "a") as f:
        f.write(json.dumps({"id": jobid, "argv": argv}) + "\n")
    user = os.environ.get("FAKEPBS_USER") or getpass.getuser()
    home, workdir = os.environ.get("HOME", "/"), os.getcwd()
    name = (opts.get("-N") or [os.path.basename(script)])[0]
    variables = {
        "PBS_O_HOME": home,
        "PBS_O_LOGNAME": user,
        "PBS_O_PATH": os.environ.get("PATH", ""),
        "PBS_O_MAIL": f"/var/mail/{user}",
        "PBS_O_SHELL": os.environ.get("SHELL", "/bin/sh"),
        "PBS_O_INTERACTIVE_AUTH_METHOD": "resvport",
        "PBS_O_INTERACTIVE_ENCRYPT_METHOD": "",
        "PBS_O_WORKDIR": workdir,
        "PBS_O_SYSTEM": "Linux",
        "PBS_O_QUEUE": (opts.get("-q") or ["workq"])[0],
        "PBS_O_HOST": host,
    }
    for spec in opts.get("-v", []):
        for item in spec.split(","):
            key, _, value = item.partition("=")
            variables[key] = value
    now = int(time.time())
    held = "-h" in opts
    write_state(
        jobid,
        id=jobid,
        host=host,
        name=name,
        owner=f"{user}@{host}",
        opts=opts,
        workdir=workdir,
        home=home,
        variables=variables,
        submit_arguments=" ".join(argv),
        error_path=f"{host}:{(opts.get('-e') or [f'{workdir}/{name}.e{seq}'])[0]}",
        output_path=f"{host}:{(opts.get('-o') or [f'{workdir}/{name}.o{seq}'])[0]}",
        state="H" if held else "Q",
        ctime=now,
        qtime=now,
        mtime=now,
        etime=None if held else now,
        queue_rank=int(time.time() * 1e6),
    )
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


def session_processes(sid: int) -> dict[int, tuple[float, int, int]]:
    """{pid: (cpu seconds, rss kb, vsize kb)} of the processes in session ``sid``."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE") // 1024
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:
            cpu = (int(fields[11]) + int(fields[12])) / tick
            out[int(entry)] = (cpu, int(fields[21]) * page, int(fields[20]) // 1024)
    return out


def kill_session(sid: int, sig: int) -> None:
    """What PBS's execution daemon does on qdel and walltime: signal the whole session."""
    for pid in session_processes(sid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def usage(cpu: dict, peak: tuple[int, int], ncpus: int, seconds: float) -> dict:
    cput = sum(cpu.values())
    return {
        "cpupercent": int(100 * cput / seconds) if seconds > 0 else 0,
        "cput": hms(cput),
        "mem": f"{peak[0]}kb",
        "ncpus": ncpus,
        "vmem": f"{peak[1]}kb",
        "walltime": hms(seconds),
    }


def exec_vnode(host: str, resources: dict) -> str:
    """``(vm:ncpus=1)``: the host and the chunk's resources."""
    chunk = chunk_resources(resources["select"])[1]
    return "(" + ":".join([host, *(f"{k}={v}" for k, v in chunk.items())]) + ")"


def comment(job: dict, vnode: str) -> str | None:
    """The scheduler's and the server's comment: can never run, run at, and how it ended."""
    if job.get("stime") is None:
        return job.get("scheduler_comment")
    text = f"Job run at {time.strftime('%a %b %d at %H:%M', time.gmtime(job['stime']))} on {vnode}"
    if job.get("outcome"):
        text += " " + ENDING[job["outcome"]].format(owner=job["owner"])
    return text


def substate(job: dict) -> int:
    return SUBSTATE[job["outcome"] if job["state"] == "F" else job["state"]]


def wait_while_queued(jobid: str) -> dict:
    """Poll until the job is deleted (a held job, or one that can never run)."""
    while True:
        state = read_state(jobid)
        if state.get("deleted"):
            return state
        time.sleep(0.2)


def run(jobid: str) -> int:
    """The job's life: wait its turn, run as a session, record usage and the exit status."""
    state = read_state(jobid)
    opts, folder = state["opts"], job_dir(jobid)
    resources = resource_list(opts)
    comment = never_runs(resources)
    if comment:
        write_state(jobid, scheduler_comment=comment)
    if comment or state["state"] == "H":
        wait_while_queued(jobid)
    if read_state(jobid).get("deleted"):  # qdel while queued: no Exit_status
        now = int(time.time())
        write_state(jobid, state="F", outcome="deleted", mtime=now)
        return 0
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": state["home"],
        "LANG": "C.UTF-8",
        "PBS_JOBID": jobid,
        "PBS_JOBNAME": state["name"],
        "PBS_O_WORKDIR": state["workdir"],
        "PBS_O_HOST": state["host"],
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "FAKEPBS_DIR": os.environ["FAKEPBS_DIR"],
    }
    env.update({k: v for k, v in state["variables"].items() if not k.startswith("PBS_O_")})
    if os.environ.get("PYTHONPATH"):  # tests of a source checkout: its code in the jobs too
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    if "-V" in opts:
        env.update(os.environ)
    out = state["output_path"].split(":", 1)[1]
    shell = (opts.get("-S") or ["/bin/sh"])[0]
    scratch = os.path.join(folder, "home")
    os.makedirs(scratch, exist_ok=True)
    running = sum(1 for p in os.listdir(os.path.dirname(folder)) if (read_state(p) or {}).get("state") == "R")
    limit = walltime_seconds(opts)
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
        started = time.time()
        stime = int(started)
        write_state(
            jobid,
            state="R",
            stime=stime,
            mtime=stime,
            session_id=proc.pid,
            exec_host=f"{state['host']}/{running}",
            run_count=1,
            resources_used=usage({}, (0, 0), resources["ncpus"], 0),
        )
        cpu, peak, killed = {}, (0, 0), None
        while proc.poll() is None:
            procs = session_processes(proc.pid)
            for pid, (seconds, rss, vsize) in procs.items():
                cpu[pid] = max(cpu.get(pid, 0.0), seconds)
            peak = (
                max(peak[0], sum(p[1] for p in procs.values())),
                max(peak[1], sum(p[2] for p in procs.values())),
            )
            if killed is None and limit is not None and time.time() - started > limit:
                killed = time.time()
                kill_session(proc.pid, signal.SIGTERM)
            elif killed is not None and time.time() - killed > 10:
                kill_session(proc.pid, signal.SIGKILL)
            time.sleep(0.1)
        code = proc.returncode
        if killed is not None:
            log.write(f"=>> PBS: job killed: walltime {int(time.time() - started)} exceeded limit {limit:.0f}\n")
            code = -29
        elif code < 0:  # killed by a signal: PBS reports 256 + signal
            code = 256 - code
    ended = int(time.time())
    if read_state(jobid).get("deleted"):
        outcome = "deleted"
    elif killed is not None:
        outcome = "walltime"
    else:
        outcome = "finished" if code == 0 else "failed"
    write_state(
        jobid,
        state="F",
        outcome=outcome,
        exit_status=code,
        obittime=ended,
        mtime=ended,
        resources_used=usage(cpu, peak, resources["ncpus"], ended - started),
    )
    return 0


# ---------------------------------------------------------------- qstat


def stamp(epoch: int) -> str:
    return time.strftime("%a %b %e %H:%M:%S %Y", time.gmtime(epoch))


def attributes(job: dict) -> dict:
    """The job's attributes in the order and form ``qstat -f`` prints them."""
    opts, host = job["opts"], job["host"]
    ran, finished = job.get("stime") is not None, job["state"] == "F"
    manager_view = job["owner"].startswith("root@")  # the captures' root job shows these
    resources = resource_list(opts)
    vnode = exec_vnode(host, resources)
    a: dict = {"Job_Name": job["name"], "Job_Owner": job["owner"]}
    if ran:
        a["resources_used"] = job["resources_used"]
    a.update(job_state=job["state"], queue=job["variables"].get("PBS_O_QUEUE", "workq"), server=host)
    a.update(Checkpoint="u", ctime=stamp(job["ctime"]), Error_Path=job["error_path"])
    if ran:
        a.update(exec_host=job["exec_host"], exec_vnode=vnode)
    a.update(
        Hold_Types="u" if "-h" in opts else "n",
        Join_Path=(opts.get("-j") or ["n"])[0],
        Keep_Files="n",
        Mail_Points="a",
        mtime=stamp(job["mtime"]),
        Output_Path=job["output_path"],
        Priority=0,
        qtime=stamp(job["qtime"]),
        Rerunable="True",
        Resource_List=resources,
    )
    if manager_view:
        a["schedselect"] = resources["select"]
    if ran:
        a["stime"] = stamp(job["stime"])
        if finished:
            a["obittime"] = stamp(job["obittime"])
        a["session_id"] = job["session_id"]
    if "-S" in opts:
        a["Shell_Path_List"] = opts["-S"][0]
    if ran:
        a["jobdir"] = job["home"]
    a.update(substate=substate(job), Variable_List=job["variables"])
    if manager_view:
        user = job["owner"].split("@")[0]
        a.update(euser=user, egroup=user, queue_rank=job["queue_rank"], queue_type="E")
    if comment(job, vnode):
        a["comment"] = comment(job, vnode)
    if job.get("etime") is not None:
        a["etime"] = stamp(job["etime"])
    if ran:
        a["run_count"] = job["run_count"]
        if finished:
            a.update(Stageout_status=1, Exit_status=job["exit_status"])
    a["Submit_arguments"] = job["submit_arguments"]
    if finished:
        a["history_timestamp"] = job["mtime"]
    a.update(project="_pbs_project_default", Submit_Host=host)
    return a


def wrapped(name: str, value) -> str:
    """One ``qstat -f`` attribute line: comma-separated items, wrapped with a tab past column 78."""
    if isinstance(value, dict):
        value = ",".join(f"{k}={v}" for k, v in value.items())
    text, column, first = f"    {name} = ", len(name) + 7, True
    for i, item in enumerate(str(value).split(",")):
        if i:
            text += ","
            first = False
        if len(item) + column < LINE:
            text += item
            column += len(item)
            continue
        if not first:
            text += "\n\t"
            column = 9
        for char in item:
            text += char
            column += 1
            if column > LINE:
                text += "\n\t"
                column = 8
    return text


def plain(job: dict) -> str:
    lines = [f"Job Id: {job['id']}"]
    for name, value in attributes(job).items():
        if name == "Variable_List":
            lines.append(ENV_REMOVED + "\n\t" + wrapped(name, value).split("\n\t", 1)[1])
        elif isinstance(value, dict):
            lines += [wrapped(f"{name}.{key}", v) for key, v in value.items()]
        else:
            lines.append(wrapped(name, value))
    return "\n".join(lines) + "\n\n"


def skeleton() -> dict:
    now = int(os.environ.get("FAKEPBS_NOW") or time.time())
    return {"timestamp": now, "pbs_version": VERSION, "pbs_server": server()}


def torque_xml(job: dict) -> str:
    state = "C" if job["state"] == "F" else job["state"]
    exit_status = f"<exit_status>{job.get('exit_status', 271)}</exit_status>" if state == "C" else ""
    return (
        f"<Data><Job><Job_Id>{job['id']}</Job_Id><Job_Name>{job['name']}"
        f"</Job_Name><job_state>{state}</job_state>{exit_status}</Job></Data>"
    )


def qstat(argv: list[str]) -> int:
    flavor = os.environ.get("FAKEPBS_FLAVOR", "pro")
    if flavor == "torque" and "-F" in argv:
        print("qstat: invalid option -- 'F'", file=sys.stderr)
        print("usage: qstat [-f [-1]] [-W site_specific] [-x] [ job_identifier... ]", file=sys.stderr)
        return 2
    as_json = "-F" in argv and argv[argv.index("-F") + 1] == "json"
    ids = [a for i, a in enumerate(argv) if not a.startswith("-") and argv[i - 1] != "-F"]
    if server_down():
        if as_json:
            print(json.dumps(skeleton(), indent="\t", separators=(",", ":\t")))
        print(f"Connection refused\nqstat: cannot connect to server {server()} (errno=15010)", file=sys.stderr)
        return 255
    no_history = os.environ.get("FAKEPBS_NO_HISTORY") == "1"
    code, listed, live_refused = 0, [], False
    for jobid in ids:
        job = read_state(jobid)
        if no_history and "-x" in argv and flavor == "pro":  # Torque just forgets them
            print(f"qstat: PBS is not configured to maintain job history {jobid}", file=sys.stderr)
            live_refused |= job is not None and job["state"] != "F"
        elif job is None or (no_history and job["state"] == "F"):
            print(f"qstat: Unknown Job Id {jobid}", file=sys.stderr)
            code = 153
        else:
            listed.append(job)
    if flavor == "torque":
        print("".join(torque_xml(job) for job in listed), end="")
    elif as_json and listed:
        doc = {**skeleton(), "Jobs": {job["id"]: attributes(job) for job in listed}}
        print(json.dumps(doc, indent="\t"))
    elif as_json:  # a live job refused for want of history gets the other layout
        print(json.dumps(skeleton(), indent="\t", separators=(",", ": " if live_refused else ":\t")))
    else:
        print("".join(plain(job) for job in listed), end="")
    return code


def qdel(argv: list[str]) -> int:
    code = 0
    for jobid in argv:
        job = read_state(jobid)
        if job is None or job["state"] == "F":
            print(f"qdel: Unknown Job Id {jobid}", file=sys.stderr)
            code = 153
            continue
        if job.get("session_id"):
            write_state(jobid, deleted=True)
            kill_session(job["session_id"], signal.SIGTERM)
        else:  # never ran: finished at once, without an exit status
            write_state(jobid, deleted=True, state="F", outcome="deleted", mtime=int(time.time()))
    return code


def main(argv: list[str]) -> int:
    command, args = argv[0], argv[1:]
    return {"qsub": qsub, "qstat": qstat, "qdel": qdel, "run": lambda a: run(a[0])}[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
