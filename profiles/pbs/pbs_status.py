#!/usr/bin/env python3
"""Answer ``success``, ``failed`` or ``running`` for one PBS job id.

snakemake-executor-plugin-cluster-generic calls ``pbs_status.py '<jobid>'`` for every
active job in every status round and expects exactly one of those words on stdout. A
non-zero exit status would stop the whole workflow, so this script exits 0 for any job id
(only a wrong command line, a profile error, exits 2).

How the answer is found. qstat's exit status and stderr, not whether stdout parses, say
whether an answer is usable: OpenPBS prints a JSON skeleton without ``Jobs`` on stdout on
every error (unknown job, no job history, server down).

1. ``qstat -f -F json -x <id>`` (PBS Pro / OpenPBS; ``-x`` includes finished jobs).
   Finished states are ``F`` (and ``X`` for array subjobs): ``Exit_status`` 0 is success,
   anything else (1, -29 walltime exceeded, -27 memory exceeded, 271 = 256 + SIGTERM, ...)
   and a deleted job (substate 91, whatever its ``Exit_status``: root jobs show 0) are
   failures, so that Snakemake's ``retries`` resubmit the job with ``attempt + 1``. A job
   queued with the scheduler's comment "Can Never Run: ..." (it asks for more than any
   node has) is deleted and answered ``failed``, the comment on stderr. Invalid JSON
   escapes (older PBS Pro versions) are doubled; if the text still does not parse the
   fields are read with regular expressions.
2. A server without job history refuses ``-x`` for every job ("PBS is not configured to
   maintain job history", exit 0): the job is asked for without ``-x``, which lists live
   jobs; a finished job is then unknown (step 4).
3. Torque's qstat rejects ``-F``; then ``qstat -f -x <id>`` (XML in Torque) is read:
   state ``C`` is finished, ``exit_status`` as above.
4. An unknown job ("Unknown Job Id": history expired or disabled, Torque's
   ``keep_completed`` over) is answered from the exit status the profile's jobscript writes
   to ``.snakemake/pbs/<id>.exit`` when the job's command ends; without that file the job
   died without finishing its command (walltime, memory, node failure, qdel): failed.
5. Any other answer (server down: exit 255 "cannot connect to server", a timeout, an
   answer without the job) is retried with growing pauses (2, 5, 10 s;
   VOCABSEG_PBS_STATUS_PAUSES="1,1" sets others); if it persists the answer is
   ``running`` and the error goes to stderr: a server that does not answer about a job
   says nothing about it, and the next status round asks again.

Standard library only: the plugin runs this with whatever ``python3`` is on PATH.
"""

import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

SUCCESS, FAILED, RUNNING = "success", "failed", "running"
FINISHED_STATES = {"pro": ("F", "X"), "torque": ("C",)}
MARKER_DIR = os.path.join(".snakemake", "pbs")
UNKNOWN_JOB = re.compile(r"Unknown Job Id|Job has finished|history .*(?:expired|purged)", re.IGNORECASE)
NO_HISTORY = re.compile(r"not configured to maintain job history", re.IGNORECASE)
NEVER_RUNS = "Can Never Run"
DELETED_SUBSTATE = 91
TORQUE_REJECTS_F = re.compile(r"invalid option|illegal option|unknown option|usage:", re.IGNORECASE)
ESCAPE = re.compile(r'\\(["\\/bfnrt]|u[0-9a-fA-F]{4})?')  # a backslash and what it escapes
RETRY_PAUSES = (2.0, 5.0, 10.0)  # seconds between qstat attempts on a server error
PAUSES_VARIABLE = "VOCABSEG_PBS_STATUS_PAUSES"  # e.g. "1,1": other pauses (and their count)


class UnknownJob(Exception):
    """The server does not know the job (any more)."""


class NeverRuns(Exception):
    """The scheduler says the job can never run; the message is its comment."""


def exit_answer(code) -> str:
    """``success`` for exit status 0, ``failed`` for any other (or a missing) status."""
    try:
        return SUCCESS if int(code) == 0 else FAILED
    except (TypeError, ValueError):
        return FAILED


def state_answer(state: str, code, flavor: str, substate=None, comment: str = "") -> str:
    """Answer from a job state letter, its exit status (None while running), PBS Pro's
    substate and comment. Raises NeverRuns for a queued job the scheduler will never run."""
    if state in FINISHED_STATES[flavor]:
        if str(substate) == str(DELETED_SUBSTATE):  # qdel: never a success
            return FAILED
        return exit_answer(code)
    if state == "Q" and str(comment).startswith(NEVER_RUNS):
        raise NeverRuns(str(comment))
    return RUNNING


def same_job(key: str, jobid: str) -> bool:
    """``1234.pbs01`` matches ``1234.pbs01.cluster.local`` (servers add or drop the domain)."""
    return key == jobid or key.split(".")[0] == jobid.split(".")[0]


def loads_lenient(text: str):
    """json.loads that tolerates qstat's invalid escapes and raw control characters.

    A backslash that starts no valid JSON escape (``\\h`` in ``PS1``, ``\\u@``) is doubled;
    valid escapes, ``\\\\`` included, are kept (the scan pairs them left to right).
    """
    try:
        return json.loads(text, strict=False)
    except json.JSONDecodeError:
        fixed = ESCAPE.sub(lambda m: m.group(0) if m.group(1) else "\\\\", text)
        return json.loads(fixed, strict=False)


