"""The PBS profile (profiles/pbs): qsub arguments, qstat parsing, a run against stand-ins.

The submit and status scripts are standalone executables (the plugin runs them with any
``python3``); their functions are imported here from the files. qstat outputs in
tests/fixtures/pbs are written from the PBS Pro / OpenPBS JSON and Torque XML formats,
including the defects real qstat emits. The workflow runs go through the real profile
with the stand-in qsub/qstat/qdel of tests/pbs_standins first on PATH.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vocabseg.errors import InputError
from study_configs import TINY

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "pbs"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pbs"
STANDINS = Path(__file__).resolve().parent / "pbs_standins"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, PROFILE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sub = load("pbs_submit")
stat = load("pbs_status")


def props(rule="train", threads=1, wildcards=None, **resources):
    return {
        "type": "single",
        "rule": rule,
        "local": False,
        "wildcards": wildcards or {},
        "threads": threads,
        "resources": resources,
        "jobid": 7,
    }


def option(args: list[str], flag: str) -> list[str]:
    """Values of every occurrence of ``flag`` in an argument list."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


# ---------------------------------------------------------------- qsub arguments


def test_cpu_job_asks_for_threads_memory_and_walltime(tmp_path):
    p = props(
        "prepare",
        threads=4,
        wildcards={"city": "tinycity"},
        mem_mb=8000,
        runtime=90,
        gpu=0,
        cpus_per_gpu=8,
    )
    args = sub.qsub_args(p, "/x/job.sh", "python -m snakemake --attempt 1", workdir=str(tmp_path))
    assert args[0] == "qsub" and args[-1] == "/x/job.sh"
    assert option(args, "-N") == ["prepare.tinycity"]
    # cpus_per_gpu counts only on GPU jobs; no ngpus on a CPU job
    assert option(args, "-l") == ["select=1:ncpus=4:mem=8000mb", "walltime=01:30:00"]
    assert option(args, "-q") == [] and option(args, "-A") == []
    assert option(args, "-j") == ["oe"]
    assert option(args, "-o") == [str(tmp_path / "logs/pbs/prepare/tinycity.attempt1.log")]
    assert option(args, "-S") == ["/bin/bash"]


def test_gpu_job_asks_for_gpus_their_cores_and_the_site_gpu_model(tmp_path):
    p = props(
        "train",
        threads=1,
        wildcards={"approach": "lowerbound"},
        gpu=2,
        cpus_per_gpu=8,
        tasks_per_gpu=0,
        mem_mb=32000,
        runtime=720,
        gpu_model="A100",
        pbs_gpu_attribute="gpu_type",
    )
    p["log"] = ["logs/s1/train/lowerbound.log"]  # the job log goes next to the rule's, per study
    text = "cd /w && /opt/env/bin/python3.11 -m snakemake --target-jobs 'train:approach=lowerbound' --attempt 3"
    args = sub.qsub_args(p, "/x/job.sh", text, workdir=str(tmp_path))
    assert option(args, "-l") == [
        "select=1:ncpus=16:mem=32000mb:ngpus=2:gpu_type=A100",
        "walltime=12:00:00",
    ]
    assert option(args, "-o") == [str(tmp_path / "logs/s1/train/lowerbound.pbs.attempt3.log")]
    # the job gets the bin folder of the Python that runs it
    assert option(args, "-v") == ["VOCABSEG_ENV_BIN=/opt/env/bin"]
    # threads above gpu * cpus_per_gpu win
    assert sub.ncpus_of(props(threads=24, gpu=2, cpus_per_gpu=8)) == 24


def test_queue_account_and_extra_arguments(tmp_path):
    p = props(
        "evaluate",
        threads=2,
        wildcards={"approach": "zeroshot"},
        mem_mb=4000,
        runtime=60,
        pbs_queue="gpu",
        pbs_account="proj123",
        pbs_extra="-l place=excl -W group_list=vision",
    )
    args = sub.qsub_args(p, "/x/job.sh", "", workdir=str(tmp_path))
    assert option(args, "-q") == ["gpu"] and option(args, "-A") == ["proj123"]
    assert args[-5:] == ["-l", "place=excl", "-W", "group_list=vision", "/x/job.sh"]
    assert option(args, "-l")[:2] == ["select=1:ncpus=2:mem=4000mb", "walltime=01:00:00"]


def test_torque_flavor_uses_nodes_and_ppn(tmp_path):
    p = props(threads=1, gpu=2, cpus_per_gpu=8, mem_mb=32000, runtime=125, pbs_flavor="torque")
    args = sub.qsub_args(p, "/x/job.sh", "", workdir=str(tmp_path))
    assert option(args, "-l") == ["nodes=1:ppn=16:gpus=2,mem=32000mb", "walltime=02:05:00"]


