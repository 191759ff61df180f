"""Training replicates (`replicates:` of the study config): one row per replicate in the
DAG, each trained with its own seed, and the tables' `mean ± std` with marks that hold
in every replicate (docs/uncertainty.md, "Replicates")."""

from __future__ import annotations

import csv
import hashlib
import json
import re

import pytest
import torch
import yaml

from test_bootstrap import openworld_row_files, row_files, scaled_stats, table_stats
from test_workflow import REPO, TINY_FCCLIP, jobs_planned, snakemake, write_config
from vocabseg.errors import InputError
from vocabseg.evaluation.bootstrap import BootstrapSettings
from vocabseg.report.replicates import base_and_replicate
from vocabseg.report.table import write_report


def test_row_names_carry_the_replicate():
    assert base_and_replicate("ftzs") == ("ftzs", 0)
    assert base_and_replicate("ftzs.r2") == ("ftzs", 2)
    assert base_and_replicate("combined_mean.r11") == ("combined_mean", 11)
    assert base_and_replicate("ftzs.r0") == ("ftzs.r0", 0)  # replicate 0 has no suffix


def _replicated_rows(tmp_path):
    """zeroshot (one row), good (3 replicates, all clearly better than zeroshot) and mixed
    (replicate 0 equal to zeroshot, replicate 1 better)."""
    base = table_stats()
    rows = {
        "zeroshot": scaled_stats(base, 0.5),
        "good": base,
        "good.r1": scaled_stats(base, 0.95),
        "good.r2": scaled_stats(base, 0.9),
        "mixed": scaled_stats(base, 0.5),
        "mixed.r1": base,
    }
    return [row_files(tmp_path, name, stats) for name, stats in rows.items()]


def test_replicated_table_shows_mean_and_std_and_marks_what_holds_in_every_replicate(tmp_path):
    files = _replicated_rows(tmp_path)
    md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    frame = write_report([j for j, _ in files], md, table_csv, tmp_path / "b.png", "T",
                         tradeoff_png=tmp_path / "to.png", image_stats=[n for _, n in files],
                         references=["zeroshot"], bootstrap=BootstrapSettings(resamples=200, seed=0))
    text = md.read_text()
    # the CSV: one line per replicate, with its own intervals, and the approach's mean / std
    assert list(frame["approach"]) == ["zeroshot", "good", "good", "good", "mixed", "mixed"]
    assert list(frame["replicate"]) == [0, 0, 1, 2, 0, 1]
    good = frame[frame["approach"] == "good"]
    mean, std = good["PQ"].mean(), good["PQ"].std(ddof=1)
    assert good["PQ mean"].iloc[0] == pytest.approx(round(mean, 3)) and good["PQ std"].iloc[0] == pytest.approx(std, abs=1e-3)
    assert (good["PQ vs zeroshot lo"] > 0).all()
    mixed = frame[frame["approach"] == "mixed"].set_index("replicate")
    assert mixed.at[0, "PQ vs zeroshot lo"] == mixed.at[0, "PQ vs zeroshot hi"] == 0 and mixed.at[1, "PQ vs zeroshot lo"] > 0
    header = next(csv.reader(table_csv.open()))
    assert header[:2] == ["approach", "replicate"] and {"PQ mean", "PQ std", "PQ lo", "PQ vs zeroshot hi"} <= set(header)
    # the Markdown: one line per approach, mean ± std; the mark only where every replicate agrees
    assert f"| good | - | - | {round(mean, 3):.3f} ± {std:.2f}* |" in text
    mixed_pq = frame[frame["approach"] == "mixed"]["PQ"]
    assert f"| mixed | - | - | {round(mixed_pq.mean(), 3):.3f} ± {mixed_pq.std(ddof=1):.2f} |" in text
    zeroshot = frame.iloc[0]
    assert f"| zeroshot | - | - | {zeroshot['PQ']:.3f} [{zeroshot['PQ lo']:.1f}, {zeroshot['PQ hi']:.1f}] |" in text
    assert "Cells: mean ± std over the 3 training replicates (seeds) of an approach" in text
    assert "excludes 0, with the same sign in every replicate (* zeroshot)" in text
    assert text.count("| good |") == 2  # the main table and the per-class table, once each
    assert (tmp_path / "to.png").stat().st_size > 0


