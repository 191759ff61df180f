#!/usr/bin/env python3
"""Submit one Snakemake job to PBS Pro / OpenPBS / Torque with qsub.

snakemake-executor-plugin-cluster-generic calls ``pbs_submit.py <jobscript>``; this
script reads the job's properties from the jobscript (the ``# properties = {json}``
line Snakemake writes), turns its threads and resources into qsub options, submits,
and prints the job id qsub printed (the plugin takes the first stdout line as the
external job id).

Resource mapping (the rules' standard resources plus site settings from the profile's
``default-resources`` / ``set-resources``)::

    threads, gpu, cpus_per_gpu  ->  ncpus = max(threads, gpu * cpus_per_gpu)  (cpus_per_gpu
                                     counts only on GPU jobs; tasks_per_gpu is SLURM-only)
    mem_mb                      ->  mem=<mem_mb>mb
    gpu                         ->  ngpus=<gpu>                 (only when gpu > 0; the site's
                                     name for it with pbs_gpu_resource, e.g. gpus=<gpu>)
    gpu_model + pbs_gpu_attribute -> <pbs_gpu_attribute>=<gpu_model>   (e.g. gpu_type=A100)
    runtime (minutes)           ->  -l walltime=HH:MM:SS
    pbs_queue / pbs_account     ->  -q / -A
    pbs_flavor                  ->  "pro" (default): -l select=1:ncpus=..:mem=..[:ngpus=..]
                                     "torque":        -l nodes=1:ppn=..[:gpus=..],mem=..
    pbs_extra                   ->  further qsub arguments, split like a shell would

The job's output and error go to one file per attempt (``-j oe -o``), next to the rule's
log: ``logs/<study>/<rule>/<wildcards>.pbs.attempt<N>.log`` (see log_path), below the
directory Snakemake runs in. The bin folder of the Python
that runs the job (read from the jobscript's command) is passed as VOCABSEG_ENV_BIN
(``qsub -v``); the profile's jobscript puts it first on PATH, so the job finds
``vocabseg`` and ``torchrun`` without inheriting the login shell's environment.

Standard library only: the plugin runs this with whatever ``python3`` is on PATH.
"""

import json
import os
import re
import shlex
import subprocess
import sys

try:  # the project's error type when the package is importable; the same message otherwise
    from vocabseg.errors import InputError
except ImportError:  # pragma: no cover - depends on the interpreter running the profile

    class InputError(ValueError):
        """Bad input the user must fix; the message names the offending key."""


PROPERTIES = re.compile(r"^# properties = (\{.*\})\s*$", re.MULTILINE)
PYTHON_OF_JOB = re.compile(r"(\S+) -m snakemake\b")
ATTEMPT = re.compile(r"--attempt (\d+)")
SAFE = re.compile(r"[^A-Za-z0-9_.=+-]+")
LOG_ROOT = os.path.join("logs", "pbs")
UNKNOWN_RESOURCE = re.compile(r"Unknown resource:?\s*([\w.-]+)", re.IGNORECASE)
GPU_RESOURCE = "ngpus"  # not built into OpenPBS: sites define it (docs/clusters.md)