def test_walltime_and_names():
    assert sub.walltime(1) == "00:01:00" and sub.walltime(59) == "00:59:00"
    assert sub.walltime(1500) == "25:00:00" and sub.walltime(6001) == "100:01:00"
    assert sub.job_name(props("report")) == "report"
    assert (
        sub.job_name(
            props("train_combined", wildcards={"fusion": "mean", "conf": "008", "iters": "2"})
        )
        == "train_combined.mean-008-2"
    )
    assert sub.job_name({"type": "group", "groupid": "eval"}) == "group_eval"
    assert sub.job_name(props("9lives", wildcards={"x": "a b/c"})) == "j9lives.a_b_c"
    # no runtime, no memory: the server's defaults
    assert option(sub.qsub_args(props(threads=3), "/j", ""), "-l") == ["select=1:ncpus=3"]


def test_bad_resources_name_the_key():
    with pytest.raises(InputError, match="gpu_model='a100' needs pbs_gpu_attribute"):
        sub.resource_request(props(gpu=1, gpu_model="a100"))
    with pytest.raises(InputError, match="resource gpu='two'"):
        sub.resource_request(props(gpu="two"))
    with pytest.raises(InputError, match="resource runtime=1.5: expected a whole number"):
        sub.resource_request(props(runtime=1.5))
    with pytest.raises(InputError, match="pbs_flavor='slurm'"):
        sub.resource_request(props(pbs_flavor="slurm"))


def render_jobscript(path: Path, properties: dict, exec_job: str) -> Path:
    """The profile's jobscript.sh as Snakemake fills it in (str.format), written to ``path``."""
    text = (
        (PROFILE / "jobscript.sh")
        .read_text()
        .format(properties=json.dumps(properties), exec_job=exec_job)
    )
    path.write_text(text)
    return path


def test_jobscript_properties_reach_qsub_and_submit_makes_the_log_folder(tmp_path, monkeypatch):
    p = props(
        "train",
        wildcards={"approach": "upperbound"},
        gpu=1,
        cpus_per_gpu=4,
        mem_mb=16000,
        runtime=30,
    )
    script = render_jobscript(
        tmp_path / "snakejob.train.7.sh",
        p,
        f"cd /w && {sys.executable} -m snakemake --attempt 2 && exit 0 || exit 1",
    )
    read, text = sub.read_jobscript(str(script))
    assert read == p
    calls = []

    def fake_qsub(args, **kw):
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, "4242.pbs01\n", "")

    monkeypatch.chdir(tmp_path)
    assert sub.submit(str(script), run=fake_qsub) == "4242.pbs01"
    (args,) = calls
    assert option(args, "-l") == ["select=1:ncpus=4:mem=16000mb:ngpus=1", "walltime=00:30:00"]
    assert option(args, "-v") == [f"VOCABSEG_ENV_BIN={Path(sys.executable).parent}"]
    assert (tmp_path / "logs/pbs/train").is_dir()
    assert option(args, "-o") == [str(tmp_path / "logs/pbs/train/upperbound.attempt2.log")]

    def refused(args, **kw):
        return subprocess.CompletedProcess(args, 38, "", "qsub: Unknown queue\n")

    with pytest.raises(RuntimeError, match="qsub failed \\(exit 38\\): qsub: Unknown queue"):
        sub.submit(str(script), run=refused)
    (tmp_path / "not_a_job.sh").write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(InputError, match="not_a_job.sh: no '# properties"):
        sub.read_jobscript(str(tmp_path / "not_a_job.sh"))


def test_jobscript_puts_the_environment_on_path_and_records_the_exit_status(tmp_path):
    bin_dir = tmp_path / "env" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "vocabseg").write_text('#!/bin/sh\necho from-env "$@"\n')
    (bin_dir / "vocabseg").chmod(0o755)
    out = tmp_path / "out.txt"
    script = render_jobscript(
        tmp_path / "job.sh", props(), f"cd {tmp_path} && vocabseg ok > {out} && exit 3 || exit 1"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "VOCABSEG_ENV_BIN": str(bin_dir),
        "PBS_JOBID": "17.pbs01",
        "PBS_O_WORKDIR": str(tmp_path),
    }
    res = subprocess.run(
        ["/bin/bash", str(script)], env=env, cwd="/", capture_output=True, text=True
    )
    assert out.read_text() == "from-env ok\n"
    # "exit 3" ends the subshell, the script records it and exits with it
    assert res.returncode == 3
    assert (tmp_path / ".snakemake/pbs/17.pbs01.exit").read_text() == "3\n"