def test_a_replicate_without_its_replicate_zero_is_refused(tmp_path):
    files = _replicated_rows(tmp_path)[2:4]  # good.r1, good.r2
    with pytest.raises(InputError, match="has no replicate-0 row 'good'"):
        write_report([j for j, _ in files], tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "b.png", "T",
                     image_stats=[n for _, n in files])


def test_replicated_openworld_table_shows_mean_and_std(tmp_path):
    files = openworld_row_files(tmp_path, {"contmav": 0.0, "contmav.r1": 0.1, "contmav_focal": 0.5,
                                           "contmav_focal.r1": 0.6})
    write_report([], tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "b.png", "T",
                 openworld_files=[j for j, _ in files], openworld_image_stats=[n for _, n in files],
                 openworld_references=["contmav"], bootstrap=BootstrapSettings(resamples=100))
    text = (tmp_path / "t.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| contmav_focal |"))
    assert row.count(" ± ") == 6  # mIoU known, AUPR, FPR95, AUROC, OW mIoU, class similarity
    assert "| contmav.r1 |" not in text
    with (tmp_path / "t_openworld.csv").open() as stream:
        lines = list(csv.DictReader(stream))
    assert [(line["approach"], line["replicate"]) for line in lines] == [
        ("contmav", "0"), ("contmav", "1"), ("contmav_focal", "0"), ("contmav_focal", "1")]
    assert {"AUROC mean", "AUROC std", "AUROC vs contmav lo"} <= set(lines[0])


# --------------------------------------------------------------------------- the DAG


def _recipe_seeds(out: str, log_part: str) -> dict[str, int]:
    """{row: recipe seed} of the training commands in a dry run's printed shell commands."""
    seeds = {}
    for line in out.splitlines():
        match = re.search(rf"--log logs/[^ ]+/{log_part}/([^ /]+)\.log .*--recipe '(\{{.*?\}})'", line)
        if match:
            seeds[match.group(1)] = json.loads(match.group(2))["seed"]
    return seeds


def documented_seed(seed: int, replicate: int) -> int:
    """The training seed of replicate k >= 1 as docs/uncertainty.md states it."""
    digest = hashlib.sha256(f"vocabseg replicate {seed} {replicate}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def test_replicate_seeds_give_different_models_and_one_seed_the_same(tmp_path):
    """The trainer (toy task of tests/test_trainer.py, 10 iterations) under the recipe
    seeds of replicates 0 and 1 of a study with seed 0, replicate 1 twice."""
    from test_trainer import run_inprocess
    from trainer_helpers import assert_bitwise_equal

    runs = {"r0": 0, "r1": documented_seed(0, 1), "r1 again": documented_seed(0, 1)}
    for name, seed in runs.items():
        run_inprocess(tmp_path / name, iters=10, seed=seed)
    weights = {name: torch.load(tmp_path / name / "model.pt", weights_only=True) for name in runs}
    assert_bitwise_equal(weights["r1"], weights["r1 again"])
    assert any(not torch.equal(weights["r0"][k], weights["r1"][k]) for k in weights["r0"])


def test_r50_study_trains_three_replicates_with_derived_seeds(tmp_path):
    """config/cityscapes-r50.yaml sets replicates: 3: each trained approach (and ContMAV
    variant) is three jobs; replicate 0 keeps the study seed and today's paths."""
    config = yaml.safe_load((REPO / "config/cityscapes-r50.yaml").read_text())
    assert config["replicates"] == 3
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config/cityscapes-r50.yaml"))
    assert res.returncode == 0, res.stderr + res.stdout
    trained = [name for name, spec in config["approaches"].items() if spec["kind"] in ("finetune", "pseudolabel", "distill")]
    seeds = _recipe_seeds(res.stdout, "train")
    for name in trained:
        assert seeds[name] == 0  # the study's seed, as without replicates
        assert len({seeds[name], seeds[f"{name}.r1"], seeds[f"{name}.r2"]}) == 3
        assert f"{name}.r3" not in seeds
    assert seeds["lowerbound.r1"] == seeds["ftzs.r1"]  # a replicate is one seed across approaches
    # the documented formula (docs/uncertainty.md), so the seed of a replicate never changes
    assert seeds["lowerbound.r2"] == documented_seed(0, 2)
    ow_seeds = _recipe_seeds(res.stdout, "openworld/train")
    assert ow_seeds["contmav"] == 0 and len({ow_seeds[f"contmav{s}"] for s in ("", ".r1", ".r2")}) == 3
    # rows built from trained models follow their replicate; zero-shot is shared
    assert "--in-metrics results/cityscapes-r50/metrics/lowerbound.r2.json --out-metrics " \
           "results/cityscapes-r50/metrics/zeroshot.json" in res.stdout
    assert "--init results/cityscapes-r50/models/ftzs.r1/model.pt --init-m2 " \
           "results/cityscapes-r50/models/lowerbound.r1/model.pt" in res.stdout
    assert "results/cityscapes-r50/metrics/zeroshot.r1" not in res.stdout
    report = next(line for line in res.stdout.splitlines() if "vocabseg report" in line)
    assert "results/cityscapes-r50/metrics/ftzs.r2.images.npz" in report
    assert "results/cityscapes-r50/openworld/metrics/contmav_synco.r2.json" in report


def test_one_replicate_runs_by_target(tmp_path):
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/cityscapes-r50.yaml"),
                    "--", "results/cityscapes-r50/metrics/lowerbound.r1.json")
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = jobs_planned(res.stdout)
    assert jobs["train"] == 1 and jobs["predict"] == 1 and jobs["evaluate"] == 1
    assert "results/cityscapes-r50/models/lowerbound.r1/model.pt" in res.stdout


