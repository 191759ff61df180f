"""The workflow on SLURM: a study submitted through profiles/slurm to a real single-node
SLURM cluster (Debian's Slurm 22.05, see ``tests/slurm_cluster.py``), a training job
killed mid-run and resumed by the retry, and the dry run of the Cityscapes study with
the cluster profile.

The study runs with ``--profile profiles/slurm --profile <test site>``: the second
profile holds what a site without an accounting database needs (squeue status checks,
no account) plus what makes the run fit a small test node and finish quickly (resources
of a few hundred MB, one CPU per "GPU", status checks after 1 s). The cluster's two
GPUs are fake (device files /dev/null and /dev/zero), so the training jobs really are
submitted with ``--gpus=1`` and scheduled on GPUs, and torchrun still trains on the CPU.

Two approaches of the study are the same fine-tuning run under two names: ``steady``
runs undisturbed, ``killed`` gets SIGTERM (``scancel --signal=TERM``, as SLURM signals a
job at its time limit or preemption) after its first checkpoint. Snakemake's retry
resubmits it, the trainer resumes from the checkpoint, and both end with bitwise equal
weights (training on the CPU is deterministic, see ``vocabseg.engine.trainer``).

Skipped only where the SLURM and munge binaries are missing (``.ci/run`` installs them)
or where the test does not run as root (slurmd must).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from slurm_cluster import Cluster, missing_binaries, single_node_slurm

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow

ITERS = 10  # of each fine-tuning run; a checkpoint every 2
STUDY = {
    "study": "slurmtest",
    "title": "SLURM test study",
    "dataset": {
        "name": "slurmcity",
        "kind": "synthetic",
        "synthetic": {"train": 4, "val": 3, "height": 64, "width": 128, "seed": 3},
    },
    "vocabularies": ["008"],
    "eval_vocab": "008",
    "pretrain": {
        "source": {"train": 2, "val": 1, "height": 64, "width": 128, "seed": 5},
        "web": {"train": 2, "val": 1, "seed": 6},
        "clip_steps": 2,
        "base_iters": 2,
    },
    "training": {"batch_size": 2, "crop": [64, 128], "num_points": 256, "checkpoint_every": 2, "log_every": 1},
    "inference": {"batch_size": 2},
    "approaches": {
        "killed": {"kind": "finetune", "vocab": "008", "iters": ITERS},
        "steady": {"kind": "finetune", "vocab": "008", "iters": ITERS},
    },
}

DATA_RULES = ("synth_city", "prepare", "pretrain_clip", "vocab_split", "text_embeddings", "class_frequency")
SMALL = {"mem_mb": 2000, "runtime": 10}


def site_profile() -> dict:
    """The test cluster's site profile, layered on top of profiles/slurm.

    It is profiles/small-site adapted as docs/clusters.md tells a small site to (its numbers
    edited to the node: one core per GPU, 2 GB), plus what this cluster needs: only the
    fine-tuning on the node's GPU, no accounting database, fast polling.
    """
    site = yaml.safe_load((REPO / "profiles/small-site/config.yaml").read_text())
    for rule, resources in site["set-resources"].items():
        resources.update(cpus_per_gpu=1, **SMALL)
        if rule != "train":
            resources["gpu"] = 0
    site["set-threads"] = {rule: 1 for rule in site["set-threads"]} | {"prepare": 1}
    return {
        **site,
        "slurm-status-command": "squeue",  # no accounting database: sacct knows nothing
        "slurm-no-account": True,
        "slurm-init-seconds-before-status-checks": 1,
        "latency-wait": 5,
        "jobs": 4,
        "default-resources": {"mem_mb": 500, "runtime": 10},
        # the data stages (synthetic cities, preparation, splits, CLIP, text classifiers) in
        # one SLURM job: 11 small jobs in 4 rounds of submission and status checks cost
        # more time here than running them
        "groups": [f"{rule}=data" for rule in DATA_RULES],
    }


ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")


def snakemake_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args]


def env_with_venv(base: dict[str, str]) -> dict[str, str]:
    """Jobs run `vocabseg` and `torchrun` from the test's Python environment."""
    return dict(base, PATH=f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}")


@dataclass
class StudyRun:
    workdir: Path
    returncode: int
    output: str
    jobs: list[dict[str, str]]  # squeue --states=all after the run
    killed_job: str  # SLURM id of the job that got SIGTERM
    killed_after: int  # newest checkpoint iteration when the signal was sent
    seconds: float