# ---------------------------------------------------------------- qstat parsing


@pytest.mark.parametrize(
    "fixture, jobid, answer",
    [
        ("pbspro_running.json", "4242.pbs01", "running"),
        ("pbspro_queued.json", "4243.pbs01", "running"),
        # the server names the job with its domain; qsub printed the short form
        ("pbspro_finished_ok.json", "4242.pbs01", "success"),
        ("pbspro_finished_failed.json", "4242.pbs01", "failed"),
        ("pbspro_walltime.json", "4242.pbs01", "failed"),  # Exit_status -29
        ("pbspro_sigterm.json", "4242.pbs01", "failed"),  # Exit_status 271
    ],
)
def test_pbspro_json(fixture, jobid, answer):
    assert stat.parse_pbspro_json((FIXTURES / fixture).read_text(), jobid) == answer


@pytest.mark.parametrize(
    "fixture, answer",
    [
        ("torque_running.xml", "running"),
        ("torque_completed_ok.xml", "success"),
        ("torque_completed_failed.xml", "failed"),
        ("torque_walltime.xml", "failed"),  # exit_status 271, not well-formed XML
    ],
)
def test_torque_xml(fixture, answer):
    assert (
        stat.parse_torque_xml((FIXTURES / fixture).read_text(), "88123.torque01.cluster.local")
        == answer
    )


def test_invalid_escapes_are_repaired_not_dropped():
    jobs = stat.loads_lenient((FIXTURES / "pbspro_finished_ok.json").read_text())["Jobs"]
    job = jobs["4242.pbs01.cluster.local"]
    assert job["Variable_List"]["PS1"] == "[\\u@\\h \\W]\\$ "
    assert job["Variable_List"]["BASH_FUNC_module%%"].endswith("$*`\n}")  # a valid \n stays one
    assert job["Exit_status"] == 0 and job["comment"].endswith("finished\t")
    assert stat.loads_lenient('{"a": "x\\\\h\\q"}') == {"a": "x\\h\\q"}


def test_unparsable_output_is_read_by_field_patterns():
    text = (FIXTURES / "pbspro_walltime.json").read_text()
    with pytest.raises(ValueError):
        stat.loads_lenient(text)
    # the fallback reads the exit status, it does not just default to failure
    assert (
        stat.parse_pbspro_json(text.replace('"Exit_status":-29', '"Exit_status":0'), "4242.pbs01")
        == "success"
    )
    assert (
        stat.parse_pbspro_json(text.replace('"job_state":"F"', '"job_state":"R"'), "4242.pbs01")
        == "running"
    )
    xml = (FIXTURES / "torque_walltime.xml").read_text()
    assert (
        stat.parse_torque_xml(xml.replace("<exit_status>271", "<exit_status>0"), "88123")
        == "success"
    )


def test_job_missing_from_the_answer_is_unknown():
    with pytest.raises(stat.UnknownJob):
        stat.parse_pbspro_json((FIXTURES / "pbspro_running.json").read_text(), "9999.pbs01")
    with pytest.raises(stat.UnknownJob):
        stat.parse_torque_xml((FIXTURES / "torque_running.xml").read_text(), "9999.torque01")
    assert stat.state_answer("X", 0, "pro") == "success"  # finished array subjob
    assert stat.state_answer("F", None, "pro") == "failed"  # deleted before it ran
    assert stat.state_answer("E", None, "torque") == "running"


