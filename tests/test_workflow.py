"""The Snakemake workflow: config validation, dry runs, a real run on a tiny city.

Snakemake runs as a subprocess in a temporary working directory, with the
repository's Snakefile, exactly as a user runs it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from study_configs import TINY
from vocabseg.report.seed_rows import seed_rows

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def jobs_planned(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a dry run into {rule: count}."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats"))
    counts = {}
    for line in lines[start + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def test_dry_run_of_the_cityscapes_study_plans_everything_without_network(tmp_path):
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/cityscapes-r50.yaml"))
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = jobs_planned(res.stdout)
    assert jobs["download_cityscapes"] == 1
    assert jobs["prepare"] == 1
    assert jobs["vocab_split"] == 9
    assert jobs["class_frequency"] == 9
    assert jobs["report"] == 1
    assert jobs["official_weights"] == 1  # the official checkpoint is an input, not pretrained
    assert jobs["fetch_clip"] == 1  # open_clip's RN50 weights, fetched on the submit host
    # the seed's rows, each trained row three times (replicates: 3): 5 single-model
    # trainings, 6 combined runs (the two "mean" rows share one), 3 WiSE-FT, 5 intersections
    # (2 seed rows, 3 other overlap rules), the class-wise naive row; one zero-shot, one oracle
    assert jobs["train"] == 3 * 5 and jobs["train_combined"] == 3 * 6 and jobs["wiseft"] == 3 * 3
    assert jobs["predict"] == 1 + 3 * 15 and jobs["intersect"] == 3 * 5 and jobs["evaluate"] == 2 + 3 * 20
    assert jobs["classwise"] == 3
    assert jobs["contmav_train"] == 3 * 6 and jobs["contmav_eval"] == 3 * 6  # ContMAV 1+19
    assert jobs["predict_teacher"] == 1 and jobs["pseudolabel"] == 1 and jobs["text_embeddings"] == 2
    assert "synth_city" not in jobs and "pretrain_base" not in jobs


def test_dry_run_of_the_default_study(tmp_path):
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/config.yaml"))
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = jobs_planned(res.stdout)
    assert jobs["synth_city"] == 3  # the study's city, the source-style one, the CLIP's "web" one
    assert jobs["pretrain_clip"] == 1 and jobs["pretrain_base"] == 1
    # every seed row: 5 single-model trainings (KD included), 5 combined runs (the two
    # "mean" rows share one; the normalised entropy is in config/synthetic-seed.yaml only)
    assert jobs["vocab_split"] == 9 and jobs["train"] == 5 and jobs["train_combined"] == 5
    assert jobs["predict"] == 15 and jobs["intersect"] == 5 and jobs["wiseft"] == 3
    assert jobs["evaluate"] == 21 and jobs["classwise"] == 1 and jobs["panels"] == 1
    # the six ContMAV variants of the open-world table
    assert jobs["contmav_weights"] == 1 and jobs["contmav_train"] == 6 and jobs["contmav_eval"] == 6


def test_evaluate_writes_per_image_stats_and_the_report_bootstraps_them(tmp_path):
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config/config.yaml"))
    assert res.returncode == 0, res.stderr + res.stdout
    assert "--images-out results/synthetic/metrics/ftzs.images.npz" in res.stdout
    report = next(line for line in res.stdout.splitlines() if "vocabseg report" in line)
    assert "results/synthetic/metrics/ftzs.images.npz" in report
    # the uncertainty block's defaults: 1000 resamples, seed 0, the study's reference rows
    assert "--resamples 1000 --seed 0 --level 0.95 --score-bins 4096 --references zeroshot lowerbound upperbound" in report
    # the ContMAV rows too: per-image score counts (at the metrics' resolution), compared with plain ContMAV
    assert "--images-out results/synthetic/openworld/metrics/contmav_focal.images.npz > " in res.stdout
    assert "--openworld-images results/synthetic/openworld/metrics/contmav.images.npz" in report
    assert report.rstrip().endswith("--openworld-references contmav > logs/synthetic/report.log 2>&1")


def test_dry_run_of_bdd_anomaly_plans_the_build_and_six_contmav_variants(tmp_path):
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/bdd-anomaly.yaml"))
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = jobs_planned(res.stdout)
    assert jobs["build_bdd_anomaly"] == 1 and jobs["contmav_weights"] == 1
    assert jobs["contmav_train"] == 6 and jobs["contmav_eval"] == 6 and jobs["report"] == 1
    assert not {"train", "predict", "download_cityscapes", "panels"} & set(jobs)


def test_contmav_evaluation_defaults_to_the_papers_size(tmp_path):
    """openworld.eval.size: the paper's 512 x 1024 unless a study keeps its images' size."""
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config/bdd-anomaly.yaml"))
    assert res.returncode == 0, res.stderr + res.stdout
    evals = [line for line in res.stdout.splitlines() if "vocabseg contmav-eval " in line]
    assert len(evals) == 6 and all(" --size 512 1024 " in line for line in evals)
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config/config.yaml"))
    evals = [line for line in res.stdout.splitlines() if "vocabseg contmav-eval " in line]
    assert len(evals) == 6 and not any("--size" in line for line in evals)  # eval: {size: null}


def test_bdd_anomaly_runs_to_its_own_table_whatever_other_studies_left(tmp_path):
    """An open-world-only study's one target used to be results/table.md: any other
    study's table there made it end with "Nothing to be done"."""
    for table in ("results/table.md", "results/synthetic/table.md"):
        (tmp_path / table).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / table).write_text("# another study\n")
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/bdd-anomaly.yaml"))
    assert res.returncode == 0, res.stderr + res.stdout
    jobs = jobs_planned(res.stdout)
    assert jobs["contmav_train"] == 6 and jobs["report"] == 1 and jobs["all"] == 1
    assert "results/bdd-anomaly/table.md" in res.stdout