def read_jobscript(path: str) -> tuple[dict, str]:
    """The job properties (JSON dict) and the full text of a Snakemake jobscript."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError as err:
        raise InputError(f"{path}: cannot read the jobscript ({err.strerror})") from None
    match = PROPERTIES.search(text)
    if match is None:
        raise InputError(f"{path}: no '# properties = {{...}}' line; not a Snakemake jobscript")
    return json.loads(match.group(1)), text


def job_label(props: dict) -> str:
    """The rule name (``group_<id>`` for a group job)."""
    if props.get("type") == "group":
        return f"group_{props.get('groupid', 'job')}"
    return str(props.get("rule", "job"))


def wildcard_label(props: dict) -> str:
    """Wildcard values joined by '-', made safe for file and job names ('job' if none)."""
    values = [str(v) for v in (props.get("wildcards") or {}).values()]
    text = SAFE.sub("_", "-".join(values)).strip("_")
    return text or "job"


def job_name(props: dict, limit: int = 64) -> str:
    """A PBS job name: starts with a letter, no whitespace, at most ``limit`` chars.

    Example: rule train, wildcards {approach: lowerbound} -> ``train.lowerbound``.
    """
    name = job_label(props)
    if props.get("wildcards"):
        name += "." + wildcard_label(props)
    name = SAFE.sub("_", name)
    if not name[:1].isalpha():
        name = "j" + name
    return name[:limit]


def as_int(resources: dict, key: str, default: int = 0) -> int:
    """An integer resource; a clear error naming the key otherwise."""
    value = resources.get(key, default)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"resource {key}={value!r}: expected a number") from None
    if number < 0 or number != int(number):
        raise InputError(f"resource {key}={value!r}: expected a whole number >= 0")
    return int(number)


def walltime(minutes: int) -> str:
    """Minutes as PBS walltime ``HH:MM:SS`` (hours may exceed 99). 90 -> ``01:30:00``."""
    hours, mins = divmod(int(minutes), 60)
    return f"{hours:02d}:{mins:02d}:00"


def ncpus_of(props: dict) -> int:
    """Cores of the one chunk: max(threads, gpu * cpus_per_gpu) on GPU jobs, threads otherwise."""
    res = props.get("resources") or {}
    threads = max(1, int(props.get("threads") or 1))
    gpus = as_int(res, "gpu")
    per_gpu = as_int(res, "cpus_per_gpu")
    if gpus > 0 and per_gpu > 0:
        return max(threads, gpus * per_gpu)
    return threads


def gpu_resource_of(res: dict) -> str:
    """The chunk resource that counts GPUs: ``pbs_gpu_resource``, ``ngpus`` by default."""
    return str(res.get("pbs_gpu_resource") or GPU_RESOURCE)


def refusal_hint(message: str, res: dict) -> str:
    """What to do about a qsub refusal that names an unknown resource ('' otherwise)."""
    match = UNKNOWN_RESOURCE.search(message)
    if match is None:
        return ""
    name = match.group(1)
    text = f"the PBS server does not define the resource '{name}' this job asks for. "
    if name == gpu_resource_of(res):
        return text + (
            f"GPUs are counted with it: ask the site to define it (qmgr -c \"create resource "
            f"{name} type=long, flag=nh\", add {name} to the resources line of sched_config) or "
            "set pbs_gpu_resource in the profile's default-resources to the site's GPU resource "
            "(docs/clusters.md)"
        )
    if name == res.get("pbs_gpu_attribute"):
        return text + "It is the profile's pbs_gpu_attribute: use the site's name for the GPU model"
    return text + "Check the profile's resources and pbs_extra"


def resource_request(props: dict) -> list[str]:
    """The ``-l`` options: chunk (select or nodes) and walltime."""
    res = props.get("resources") or {}
    flavor = str(res.get("pbs_flavor") or "pro").lower()
    if flavor not in ("pro", "torque"):
        raise InputError(f"resource pbs_flavor={flavor!r}: expected 'pro' or 'torque'")
    ncpus = ncpus_of(props)
    mem_mb = as_int(res, "mem_mb")
    gpus = as_int(res, "gpu")
    model = res.get("gpu_model")
    attribute = res.get("pbs_gpu_attribute")
    gpu_resource = gpu_resource_of(res)
    if model and gpus > 0 and not attribute:
        raise InputError(
            f"resource gpu_model={model!r} needs pbs_gpu_attribute: the site's chunk resource "
            "naming the GPU model (e.g. gpu_type, gpu_cap), set in the profile's default-resources"
        )
    if flavor == "pro":
        chunk = f"select=1:ncpus={ncpus}"
        if mem_mb:
            chunk += f":mem={mem_mb}mb"
        if gpus:
            chunk += f":{gpu_resource}={gpus}"
            if model:
                chunk += f":{attribute}={model}"
        request = ["-l", chunk]
    else:  # Torque: nodes/ppn, GPU count as gpus, GPU model as a node property
        chunk = f"nodes=1:ppn={ncpus}"
        if gpus:
            chunk += f":gpus={gpus}"
            if model:
                chunk += f":{model}"
        if mem_mb:
            chunk += f",mem={mem_mb}mb"
        request = ["-l", chunk]
    runtime = as_int(res, "runtime")
    if runtime:
        request += ["-l", f"walltime={walltime(runtime)}"]
    return request


def log_path(props: dict, jobscript_text: str, root: str = LOG_ROOT) -> str:
    """One file per attempt of a job, next to the rule's log so that it is per study.

    Rule log ``logs/<study>/train/a.log`` -> ``logs/<study>/train/a.pbs.attempt<N>.log``;
    a job without a rule log (group jobs) -> ``<root>/<rule>/<wildcards>.attempt<N>.log``.
    """
    match = ATTEMPT.search(jobscript_text)
    attempt = match.group(1) if match else "1"
    logs = props.get("log") or []
    if props.get("type") != "group" and logs:
        stem = logs[0][: -len(".log")] if logs[0].endswith(".log") else logs[0]
        return f"{stem}.pbs.attempt{attempt}.log"
    return os.path.join(root, job_label(props), f"{wildcard_label(props)}.attempt{attempt}.log")


def env_bin(jobscript_text: str) -> str:
    """Bin folder of the Python that runs the job (the jobscript's ``<python> -m snakemake``)."""
    match = PYTHON_OF_JOB.search(jobscript_text)
    python = match.group(1).strip("'\"") if match else sys.executable
    return os.path.dirname(python)


def qsub_args(
    props: dict, jobscript: str, jobscript_text: str = "", workdir: str = "."
) -> list[str]:
    """The full qsub command line for one job (the jobscript path last).

    Example (rule train, 2 GPUs with cpus_per_gpu=8, mem_mb=32000, runtime=720, queue gpu)::

        qsub -N train.lowerbound -S /bin/bash -l select=1:ncpus=16:mem=32000mb:ngpus=2
             -l walltime=12:00:00 -q gpu -j oe -o <workdir>/logs/<study>/train/lowerbound.pbs.attempt1.log
             -v VOCABSEG_ENV_BIN=<venv>/bin <jobscript>
    """
    res = props.get("resources") or {}
    args = ["qsub", "-N", job_name(props), "-S", "/bin/bash", *resource_request(props)]
    if res.get("pbs_queue"):
        args += ["-q", str(res["pbs_queue"])]
    if res.get("pbs_account"):
        args += ["-A", str(res["pbs_account"])]
    log = os.path.abspath(os.path.join(workdir, log_path(props, jobscript_text)))
    args += ["-j", "oe", "-o", log]
    bin_dir = env_bin(jobscript_text)
    if bin_dir and "," not in bin_dir:  # qsub -v separates variables with commas
        args += ["-v", f"VOCABSEG_ENV_BIN={bin_dir}"]
    if res.get("pbs_extra"):
        args += shlex.split(str(res["pbs_extra"]))
    return [*args, jobscript]


def submit(jobscript: str, run=subprocess.run) -> str:
    """Build the command, make the log folder, run qsub; returns the job id it printed."""
    props, text = read_jobscript(jobscript)
    args = qsub_args(props, jobscript, text)
    os.makedirs(os.path.dirname(args[args.index("-o") + 1]), exist_ok=True)
    proc = run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        message = proc.stderr.strip() or proc.stdout.strip()
        hint = refusal_hint(message, props.get("resources") or {})
        raise RuntimeError(
            f"qsub failed (exit {proc.returncode}): {message}\n"
            + (f"{hint}\n" if hint else "")
            + f"command: {shlex.join(args)}"
        )
    jobid = proc.stdout.strip().splitlines()[0].strip() if proc.stdout.strip() else ""
    if not jobid:
        raise RuntimeError(f"qsub printed no job id; command: {shlex.join(args)}")
    return jobid


def main(argv: list[str]) -> int:
    if len(argv) < 1:
        print("usage: pbs_submit.py <jobscript>", file=sys.stderr)
        return 2
    try:
        print(submit(argv[-1]))
    except (InputError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