class FakeQstat:
    """Answers qstat calls from a list of (returncode, fixture or text, stream) and records them."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def __call__(self, args):
        self.calls.append(args)
        code, source, stream = self.answers.pop(0)
        path = FIXTURES / source
        text = path.read_text() if path.is_file() else source
        return (code, text, "") if stream == "out" else (code, "", text)


def test_pbspro_status_calls_qstat_json_with_history():
    qstat = FakeQstat((0, "pbspro_sigterm.json", "out"))
    assert stat.job_status("4242.pbs01", run=qstat, sleep=None) == "failed"
    assert qstat.calls == [["qstat", "-f", "-F", "json", "-x", "4242.pbs01"]]


def test_torque_is_detected_from_the_rejected_F_option():
    qstat = FakeQstat((2, "torque_rejects_F.stderr", "err"), (0, "torque_completed_ok.xml", "out"))
    assert stat.job_status("88123.torque01.cluster.local", run=qstat, sleep=None) == "success"
    assert qstat.calls[1] == ["qstat", "-f", "-x", "88123.torque01.cluster.local"]


@pytest.mark.parametrize(
    "answers",
    [
        [(153, "pbspro_unknown.stderr", "err")],
        # no job history: asked again without -x, the finished job is unknown
        [(0, "pbspro_no_history.stderr", "err"), (153, "pbspro_unknown.stderr", "err")],
        [(2, "torque_rejects_F.stderr", "err"), (153, "torque_unknown.stderr", "err")],
    ],
)
def test_unknown_job_is_answered_from_the_exit_marker(tmp_path, answers):
    jobid = "4250.pbs01"

    def status():
        return stat.job_status(jobid, run=FakeQstat(*answers), sleep=None, marker_dir=str(tmp_path))

    assert status() == "failed"  # no marker: the job died before its command ended
    (tmp_path / f"{jobid}.exit").write_text("0\n")
    assert status() == "success"
    (tmp_path / f"{jobid}.exit").write_text("1\n")
    assert status() == "failed"


def test_server_errors_are_retried_then_reported_running(capsys):
    pauses = []
    down = (170, "pbspro_server_down.stderr", "err")
    qstat = FakeQstat(down, down, down, down)
    assert stat.job_status("4242.pbs01", run=qstat, sleep=pauses.append) == "running"
    assert pauses == [2.0, 5.0, 10.0] and len(qstat.calls) == 4
    assert "cannot connect to server pbs01" in capsys.readouterr().err
    # a server that comes back within the retries gives the real answer
    qstat = FakeQstat(down, (0, "pbspro_finished_ok.json", "out"))
    assert stat.job_status("4242.pbs01", run=qstat, sleep=pauses.append) == "success"


def test_status_script_prints_one_word_and_exits_zero_without_qstat(tmp_path):
    env = dict(os.environ, PATH="/usr/bin:/bin")  # no qstat at all: a server error
    res = subprocess.run(
        [str(PROFILE / "pbs_status.py"), "1.none"],
        capture_output=True,
        text=True,
        env=dict(env, VOCABSEG_PBS_STATUS_PAUSES="0,0"),
        cwd=tmp_path,
        timeout=60,
    )
    assert res.returncode == 0 and res.stdout == "running\n"
    assert "qstat" in res.stderr and "assuming the job is still running" in res.stderr
    res = subprocess.run([str(PROFILE / "pbs_status.py")], capture_output=True, text=True, env=env)
    assert res.returncode == 2 and res.stdout == ""


# ---------------------------------------------------------------- stand-in server


def standin_env(tmp_path: Path, **extra) -> dict:
    path = f"{STANDINS}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return dict(os.environ, PATH=path, FAKEPBS_DIR=str(tmp_path / "pbs"), **extra)


def wait_for(jobid: str, env: dict, cwd: Path, timeout: float = 30) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        answer = subprocess.run(
            [str(PROFILE / "pbs_status.py"), jobid],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
        ).stdout.strip()
        if answer != "running":
            return answer
        time.sleep(0.2)
    raise AssertionError(f"{jobid} still running after {timeout} s")


@pytest.mark.parametrize("flavor", ["pro", "torque"])
def test_standins_success_failure_walltime_and_qdel(tmp_path, flavor):
    env = standin_env(tmp_path, FAKEPBS_FLAVOR=flavor, FAKEPBS_SECONDS_PER_MINUTE="1")
    (tmp_path / "logs").mkdir()

    def qsub(name, command, minutes=5):
        script = render_jobscript(tmp_path / f"{name}.sh", props("stub"), command)
        args = [
            "qsub",
            "-N",
            name,
            "-l",
            f"walltime={sub.walltime(minutes)}",
            "-j",
            "oe",
            "-o",
            str(tmp_path / "logs" / f"{name}.log"),
            str(script),
        ]
        return subprocess.run(
            args, capture_output=True, text=True, env=env, cwd=tmp_path, check=True
        ).stdout.strip()

    ok, bad = qsub("ok", "echo hello && exit 0 || exit 1"), qsub("bad", "exit 1")
    slow = qsub("slow", "sleep 30", minutes=1)  # killed after one "minute" (1 s)
    gone = qsub("gone", "sleep 30")
    time.sleep(0.5)
    subprocess.run(["qdel", gone], env=env, check=True)
    assert wait_for(ok, env, tmp_path) == "success"
    assert wait_for(bad, env, tmp_path) == "failed"
    assert wait_for(slow, env, tmp_path) == "failed"
    assert wait_for(gone, env, tmp_path) == "failed"
    assert (tmp_path / "logs/ok.log").read_text() == "hello\n"
    assert "walltime" in (tmp_path / "logs/slow.log").read_text()
    states = {
        j: json.loads((tmp_path / "pbs/jobs" / j.split(".")[0] / "state.json").read_text())[
            "exit_status"
        ]
        for j in (ok, bad, slow, gone)
    }
    assert states == {ok: 0, bad: 1, slow: -29, gone: 271}
    # a server without job history: the exit marker of the jobscript answers
    forget = dict(env, FAKEPBS_NO_HISTORY="1")
    assert (
        wait_for(ok, forget, tmp_path) == "success" and wait_for(bad, forget, tmp_path) == "failed"
    )
    assert wait_for(slow, forget, tmp_path) == "failed"  # killed: no marker


def standin_job(tmp_path: Path, env: dict, name: str, command: str, *options: str) -> str:
    """Submit ``command`` in the profile's jobscript to the stand-in server; its job id."""
    script = render_jobscript(tmp_path / f"{name}.sh", props("stub"), command)
    (tmp_path / "logs").mkdir(exist_ok=True)
    args = ["qsub", "-N", name, *options, "-j", "oe", "-o", str(tmp_path / "logs" / f"{name}.log"), str(script)]
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip()