def parse_pbspro_json(text: str, jobid: str) -> str:
    """Answer from ``qstat -f -F json -x`` output; UnknownJob if the job is not in it.

    ``{"Jobs": {"<id>": {"job_state": "F", "Exit_status": 0, ...}}}``
    """
    try:
        jobs = loads_lenient(text).get("Jobs") or {}
    except (json.JSONDecodeError, AttributeError):
        return parse_fields(
            text, jobid, r'"job_state"\s*:\s*"(\w)"', r'"Exit_status"\s*:\s*(-?\d+)', "pro",
            r'"substate"\s*:\s*(\d+)',
        )
    for key, job in jobs.items():
        if same_job(key, jobid):
            return state_answer(
                str(job.get("job_state", "")),
                job.get("Exit_status"),
                "pro",
                job.get("substate"),
                str(job.get("comment", "")),
            )
    raise UnknownJob(jobid)


def parse_torque_xml(text: str, jobid: str) -> str:
    """Answer from Torque's ``qstat -f -x`` XML; UnknownJob if the job is not in it.

    ``<Data><Job><Job_Id>..</Job_Id><job_state>C</job_state><exit_status>0</exit_status>..``
    """
    try:
        root = ET.fromstring(text.strip())
    except ET.ParseError:
        return parse_fields(
            text, jobid, r"<job_state>\s*(\w)\s*<", r"<exit_status>\s*(-?\d+)\s*<", "torque"
        )
    for job in root.iter("Job"):
        if same_job((job.findtext("Job_Id") or "").strip(), jobid):
            code = job.findtext("exit_status")
            return state_answer((job.findtext("job_state") or "").strip(), code, "torque")
    raise UnknownJob(jobid)


def parse_fields(
    text: str, jobid: str, state_re: str, exit_re: str, flavor: str, substate_re: str = ""
) -> str:
    """Last resort for output no parser accepts: find the fields by pattern.

    Only used on output for a single job id, so the first match belongs to it.
    """
    state = re.search(state_re, text)
    if state is None:
        raise UnknownJob(jobid)
    code = re.search(exit_re, text)
    substate = re.search(substate_re, text) if substate_re else None
    return state_answer(
        state.group(1), code.group(1) if code else None, flavor, substate and substate.group(1)
    )


def run_qstat(args: list[str], timeout: float = 60.0) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) of one qstat call; a timeout is reported as exit 124."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return 124, "", f"{' '.join(args)}: no answer within {timeout:.0f} s"
    except OSError as err:
        return 127, "", f"{args[0]}: {err.strerror}"
    return proc.returncode, proc.stdout, proc.stderr


def pbspro_answer(code: int, out: str, err: str, jobid: str) -> str:
    """Answer from one ``qstat -f -F json`` call: the job's entry if qstat exited 0 and
    listed it; UnknownJob if qstat said so; RuntimeError for anything else."""
    if code == 0:
        try:
            return parse_pbspro_json(out, jobid)
        except UnknownJob:
            raise RuntimeError(f"qstat exit 0 without job {jobid}: {err.strip()[:500]}") from None
    if UNKNOWN_JOB.search(err):
        raise UnknownJob(jobid)
    raise RuntimeError(f"qstat exit {code}: {(err or out).strip()[:500]}")


def query_once(jobid: str, run=run_qstat) -> str:
    """One round: PBS Pro JSON (without ``-x`` on a server without job history), else
    Torque XML. Raises UnknownJob, NeverRuns or RuntimeError."""
    code, out, err = run(["qstat", "-f", "-F", "json", "-x", jobid])
    if NO_HISTORY.search(err):
        return pbspro_answer(*run(["qstat", "-f", "-F", "json", jobid]), jobid)
    if code == 0 or UNKNOWN_JOB.search(err) or out.lstrip().startswith("{"):
        return pbspro_answer(code, out, err, jobid)
    if code != 0 and TORQUE_REJECTS_F.search(err + out):
        code, out, err = run(["qstat", "-f", "-x", jobid])
        if out.lstrip().startswith("<"):
            return parse_torque_xml(out, jobid)
        if UNKNOWN_JOB.search(err + out):
            raise UnknownJob(jobid)
    raise RuntimeError(f"qstat exit {code}: {(err or out).strip()[:500]}")


def marker_answer(jobid: str, marker_dir: str = MARKER_DIR) -> str:
    """Answer for a job the server forgot: its recorded exit status, or failed."""
    path = os.path.join(marker_dir, f"{jobid}.exit")
    try:
        with open(path) as f:
            return exit_answer(f.read().strip())
    except OSError:
        return FAILED


def job_status(
    jobid: str, run=run_qstat, sleep=time.sleep, pauses=RETRY_PAUSES, marker_dir: str = MARKER_DIR
) -> str:
    """The answer for one job id, with retries on server errors (see module docstring)."""
    error = None
    for attempt in range(len(pauses) + 1):
        if attempt:
            sleep(pauses[attempt - 1])
        try:
            return query_once(jobid, run)
        except UnknownJob:
            return marker_answer(jobid, marker_dir)
        except NeverRuns as never:
            run(["qdel", jobid])
            print(
                f"pbs_status.py: {jobid}: the scheduler says: {never}. The job asks for more "
                "than any node has; deleted it. Lower the rule's resources for this site "
                "(docs/clusters.md, 'A small site').",
                file=sys.stderr,
            )
            return FAILED
        except RuntimeError as err:
            error = err
    print(f"pbs_status.py: {jobid}: {error}; assuming the job is still running", file=sys.stderr)
    return RUNNING


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: pbs_status.py <jobid>", file=sys.stderr)
        return 2
    pauses = RETRY_PAUSES
    if os.environ.get(PAUSES_VARIABLE):
        pauses = tuple(float(p) for p in os.environ[PAUSES_VARIABLE].split(","))
    print(job_status(argv[0].strip(), pauses=pauses))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