def newest_checkpoint(state_dir: Path) -> int:
    iters = [int(m.group(1)) for p in state_dir.glob("ckpt_*.pt") if (m := re.fullmatch(r"ckpt_(\d+)\.pt", p.name))]
    return max(iters, default=0)


def kill_after_first_checkpoint(cluster: Cluster, proc, state_dir: Path, timeout: float = 480) -> tuple[str, int]:
    """Wait for the first checkpoint of the `killed` run, then SIGTERM its SLURM job."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        done = newest_checkpoint(state_dir)
        if done:
            running = [j for j in cluster.jobs() if "rule_train" in j["comment"] and "killed" in j["comment"]]
            running = [j for j in running if j["state"] == "RUNNING"]
            assert running, f"checkpoint {done} exists but no running training job: {cluster.jobs()}"
            cluster.run("scancel", "--signal=TERM", running[0]["id"])
            return running[0]["id"], done
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint in {state_dir} (snakemake exit {proc.poll()})")


@pytest.fixture(scope="module")
def slurm() -> Cluster:
    missing = missing_binaries()
    if missing:
        pytest.skip(
            f"SLURM is not installed (missing {', '.join(missing)}): "
            "apt-get install munge slurmctld slurmd slurm-client (.ci/run does)"
        )
    if os.geteuid() != 0:
        pytest.skip("the single-node SLURM cluster needs root (slurmd runs jobs as their user)")
    with single_node_slurm() as cluster:
        yield cluster


@pytest.fixture(scope="module")
def study(slurm, tmp_path_factory) -> StudyRun:
    """The study through profiles/slurm, with the `killed` training SIGTERMed mid-run."""
    workdir = tmp_path_factory.mktemp("slurm-study")
    (workdir / "study.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    (workdir / "test-site").mkdir()
    (workdir / "test-site" / "config.yaml").write_text(yaml.safe_dump(site_profile(), sort_keys=False))
    cmd = snakemake_cmd(
        "--profile", str(REPO / "profiles/slurm"), "--profile", str(workdir / "test-site"),
        "--configfile", str(workdir / "study.yaml"),
    )  # fmt: skip
    start = time.monotonic()
    with open(workdir / "snakemake.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env_with_venv(slurm.env), stdout=out, stderr=subprocess.STDOUT)
        try:
            job, after = kill_after_first_checkpoint(slurm, proc, workdir / "results/slurmtest/models/killed/ckpt")
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(60)
    seconds = time.monotonic() - start
    output = (workdir / "snakemake.out").read_text()
    return StudyRun(workdir, proc.returncode, output, slurm.jobs(), job, after, seconds)


def jobs_of(run: StudyRun, rule: str, approach: str | None = None) -> list[dict[str, str]]:
    found = [j for j in run.jobs if j["comment"].startswith(f"rule_{rule}")]
    if approach is not None:
        found = [j for j in found if j["comment"].endswith(approach)]
    return found


def test_study_runs_through_the_slurm_profile(study, slurm):
    assert study.returncode == 0, study.output[-6000:] + slurm.logs()
    table = (study.workdir / "results/table.md").read_text()
    for name in STUDY["approaches"]:
        assert f"| {name} |" in table
        metrics = json.loads((study.workdir / f"results/slurmtest/metrics/{name}.json").read_text())
        assert metrics["run"]["iterations"] == ITERS and 0.0 <= (metrics["All"]["pq"] or 0.0) <= 1.0
    # every job went through SLURM but the local rules (report, panels): the data stages
    # as one group job, then one job per model stage and approach (and the retry)
    comments = sorted(j["comment"] for j in study.jobs)
    assert len(comments) == 1 + 1 + 3 + 2 + 2, comments
    assert comments[0].startswith("rule_data_class_frequency_prepare_pretrain_clip_synth_city")
    assert comments[1:] == [
        "rule_evaluate_wildcards_killed", "rule_evaluate_wildcards_steady",
        "rule_predict_wildcards_killed", "rule_predict_wildcards_steady",
        "rule_pretrain_base",
        "rule_train_wildcards_killed", "rule_train_wildcards_killed", "rule_train_wildcards_steady",
    ]  # fmt: skip
    assert not [j for j in study.jobs if j["state"] in ACTIVE]
    failed = [j for j in study.jobs if j["state"] != "COMPLETED"]
    assert [j["id"] for j in failed] == [study.killed_job], failed
    # the training jobs asked SLURM for one GPU each (set-resources train: gpu: 1)
    for job in study.jobs:
        assert (job["gpus"] == "gres:gpu:1") == job["comment"].startswith("rule_train"), job
    # every SLURM log was kept, under slurm-logdir in the study's own folder (the Snakefile's
    # onstart puts it there), one per job id: both attempts of the killed training
    logs = list((study.workdir / "logs/slurm").rglob("*.log"))
    assert len(logs) == len(study.jobs) and all(p.is_relative_to(study.workdir / "logs/slurm/slurmtest") for p in logs)
    killed = {p.stem for p in (study.workdir / "logs/slurm/slurmtest/rule_train/killed").glob("*.log")}
    assert killed == {j["id"] for j in jobs_of(study, "train", "killed")} and study.killed_job in killed
    print(f"SLURM study: {len(study.jobs)} jobs in {study.seconds:.0f} s")


def test_killed_training_job_resumes_from_its_checkpoint(study):
    assert study.returncode == 0, study.output[-6000:]
    trains = jobs_of(study, "train", "killed")
    assert sorted(j["state"] for j in trains) == ["COMPLETED", "FAILED"], trains
    assert 2 <= study.killed_after < ITERS
    # the retry (a new SLURM job) resumed from the checkpoint the first attempt left
    log = (study.workdir / "logs/slurmtest/train/killed.log").read_text()
    resumed = re.findall(r"resumed from \S*ckpt_(\d+)\.pt", log)
    assert len(resumed) == 1 and study.killed_after <= int(resumed[0]) < ITERS, log[-3000:]
    assert "resumed from" not in (study.workdir / "logs/slurmtest/train/steady.log").read_text()
    # the cancelled attempt's own log is kept beside it, ending with the preemption
    first = (study.workdir / "logs/slurmtest/train/killed.run1.log").read_text()
    assert "preempted at iteration" in first and "resumed from" not in first, first[-3000:]
    assert os.readlink(study.workdir / "logs/slurmtest/train/killed.log") == "killed.run2.log"
    # each iteration is logged once, then the weights equal the uninterrupted twin's
    state = study.workdir / "results/slurmtest/models"
    lines = (state / "killed/ckpt/metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in lines] == list(range(1, ITERS + 1))
    killed = torch.load(state / "killed/model.pt", weights_only=True)["model"]
    steady = torch.load(state / "steady/model.pt", weights_only=True)["model"]
    assert killed.keys() == steady.keys()
    different = [k for k in killed if not torch.equal(killed[k], steady[k])]
    assert not different, different[:5]


def jobs_with_resources(output: str) -> list[tuple[str, dict[str, str]]]:
    """(rule, resources) of each job a dry run prints."""
    jobs, rule = [], None
    for line in output.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):$", line.strip()):
            rule = m.group(1)
        elif rule and (m := re.match(r"^resources: (.*)$", line.strip())):
            pairs = (item.split("=", 1) for item in m.group(1).split(", "))
            jobs.append((rule, {k: v for k, v in pairs}))
            rule = None
    return jobs


def test_dry_run_of_the_cityscapes_study_with_the_slurm_profile(tmp_path):
    res = subprocess.run(
        snakemake_cmd("-n", "--profile", str(REPO / "profiles/slurm"), "--configfile", str(REPO / "config/cityscapes-r50.yaml")),
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env_with_venv(dict(os.environ)),
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    jobs = jobs_with_resources(out)
    by_rule: dict[str, list[dict[str, str]]] = {}
    for rule, resources in jobs:
        by_rule.setdefault(rule, []).append(resources)
    assert len(by_rule["train"]) == 15 and len(by_rule["train_combined"]) == 18  # replicates: 3
    for rule in ("train", "train_combined", "predict", "predict_teacher", "contmav_train", "contmav_eval"):
        for resources in by_rule[rule]:
            assert resources["gpu"] == "1", (rule, resources)
            assert resources["tasks_per_gpu"] == "0"
    for resources in by_rule["train"]:
        assert resources["cpus_per_gpu"] == "8" and resources["mem_mb"] == "64000"
        assert resources["runtime"] == "240"  # first attempt; the retries get 480, 720
    for rule in ("evaluate", "prepare", "vocab_split"):
        assert all(r.get("gpu", "0") == "0" for r in by_rule[rule]), rule