def status(jobid: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(PROFILE / "pbs_status.py"), jobid], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def test_unknown_gpu_resource_is_named_with_what_to_do(tmp_path, monkeypatch):
    """OpenPBS has no built-in ngpus: qsub exits 187 "Unknown resource: ngpus"."""
    p = props("train", wildcards={"approach": "lowerbound"}, gpu=1, cpus_per_gpu=2, mem_mb=1000)
    script = render_jobscript(tmp_path / "job.sh", p, f"{sys.executable} -m snakemake --attempt 1")
    for key, value in standin_env(tmp_path, FAKEPBS_CUSTOM_RESOURCES="gpus").items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError) as refused:
        sub.submit(str(script))
    message = str(refused.value)
    assert "qsub failed (exit 187): qsub: Unknown resource: ngpus" in message
    assert "does not define the resource 'ngpus'" in message
    assert 'qmgr -c "create resource ngpus type=long, flag=nh"' in message and "pbs_gpu_resource" in message
    # the site counts GPUs as "gpus": the profile names it
    script = render_jobscript(tmp_path / "job.sh", {**p, "resources": {**p["resources"], "pbs_gpu_resource": "gpus"}}, "true")
    jobid = sub.submit(str(script))
    assert option(submissions(tmp_path)[-1], "-l") == ["select=1:ncpus=2:mem=1000mb:gpus=1"]
    assert jobid.endswith(".standin")


def test_server_outage_is_never_a_failure(tmp_path):
    """qstat exits 255 with "cannot connect" and a JSON skeleton: retried, then running."""
    env = standin_env(tmp_path, VOCABSEG_PBS_STATUS_PAUSES="0.1,0.1")
    jobid = standin_job(tmp_path, env, "short", "sleep 2 && exit 0 || exit 1")
    (tmp_path / "pbs" / "server_down").touch()
    res = status(jobid, env, tmp_path)
    assert res.stdout == "running\n"
    assert f"{jobid}: qstat exit 255: Connection refused" in res.stderr
    assert res.stderr.count("assuming the job is still running") == 1
    # the job ends while the server is down: still no answer, so "running" ...
    time.sleep(2.5)
    assert status(jobid, env, tmp_path).stdout == "running\n"
    # ... until the server answers again
    (tmp_path / "pbs" / "server_down").unlink()
    assert wait_for(jobid, env, tmp_path) == "success"


def test_server_without_job_history_reports_live_jobs_running(tmp_path):
    env = standin_env(tmp_path, FAKEPBS_NO_HISTORY="1")
    slow = standin_job(tmp_path, env, "slow", "sleep 3 && exit 0 || exit 1")
    bad = standin_job(tmp_path, env, "bad", "sleep 1; exit 4")
    time.sleep(0.5)
    # -x answers "not configured to maintain job history" with exit 0 for running jobs too
    assert status(slow, env, tmp_path).stdout == "running\n"
    assert wait_for(bad, env, tmp_path) == "failed"  # its exit marker says 4
    assert (tmp_path / f".snakemake/pbs/{bad}.exit").read_text() == "4\n"
    assert wait_for(slow, env, tmp_path) == "success"