def test_bdd_anomaly_without_its_folder_names_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config/bdd-anomaly.yaml").read_text())
    config["openworld"]["bdd100k"] = None
    res = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode != 0
    assert "config key openworld.bdd100k" in res.stderr + res.stdout


def test_dry_run_of_every_seed_row_on_the_synthetic_city(tmp_path):
    overlay = REPO / "config/synthetic-seed.yaml"
    res = snakemake(tmp_path, "-n", "--configfile", str(REPO / "config/config.yaml"), str(overlay))
    assert res.returncode == 0, res.stderr + res.stdout
    assert "results/synthetic-seed/models/lowerbound/model.pt" in res.stdout  # the overlay's study
    assert "combined/mean_008_1000_from_ftzs+lowerbound" in res.stdout  # and its iterations
    jobs = jobs_planned(res.stdout)
    # 7 combined runs: the default start (the mean rows share one) and one from the base weights
    assert jobs["train"] == 5 and jobs["train_combined"] == 7 and jobs["pseudolabel"] == 1
    assert jobs["predict"] == 17 and jobs["intersect"] == 5 and jobs["evaluate"] == 23


def test_combined_runs_start_from_the_trained_ftzs_and_lower_bound(tmp_path):
    """The DAG trains FTZS and the lower bound first and feeds their weights in."""
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(REPO / "config/config.yaml"), "--",
                    "results/synthetic/metrics/combined_mean_m2.json")
    assert res.returncode == 0, res.stderr + res.stdout
    block = res.stdout[res.stdout.index("rule train_combined:"):]
    inputs = block.splitlines()[1]
    assert "results/synthetic/models/ftzs/model.pt" in inputs
    assert "results/synthetic/models/lowerbound/model.pt" in inputs
    assert "results/synthetic/models/combined/mean_008_100_from_ftzs+lowerbound/model.pt" in block
    assert ("--init results/synthetic/models/ftzs/model.pt --init-m2 results/synthetic/models/lowerbound/model.pt"
            in block) and "--m2-in-only" not in block
    jobs = jobs_planned(res.stdout)
    assert jobs["train"] == 2 and jobs["train_combined"] == 1  # FTZS and the lower bound, then the pair


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda c: c.update(eval_vocabb="008"), "config key (top level): Additional properties are not allowed ('eval_vocabb'"),
        (lambda c: c["dataset"]["synthetic"].update(train="many"), "config key dataset.synthetic.train: 'many' is not of type 'integer'"),
        (lambda c: c["approaches"].update(x={"kind": "orcale"}), "config key approaches.x.kind: 'orcale' is not one of"),
        (lambda c: c["approaches"]["oracle"].update(iterz=3), "config key approaches.oracle: Additional properties are not allowed ('iterz'"),
        (lambda c: c.update(vocabularies=["000", "009"]), "config key vocabularies.1: '009' is not one of"),
        (lambda c: c["approaches"].update(x={"kind": "intersection", "in": "oracle", "out": "nope"}),
         "config key approaches.x.out: no other approach named 'nope'"),
        (lambda c: c["approaches"].update(x={"kind": "wiseft", "finetuned": "oracle", "alpha": 0.5}),
         "config key approaches.x.finetuned: 'oracle' is of kind oracle"),
        (lambda c: c["approaches"].update(x={"kind": "combined", "vocab": "008", "iters": 3, "fusion": "max"}),
         "config key approaches.x.fusion: 'max' is not one of"),
        (lambda c: c.update(uncertainty={"references": ["zeroshot"]}),
         "config key uncertainty.references: no row named 'zeroshot'"),
        (lambda c: c.update(uncertainty={"resamples": 1}), "config key uncertainty.resamples: 1 is less than the minimum"),
        (lambda c: c["approaches"].update(x={"kind": "combined", "vocab": "008", "iters": 3, "fusion": "mean",
                                             "m1": "oracle"}),
         "config key approaches.x.m2: start 'trained' needs m1 and m2"),
        (lambda c: c["approaches"].update(x={"kind": "combined", "vocab": "008", "iters": 3, "fusion": "mean",
                                             "m1": "oracle", "m2": "oracle"}),
         "config key approaches.x.m1: 'oracle' is of kind oracle; expected one of the kinds"),
        (lambda c: c["approaches"].update(x={"kind": "combined", "vocab": "008", "iters": 3, "fusion": "mean",
                                             "start": "base_in_only", "m1": "oracle"}),
         "config key approaches.x.m1: start 'base_in_only' starts both models from the base weights"),
        (lambda c: c["approaches"]["oracle"].update(seed_row="nope"),
         "config key approaches.oracle.seed_row: 'nope' is not a row of the seed's table"),
        (lambda c: c["approaches"].update(x={"kind": "intersection", "in": "oracle", "out": "oracle", "overlap": "max"}),
         "config key approaches.x.overlap: 'max' is not one of"),
        (lambda c: c["approaches"].update(x={"kind": "intersection", "in": "oracle", "out": "y"},
                                          y={"kind": "intersection", "in": "x", "out": "oracle"}),
         "config key approaches.x: built from itself (x -> y -> x)"),
    ],
)
def test_bad_config_stops_before_any_job_naming_the_key(tmp_path, mutate, expected):
    config = json.loads(json.dumps(TINY))
    mutate(config)
    keep = tmp_path / "results" / "tiny" / "metrics" / "earlier.json"
    keep.parent.mkdir(parents=True)
    keep.write_text("{}")
    res = snakemake(tmp_path, "--cores", "1", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode != 0
    assert expected in res.stderr + res.stdout
    assert keep.read_text() == "{}"
    assert not (tmp_path / "resources").exists()


def test_lint_is_clean():
    res = snakemake(REPO, "--lint")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Congratulations" in res.stdout + res.stderr


def test_snakefmt_clean():
    exe = shutil.which("snakefmt", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("snakefmt is not installed (pip install -e '.[test]')")
    res = subprocess.run([exe, "--check", "Snakefile", "workflow"], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# Every stage and approach kind of the default study, shrunk to seconds: source city,
# CLIP and base-model pretraining, text embeddings, pseudo-labels, every kind of
# training, intersections, WiSE-FT, prediction, evaluation, table and figures.
TINY_FCCLIP = {
    **TINY,
    "study": "tinyfc",
    "pretrain": {"source": {"train": 4, "val": 2, "height": 64, "width": 128, "seed": 5},
                 "web": {"train": 4, "val": 2, "seed": 6}, "clip_steps": 4, "base_iters": 4},
    "training": {"batch_size": 2, "crop": [64, 128], "num_points": 256, "checkpoint_every": 2, "log_every": 1},
    "inference": {"batch_size": 2},
    "approaches": {
        "zeroshot": {"kind": "zeroshot"},
        "upperbound": {"kind": "finetune", "vocab": "000", "iters": 3},
        "lowerbound": {"kind": "finetune", "vocab": "008", "iters": 3, "label": "Lower bound (seed)"},
        "naive": {"kind": "classwise", "in": "lowerbound", "out": "zeroshot", "seed_row": "naive"},
        "naive_pixel": {"kind": "intersection", "in": "lowerbound", "out": "zeroshot", "overlap": "score"},
        "ftzs": {"kind": "pseudolabel", "vocab": "008", "iters": 2},
        "distill": {"kind": "distill", "vocab": "008", "iters": 2},
        "mean_m1": {"kind": "combined", "vocab": "008", "iters": 2, "fusion": "mean", "predict_with": "m1",
                    "m1": "ftzs", "m2": "lowerbound"},
        "mean_m2": {"kind": "combined", "vocab": "008", "iters": 2, "fusion": "mean", "predict_with": "m2",
                    "m1": "ftzs", "m2": "lowerbound"},
        "entropy": {"kind": "combined", "vocab": "008", "iters": 2, "fusion": "entropy", "start": "base_in_only"},
        "wiseft_050": {"kind": "wiseft", "finetuned": "lowerbound", "alpha": 0.5},
    },
}


def test_tiny_fcclip_study_runs_end_to_end(tmp_path):
    config = write_config(tmp_path / "tinyfc.yaml", TINY_FCCLIP)
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert res.returncode == 0, res.stderr[-6000:]
    table = (tmp_path / "results/tinyfc/table.md").read_text()
    for name in TINY_FCCLIP["approaches"]:
        assert f"| {name} |" in table
        metrics = json.loads((tmp_path / f"results/tinyfc/metrics/{name}.json").read_text())
        assert 0.0 <= (metrics["All"]["pq"] or 0.0) <= 1.0
    run = json.loads((tmp_path / "results/tinyfc/metrics/lowerbound.json").read_text())["run"]
    assert run["vocab"] == "008" and run["iterations"] == 3
    # training state lives beside the final weights, outside the declared outputs
    assert list((tmp_path / "results/tinyfc/models/lowerbound/ckpt").glob("ckpt_*.pt"))
    log = (tmp_path / "results/tinyfc/models/lowerbound/ckpt/metrics.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["iter"] == 3
    # the text classifiers are cached per vocabulary: 19 classes for testing, 11 for 008
    assert (tmp_path / "results/tinyfc/text/tiny/000.pt").exists()
    assert (tmp_path / "results/tinyfc/text/tiny/008.pt").exists()
    assert "| lowerbound | Lower bound (seed) |" in table
    # the teacher labelled the training images once; the two "mean" rows share one training
    assert (tmp_path / "results/tinyfc/pseudo/008/train_panoptic.json").exists()
    runs = sorted(p.parent.name for p in (tmp_path / "results/tinyfc/models/combined").glob("*/model.pt"))
    assert runs == ["entropy_008_2_from_base", "mean_008_2_from_ftzs+lowerbound"]
    # the class-wise naive row: per-class results of the lower bound (in) and zero-shot (out)
    naive, lower, zero = (json.loads((tmp_path / f"results/tinyfc/metrics/{n}.json").read_text())
                          for n in ("naive", "lowerbound", "zeroshot"))
    assert naive["per_class"]["7"] == lower["per_class"]["7"] and naive["per_class"]["26"] == zero["per_class"]["26"]
    assert "| naive | FT on in-classes-GT (out -> void) - 1000 iter + intersection with ZS at inference (Naive) | " \
           "50.350 / 65.575 / 29.416 |" in table
    assert not (tmp_path / "results/tinyfc/predictions/naive").exists()
    for figure in ("tradeoff.png", "pq_bars.png"):
        assert (tmp_path / f"results/tinyfc/figures/{figure}").stat().st_size > 0
    assert len(list((tmp_path / "results/tinyfc/figures/panels").glob("panel_*.png"))) == 3


def seed_ordering_violations(out_pq: dict[str, float]) -> list[str]:
    """What breaks the seed's qualitative ordering of Out PQ (x100): the lower bound
    forgets the out-classes (0), FTZS keeps some (> the lower bound's), zero-shot knows
    some (> 0)."""
    broken = []
    if out_pq["lowerbound"] != 0:
        broken.append(f"lower bound Out {out_pq['lowerbound']} != 0")
    if not out_pq["ftzs"] > out_pq["lowerbound"]:
        broken.append(f"FTZS Out {out_pq['ftzs']} <= lower bound Out {out_pq['lowerbound']}")
    if not out_pq["zeroshot"] > 0:
        broken.append(f"zero-shot Out {out_pq['zeroshot']} is 0")
    return broken


def test_seed_ordering_check_holds_on_the_seeds_numbers_and_catches_each_break():
    seed = seed_rows()
    numbers = {name: seed[name].pq_out for name in ("lowerbound", "ftzs", "zeroshot")}
    assert seed_ordering_violations(numbers) == []
    assert seed_ordering_violations({**numbers, "lowerbound": 0.4}) == ["lower bound Out 0.4 != 0"]
    assert seed_ordering_violations({**numbers, "ftzs": 0.0}) == ["FTZS Out 0.0 <= lower bound Out 0.0"]
    assert seed_ordering_violations({**numbers, "zeroshot": 0.0}) == ["zero-shot Out 0.0 is 0"]


# The smallest chain whose zero-shot model knows some out-class: TINY_FCCLIP's 64x128
# world with a base model that learns (24 source images, 300 CLIP steps, 400 base
# iterations: ~80 s of the test's ~2 min on 2 cores) and 8 validation images.
TINY_ORDERING = {
    **TINY_FCCLIP,
    "study": "tinyorder",
    "dataset": {"name": "ordcity", "kind": "synthetic",
                "synthetic": {"train": 8, "val": 8, "height": 64, "width": 128, "seed": 3}},
    "pretrain": {"source": {"train": 24, "val": 2, "height": 64, "width": 128, "seed": 5},
                 "web": {"train": 8, "val": 2, "seed": 6}, "clip_steps": 300, "base_iters": 400},
    "training": {"batch_size": 4, "lr": 0.0005, "crop": [64, 128], "min_scale": 0.75, "max_scale": 1.25,
                 "num_points": 256, "checkpoint_every": 100, "log_every": 20},
    "inference": {"batch_size": 4},
    "approaches": {
        "zeroshot": {"kind": "zeroshot"},
        "lowerbound": {"kind": "finetune", "vocab": "008", "iters": 30, "predict_classes": "vocab"},
        "ftzs": {"kind": "pseudolabel", "vocab": "008", "iters": 30},
    },
}


def test_tiny_chain_keeps_the_seeds_qualitative_ordering(tmp_path):
    """Lower bound Out = 0 < FTZS Out; zero-shot Out > 0: a regression in any of the
    three approaches (or in the pseudo-labels) breaks it."""
    metrics_files = [f"results/tinyorder/metrics/{name}.json" for name in TINY_ORDERING["approaches"]]
    config = write_config(tmp_path / "o.yaml", TINY_ORDERING)
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(config), "--", *metrics_files)  # no table, panels
    assert res.returncode == 0, res.stderr[-6000:]
    out_pq = {}
    for name, path in zip(TINY_ORDERING["approaches"], metrics_files):
        metrics = json.loads((tmp_path / path).read_text())
        out_pq[name] = round(100 * metrics["Out"]["pq"], 3)
    assert seed_ordering_violations(out_pq) == [], out_pq
    # the lower bound predicts its 11 in-classes only (the seed's reading of its Out 0)
    predictions = json.loads((tmp_path / "results/tinyorder/predictions/lowerbound/panoptic.json").read_text())
    predicted = {s["category_id"] for a in predictions["annotations"] for s in a["segments_info"]}
    split = json.loads((tmp_path / "results/tinyorder/vocab/008/split.json").read_text())
    assert predicted and predicted <= set(split["in_ids"])


def test_tiny_study_runs_end_to_end(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", TINY)
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert res.returncode == 0, res.stderr[-4000:]
    table = (tmp_path / "results/tiny/table.md").read_text()
    # every image of the oracle is perfect, so is every resample of them
    assert "| oracle | - | - | 100.000 [100.0, 100.0] | 100.000 [100.0, 100.0] | 100.000 [100.0, 100.0] |" in table
    assert "bootstrap interval over the 3 validation images (1000 resamples, seed 0" in table
    assert (tmp_path / "results/tiny/metrics/oracle.images.npz").stat().st_size > 0
    assert (tmp_path / "results/table.md").read_text() == table  # the table of the study just run
    assert (tmp_path / "results/tiny/table.csv").exists()
    metrics = json.loads((tmp_path / "results/tiny/metrics/oracle.json").read_text())
    assert metrics["All"]["n"] == 19 and metrics["Out"]["n"] == 8 and metrics["In"]["n"] == 11
    assert metrics["run"]["approach"] == "oracle" and metrics["run"]["eval_vocab"] == "008"
    for conf in ("000", "008"):
        assert (tmp_path / f"results/tiny/vocab/{conf}/class_frequency.png").stat().st_size > 0
    # every rule logged and benchmarked
    assert (tmp_path / "logs/tiny/evaluate/oracle.log").exists()
    assert (tmp_path / "benchmarks/tiny/evaluate/oracle.tsv").exists()
    # nothing is left to do but pointing results/table.md at this study's table
    again = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(config))
    assert jobs_planned(again.stdout) == {"all": 1}, again.stdout
    # a second study writes its own tables and leaves the first one's alone
    other = write_config(tmp_path / "other.yaml", {**TINY, "study": "other", "title": "the other study"})
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(other))
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "results/tiny/table.md").read_text() == table
    assert (tmp_path / "results/table.md").read_text() == (tmp_path / "results/other/table.md").read_text()
    assert "# the other study" in (tmp_path / "results/table.md").read_text()
    # running the first study again only copies its (current) table back
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "results/table.md").read_text() == table