def test_replicates_must_be_positive(tmp_path):
    config = {**TINY_FCCLIP, "replicates": 0}
    res = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode != 0
    assert "config key replicates: 0 is less than the minimum of 1" in res.stderr + res.stdout


# The smallest replicated chain: zero-shot, one fine-tuned approach (2 iterations) and
# the class-wise row built from both, two replicates. It is the only test that runs
# replicated training, prediction, evaluation and the table together, and it needs the
# synthetic world's CLIP and base model first: about a minute of CPU (two to three
# minutes wall on the shared 2-core development machine) for its 22 jobs.
TINY_REPLICATED = {
    **TINY_FCCLIP,
    "study": "tinyrep",
    "replicates": 2,
    "approaches": {
        "zeroshot": {"kind": "zeroshot"},
        "lowerbound": {"kind": "finetune", "vocab": "008", "iters": 2},
        "naive": {"kind": "classwise", "in": "lowerbound", "out": "zeroshot"},
    },
}


def _weights(workdir, row):
    return torch.load(workdir / f"results/tinyrep/models/{row}/model.pt", weights_only=True)["model"]


@pytest.mark.workflow
def test_tiny_replicated_study_runs_end_to_end(tmp_path):
    config = write_config(tmp_path / "rep.yaml", TINY_REPLICATED)
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(config), "--", "results/tinyrep/table.md")
    assert res.returncode == 0, res.stderr[-6000:]
    metrics = tmp_path / "results/tinyrep/metrics"
    assert sorted(p.name for p in metrics.glob("*.json")) == [
        "lowerbound.json", "lowerbound.r1.json", "naive.json", "naive.r1.json", "zeroshot.json"]
    # different seeds, different models
    first, second = _weights(tmp_path, "lowerbound"), _weights(tmp_path, "lowerbound.r1")
    assert any(not torch.equal(first[k], second[k]) for k in first)
    # the table: mean ± std for the trained rows, the interval for zero-shot
    table = (tmp_path / "results/tinyrep/table.md").read_text()
    for name in ("lowerbound", "naive"):
        row = next(line for line in table.splitlines() if line.startswith(f"| {name} |"))
        assert row.count(" ± ") >= 1, row
    zeroshot = next(line for line in table.splitlines() if line.startswith("| zeroshot |"))
    assert " [" in zeroshot and " ± " not in zeroshot
    with (tmp_path / "results/tinyrep/table.csv").open() as stream:
        lines = list(csv.DictReader(stream))
    assert [(line["approach"], line["replicate"]) for line in lines] == [
        ("zeroshot", "0"), ("lowerbound", "0"), ("lowerbound", "1"), ("naive", "0"), ("naive", "1")]
    # replicate 0 is the study without replicates: the same jobs, commands and paths
    # (same seed, same model: test_replicate_seeds_give_different_models_and_one_seed_the_same)
    plain = snakemake(tmp_path, "-n", "--cores", "2", "--configfile",
                      str(write_config(tmp_path / "plain.yaml", {**TINY_REPLICATED, "replicates": 1})),
                      "--", "results/tinyrep/metrics/lowerbound.json")
    assert plain.returncode == 0 and "Nothing to be done" in plain.stdout + plain.stderr, plain.stdout