def test_job_that_can_never_run_fails_with_the_schedulers_comment(tmp_path):
    env = standin_env(tmp_path, FAKEPBS_NODE="ncpus=4,mem=24105mb")
    jobid = standin_job(tmp_path, env, "big", "exit 0", "-l", "select=1:ncpus=2:mem=64000mb")
    time.sleep(0.5)
    res = status(jobid, env, tmp_path)
    assert res.stdout == "failed\n"
    assert (
        "Can Never Run: Insufficient amount of resource: mem (R: 64000mb A: 24105mb T: 24105mb)"
        in res.stderr
    )
    # deleted, so it does not wait in the queue for ever
    answer = subprocess.run(["qstat", "-f", "-F", "json", "-x", jobid], capture_output=True, text=True, env=env)
    job = json.loads(answer.stdout)["Jobs"][jobid]
    assert (job["job_state"], job["substate"]) == ("F", 91)


BURN = """
import time
start = time.process_time()
while time.process_time() - start < 5:
    pass
"""


def test_pbs_accounts_the_training_workers_only_under_the_launcher(tmp_path):
    """PBS accounts a job by its session; torchrun's workers leave it, the launcher's stay.

    The same 5 s of worker CPU under torchrun and under vocabseg.engine.launch: the
    stand-in (which, like PBS's execution daemon, sums the job session's processes)
    records them only under the launcher.
    """
    env = standin_env(tmp_path)
    (tmp_path / "burn.py").write_text(BURN)
    args = f"--standalone --nnodes=1 --nproc_per_node=1 {tmp_path / 'burn.py'}"
    bin_dir = Path(sys.executable).parent
    launched = standin_job(tmp_path, env, "launched", f"{sys.executable} -m vocabseg.engine.launch {args}")
    plain = standin_job(tmp_path, env, "plain", f"{bin_dir / 'torchrun'} {args}")
    cput = {}
    for jobid in (launched, plain):
        assert wait_for(jobid, env, tmp_path, timeout=120) == "success"
        answer = subprocess.run(["qstat", "-f", "-F", "json", "-x", jobid], capture_output=True, text=True, env=env)
        h, m, sec = json.loads(answer.stdout)["Jobs"][jobid]["resources_used"]["cput"].split(":")
        cput[jobid] = int(h) * 3600 + int(m) * 60 + int(sec)
    print(f"PBS cput, launcher vs torchrun: {cput[launched]} s vs {cput[plain]} s")
    assert cput[launched] >= 5 and cput[plain] <= cput[launched] - 4, cput


def test_deleted_job_is_never_a_success(tmp_path):
    """A root job deleted while running can show Exit_status 0 (substate 91)."""
    env = standin_env(tmp_path)
    jobid = standin_job(tmp_path, env, "gone", "exit 0")
    wait_for(jobid, env, tmp_path)
    path = tmp_path / "pbs" / "jobs" / jobid.split(".")[0] / "state.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "outcome": "deleted", "exit_status": 0}))
    answer = subprocess.run(["qstat", "-f", "-F", "json", "-x", jobid], capture_output=True, text=True, env=env)
    job = json.loads(answer.stdout)["Jobs"][jobid]
    assert (job["substate"], job["Exit_status"]) == (91, 0)
    assert status(jobid, env, tmp_path).stdout == "failed\n"


# ---------------------------------------------------------------- the workflow through the profile



def snakemake(workdir: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def submissions(tmp_path: Path) -> list[list[str]]:
    lines = (tmp_path / "pbs" / "submissions.jsonl").read_text().splitlines()
    return [json.loads(line)["argv"] for line in lines]


FAST_POLLING = (
    "--seconds-between-status-checks",
    "1",
    "--max-status-checks-per-second",
    "50",
    "--latency-wait",
    "5",
)


def run_study_through_profile(tmp_path: Path, study: dict, *extra: str) -> subprocess.CompletedProcess:
    """Run ``study`` through profiles/pbs with the stand-in PBS, fast polling, 2 jobs at a time."""
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump(study, sort_keys=False))
    return snakemake(
        tmp_path, standin_env(tmp_path), "--profile", str(PROFILE), "--configfile", str(config),
        "--jobs", "2", *extra, *FAST_POLLING,
    )