def test_tiny_openworld_study_trains_scores_and_tabulates_contmav(tmp_path):
    config = json.loads(json.dumps(TINY))
    config["study"] = "tinyow"
    config["openworld"] = {
        "dataset": "study",
        "unknown": [13],  # car
        "model": {"preset": "tiny"},
        "loss": {"mav_start_epoch": 1},
        "recipe": {"epochs": 3, "batch_size": 2, "augment": {"crop_size": [32, 64]}},
        "eval": {"size": None},  # the tiny city's own size, not the paper's 512 x 1024
        "variants": {"contmav": None, "contmav_trufor": {"model": {"trufor": True}},
                     "contmav_synco": {"loss": {"extra": "synco"}}},
    }
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(write_config(tmp_path / "ow.yaml", config)))
    assert res.returncode == 0, res.stderr[-6000:]
    table = (tmp_path / "results/tinyow/table.md").read_text()
    assert "## Open-world segmentation (ContMAV)" in table
    assert (tmp_path / "results/tinyow/table_openworld.csv").exists()
    for variant in ("contmav", "contmav_trufor", "contmav_synco"):
        assert f"| {variant} |" in table
        metrics = json.loads((tmp_path / f"results/tinyow/openworld/metrics/{variant}.json").read_text())
        assert str(metrics["run"]["unknown"]) == "13" and metrics["run"]["epochs"] == 3
        assert 0.0 <= metrics["anomaly"]["auroc"] <= 1.0  # the tiny city's val images have cars
        log = (tmp_path / f"results/tinyow/openworld/models/{variant}/ckpt/metrics.jsonl").read_text()
        assert json.loads(log.splitlines()[-1])["iter"] == 6  # 3 epochs of 2 iterations (4 images, batch 2)
    weights = json.loads((tmp_path / "results/tinyow/openworld/class_weights.json").read_text())
    assert 13 not in weights["known_train_ids"] and len(weights["weights"]) == 18
    # intervals from the per-image counts, each variant compared with plain ContMAV
    assert (tmp_path / "results/tinyow/openworld/metrics/contmav_trufor.images.npz").stat().st_size > 0
    row = next(line for line in table.splitlines() if line.startswith("| contmav_trufor |"))
    assert row.count(" [") >= 4  # mIoU known, AUPR, FPR95, AUROC (OW mIoU may be '-')
    assert "(* contmav)" in table


def test_missing_official_weights_say_where_they_come_from(tmp_path):
    res = snakemake(tmp_path, "resources/weights/fcclip_cocopan_r50.pth", "--cores", "1",
                    "--configfile", str(REPO / "config/cityscapes-r50.yaml"))
    assert res.returncode != 0
    out = res.stdout + res.stderr
    assert "fcclip_cocopan_r50.pth (model.weights) is missing" in out
    assert "FC-CLIP model zoo" in out and "point model.weights" in out