@pytest.mark.workflow
def test_tiny_study_runs_through_the_pbs_profile(tmp_path):
    res = run_study_through_profile(tmp_path, TINY)
    assert res.returncode == 0, res.stderr[-6000:]
    table = (tmp_path / "results/table.md").read_text()
    assert "| oracle | 100.000 | 100.000 | 100.000 | 100.000 | 100.000 | 100.000 |" in table
    subs = submissions(tmp_path)
    names = sorted(option(args, "-N")[0] for args in subs)
    # every non-local job went through qsub; report and panels ran on the "login node"
    assert "evaluate.oracle" in names and "oracle.oracle" in names and "prepare.tinycity" in names
    assert not any(n.startswith(("report", "panels")) for n in names)
    for args in subs:
        select, wall = option(args, "-l")
        assert select.startswith("select=1:ncpus=") and ":mem=" in select and "ngpus" not in select
        assert wall.startswith("walltime=")
        log = Path(option(args, "-o")[0])
        assert log.is_relative_to(tmp_path / "logs") and log.exists()
    # every job ran its command to the end and said so
    markers = sorted((tmp_path / ".snakemake/pbs").glob("*.exit"))
    assert len(markers) == len(subs) and {m.read_text() for m in markers} == {"0\n"}
    evaluate = next(a for a in subs if option(a, "-N") == ["evaluate.oracle"])
    # per study, next to the rule's log
    assert option(evaluate, "-o")[0].endswith(f"logs/{TINY['study']}/evaluate/oracle.pbs.attempt1.log")


@pytest.mark.workflow
@pytest.mark.parametrize("history", ["1", "0"])
def test_walltime_killed_job_is_resubmitted_with_more_time(tmp_path, history):
    """A job past its walltime is reported failed and retried with attempt + 1.

    A two-rule workflow of its own: the runtime grows with the attempt, the stand-in
    enforces walltime at 4 s per minute (8 s, then 16 s), and the job needs over 9 s.
    Without job history the running job is still running (not failed at its first
    check) and the killed one, which left no exit marker, failed.
    """
    (tmp_path / "Snakefile").write_text(
        "rule all:\n"
        "    input: 'done.txt'\n\n"
        "rule slow:\n"
        "    output: 'done.txt'\n"
        "    resources: runtime=lambda wc, attempt: 2 * attempt\n"
        "    shell: 'sleep 9 && echo {resources.runtime} > {output}'\n"
    )
    env = standin_env(tmp_path, FAKEPBS_SECONDS_PER_MINUTE="4", FAKEPBS_NO_HISTORY=str(1 - int(history)))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--directory",
        str(tmp_path),
        "--profile",
        str(PROFILE),
        "--jobs",
        "1",
        "--workflow-profile",
        "none",
        *FAST_POLLING,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "done.txt").read_text() == "4\n"
    walls = [option(args, "-l")[-1] for args in submissions(tmp_path)]
    assert walls == ["walltime=00:02:00", "walltime=00:04:00"]
    assert (tmp_path / "logs/pbs/slow/job.attempt1.log").exists()
    assert (tmp_path / "logs/pbs/slow/job.attempt2.log").exists()
    states = sorted((tmp_path / "pbs/jobs").glob("*/state.json"))
    assert [json.loads(p.read_text())["exit_status"] for p in states] == [-29, 0]


def planned_jobs(output: str) -> list[tuple[str, dict]]:
    """(rule, resources) of every job a dry run prints (its "resources:" line)."""
    jobs, rule = [], None
    for line in output.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            rule = line.split()[1][:-1]
        elif line.startswith("    resources: ") and rule:
            pairs = (item.split("=", 1) for item in line[len("    resources: ") :].split(", "))
            jobs.append((rule, {key: value for key, value in pairs}))
            rule = None
    return jobs


@pytest.mark.workflow
def test_dry_run_of_the_cityscapes_study_asks_for_gpus_for_training(tmp_path):
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = snakemake(
        tmp_path,
        env,
        "-n",
        "--profile",
        str(PROFILE),
        "--configfile",
        str(REPO / "config/cityscapes-r50.yaml"),
    )
    assert res.returncode == 0, res.stderr + res.stdout
    assert "Using profiles " + str(PROFILE) in res.stdout + res.stderr
    jobs = planned_jobs(res.stdout)
    counts = {}
    for rule, _ in jobs:
        counts[rule] = counts.get(rule, 0) + 1
    # replicates: 3 (config/cityscapes-r50.yaml): every training three times
    assert counts["train"] == 15 and counts["train_combined"] == 18 and counts["evaluate"] == 62
    training = [res for rule, res in jobs if rule in ("train", "train_combined")]
    assert all(r["gpu"] == "1" and r["cpus_per_gpu"] == "8" for r in training)
    # what these jobs would ask PBS for (threads as the profile's set-threads makes them)
    p = props(
        "train",
        threads=4,
        wildcards={"approach": "lowerbound"},
        **{
            k: int(v)
            for k, v in training[0].items()
            if k in ("gpu", "cpus_per_gpu", "mem_mb", "runtime")
        },
    )
    assert option(sub.qsub_args(p, "/j", ""), "-l") == [
        "select=1:ncpus=8:mem=64000mb:ngpus=1",
        "walltime=04:00:00",
    ]
    # both ContMAV rules run on a GPU
    assert all(r["gpu"] == "1" for rule, r in jobs if rule in ("contmav_train", "contmav_eval"))
    assert {"contmav_train", "contmav_eval"} <= set(counts)
    # CPU-only rules ask for none
    assert all(
        r.get("gpu", "0") == "0"
        for rule, r in jobs
        if rule in ("prepare", "evaluate", "vocab_split")
    )


@pytest.mark.workflow
def test_small_site_profile_lowers_every_gpu_jobs_request(tmp_path):
    """profiles/small-site after the scheduler's profile: the one place a small site edits."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    res = snakemake(
        tmp_path, env, "-n", "--profile", str(PROFILE), "--profile", str(REPO / "profiles/small-site"),
        "--configfile", str(REPO / "config/cityscapes-r50.yaml"),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = planned_jobs(res.stdout)
    gpu_jobs = [(rule, r) for rule, r in jobs if r.get("gpu", "0") != "0"]
    assert {"train", "contmav_train", "contmav_eval"} <= {rule for rule, _ in gpu_jobs}
    for rule, r in gpu_jobs:
        assert (r["gpu"], r["cpus_per_gpu"], r["mem_mb"]) == ("1", "4", "16000"), rule
        p = props(rule, threads=4, **{k: int(r[k]) for k in ("gpu", "cpus_per_gpu", "mem_mb")})
        assert option(sub.qsub_args(p, "/j", ""), "-l") == ["select=1:ncpus=4:mem=16000mb:ngpus=1"]
    assert all(r["mem_mb"] == "16000" for rule, r in jobs if rule == "contmav_eval")


# Training through the profile: the synthetic world's pretraining (CLIP, base model), one
# fine-tuning, the zero-shot model; training jobs ask for a GPU and run torchrun on CPU.
TINY_TRAINING = {
    **TINY,
    "study": "tinyfc",
    "pretrain": {
        "source": {"train": 4, "val": 2, "height": 64, "width": 128, "seed": 5},
        "web": {"train": 4, "val": 2, "seed": 6},
        "clip_steps": 4,
        "base_iters": 2,
    },
    "training": {
        "batch_size": 2,
        "crop": [64, 128],
        "num_points": 256,
        "checkpoint_every": 1,
        "log_every": 1,
    },
    "inference": {"batch_size": 2},
    "approaches": {
        "zeroshot": {"kind": "zeroshot"},
        "lowerbound": {"kind": "finetune", "vocab": "008", "iters": 2},
    },
}


@pytest.mark.workflow
def test_training_runs_through_the_pbs_profile_asking_for_gpus(tmp_path):
    res = run_study_through_profile(tmp_path, TINY_TRAINING, "--set-threads", "pretrain_base=1", "train=1")
    assert res.returncode == 0, res.stderr[-6000:]
    table = (tmp_path / "results/table.md").read_text()
    assert "| zeroshot |" in table and "| lowerbound |" in table
    subs = {option(a, "-N")[0]: a for a in submissions(tmp_path)}
    # the profile's set-resources: one GPU and the rule's 8 cores per GPU for training
    assert option(subs["train.lowerbound"], "-l") == [
        "select=1:ncpus=8:mem=64000mb:ngpus=1",
        "walltime=04:00:00",
    ]
    assert "ngpus=1" in option(subs["pretrain_base"], "-l")[0]
    assert "ngpus" not in option(subs["pretrain_clip"], "-l")[0]
    assert (tmp_path / "results/tinyfc/models/lowerbound/model.pt").stat().st_size > 0
    log = (
        (tmp_path / "results/tinyfc/models/lowerbound/ckpt/metrics.jsonl").read_text().splitlines()
    )
    assert json.loads(log[-1])["iter"] == 2
    # the trainer's output: one numbered file per run, the rule's log links to the newest;
    # the PBS job's own log per attempt beside it
    logs = tmp_path / "logs/tinyfc/train"
    assert os.readlink(logs / "lowerbound.log") == "lowerbound.run1.log"
    assert (logs / "lowerbound.run1.log").read_text().startswith("launch: run 1 of this job")
    assert (logs / "lowerbound.pbs.attempt1.log").exists()
