"""The second worked example (issue 15): a study on a user's own COCO-panoptic dataset.

The synthetic city exported with other category ids (100..118) and names, integer image
ids and JPEG photos, a prompt-synonyms file and a vocabulary split of the study's own
(a stuff class and two thing classes out), run through the same rules as every study.
"""

from __future__ import annotations

import json

import pytest
import torch

from coco_export import export_coco
from study_configs import TINY
from test_workflow import TINY_FCCLIP, jobs_planned, snakemake, write_config
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city

pytestmark = pytest.mark.workflow

OUT = ["pedestrian", 108, "automobile"]  # pedestrian 111, greenery 108, automobile 113


def coco_study(tmp_path) -> dict:
    """Export a tiny synthetic city as a COCO-panoptic dataset; return its study config."""
    size = TINY["dataset"]["synthetic"]
    city = tmp_path / "city"
    generate_city(city / "raw", split_sizes={"train": size["train"], "val": size["val"]},
                  height=size["height"], width=size["width"], seed=size["seed"])
    prepare_dataset(city / "raw", city / "prepared", ("train", "val"))
    root = export_coco(city / "raw", city / "prepared", tmp_path / "mydata")
    (tmp_path / "synonyms.txt").write_text("111:pedestrian,person,walker\n113:automobile,car\n")
    return {
        **{key: TINY_FCCLIP[key] for key in ("pretrain", "training", "inference")},
        "study": "mystudy",
        "title": "my COCO-panoptic study",
        "dataset": {
            "name": "mydata",
            "kind": "coco_panoptic",
            "coco_panoptic": {"root": str(root), "synonyms": str(tmp_path / "synonyms.txt")},
            # the size of the base model's pretraining images (the synthetic world's)
            "synthetic": {"height": size["height"], "width": size["width"]},
        },
        "vocab_configs": {"mine": OUT},
        "vocabularies": ["mine"],  # its split and plot ("000" is made for the text classifier)
        "eval_vocab": "mine",
        "approaches": {
            "oracle": {"kind": "oracle"},
            "zeroshot": {"kind": "zeroshot"},
            "lowerbound": {"kind": "finetune", "vocab": "mine", "iters": 2},
            "ftzs": {"kind": "pseudolabel", "vocab": "mine", "iters": 2},
            "naive": {"kind": "classwise", "in": "lowerbound", "out": "zeroshot"},
        },
    }


def run_study(tmp_path, config: dict):
    """Run a study to its end in ``tmp_path``; return its results folder."""
    res = snakemake(tmp_path, "--cores", "2", "--configfile", str(write_config(tmp_path / "study.yaml", config)))
    assert res.returncode == 0, res.stderr[-6000:]
    return tmp_path / "results" / config["study"]


def test_a_coco_panoptic_study_runs_end_to_end_on_its_own_classes(tmp_path):
    # About 2 minutes on the 2-core development machine (some 30 jobs, mostly process start-up):
    # the base model's pretraining, two trainings of 2 iterations, the teacher's
    # pseudo-labels, four predictions. The whole chain on other ids is what it is for.
    results = run_study(tmp_path, coco_study(tmp_path))
    split = json.loads((results / "vocab/mine/split.json").read_text())
    assert split["deleted_ids"] == [111, 108, 113] and split["out_names"] == ["greenery", "pedestrian", "automobile"]
    assert not (results / "vocab/008").exists()
    text = torch.load(results / "text/tiny/000.pt", weights_only=True)
    assert len(text["class_names"]) == 19 and text["class_names"][11] == ["pedestrian", "person", "walker"]
    assert text["class_names"][0] == ["roadway"]  # a class without synonyms: its name
    assert len(torch.load(results / "text/tiny/mine.pt", weights_only=True)["class_names"]) == 16
    oracle = json.loads((results / "metrics/oracle.json").read_text())
    assert oracle["All"]["pq"] == 1.0 and oracle["In"]["n"] == 16 and oracle["Out"]["n"] == 3
    assert sorted(map(int, oracle["per_class"])) == list(range(100, 119))
    predicted = json.loads((results / "predictions/zeroshot/panoptic.json").read_text())
    assert {s["category_id"] for a in predicted["annotations"] for s in a["segments_info"]} <= set(range(100, 119))
    lower, zero, naive = (json.loads((results / f"metrics/{n}.json").read_text()) for n in ("lowerbound", "zeroshot", "naive"))
    assert naive["per_class"]["100"] == lower["per_class"]["100"] and naive["per_class"]["111"] == zero["per_class"]["111"]
    table = (results / "table.md").read_text()
    assert "(all 19 classes)" in table and "configuration mine" in table
    assert "| approach | roadway | footpath |" in table  # the per-class table names the study's classes
    for name in ("oracle", "zeroshot", "lowerbound", "ftzs", "naive"):
        assert f"| {name} |" in table
    assert (results / "vocab/mine/class_frequency.png").stat().st_size > 0
    assert len(list((results / "figures/panels").glob("panel_*.png"))) == 3


def test_a_coco_panoptic_study_is_checked_before_any_job(tmp_path):
    # About 17 s: six dry runs of the workflow and one real run of its first three jobs.
    config = coco_study(tmp_path)
    res = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode == 0, res.stderr[-3000:]
    jobs = jobs_planned(res.stdout)
    assert jobs["prepare_coco"] == 1 and jobs["labelset"] == 1 and jobs["vocab_split"] == 2  # 000 and mine
    assert "download_cityscapes" not in jobs and jobs["synth_city"] == 2  # the base model's pretraining cities
    for changes, expected in [
        ({"vocab_configs": None}, "config key vocab_configs: required for dataset.kind coco_panoptic"),
        ({"dataset": {**config["dataset"], "coco_panoptic": {"root": str(tmp_path / "nope")}}},
         f"config key dataset.coco_panoptic.images: {tmp_path / 'nope/images/train'} (train split) not found"),
        ({"dataset": {**config["dataset"], "coco_panoptic": {**config["dataset"]["coco_panoptic"], "synonyms": "x.txt"}}},
         "config key dataset.coco_panoptic.synonyms: x.txt not found"),
        # ContMAV's unknown classes are the dataset's, checked before any job
        ({"openworld": {"dataset": "study", "unknown": ["car"], "variants": {"contmav": None}}},
         "config key openworld.unknown.0: no evaluated class with train id or name 'car' in the mydata label set"),
        ({"openworld": {"dataset": "study", "unknown": [19], "variants": {"contmav": None}}},
         "config key openworld.unknown.0: no evaluated class with train id or name 19"),
    ]:
        res = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", {**config, **changes})))
        assert res.returncode != 0 and expected in res.stderr + res.stdout, changes
    # a class name the dataset does not have fails its vocab_split job, naming the key
    bad = {**config, "vocab_configs": {"mine": ["pedestrain"]}}
    res = snakemake(tmp_path, "--cores", "1", "results/mystudy/vocab/mine/split.json",
                    "--configfile", str(write_config(tmp_path / "c.yaml", bad)))
    assert res.returncode != 0
    log = (tmp_path / "logs/mystudy/vocab_split/mine.log").read_text()
    assert "error: config key vocab_configs.mine: no evaluated class 'pedestrain' in the mydata label set" in log


def coco_openworld_study(tmp_path) -> dict:
    """The exported city as an open-world-only study: ContMAV with two of its classes
    unknown, one by name and one by train id (the tram, category 116, is train id 16)."""
    config = coco_study(tmp_path)
    config.update(
        study="myow",
        vocabularies=[],
        approaches={},
        openworld={
            "dataset": "study",
            "unknown": ["automobile", 16],
            "model": {"preset": "tiny"},
            "loss": {"mav_start_epoch": 1},
            "recipe": {"epochs": 2, "batch_size": 2, "augment": {"crop_size": [32, 64]}},
            "eval": {"size": None},
            "variants": {"contmav": None},
        },
    )
    return config


def test_contmav_runs_on_a_coco_panoptic_study_with_its_own_classes(tmp_path):
    # About 20 s on the 2-core development machine: the preparation, the label set and
    # ContMAV's three jobs (class weights, 2 epochs of the tiny model, evaluation), each a
    # process start-up; the chain on other ids and names is what it is for.
    results = run_study(tmp_path, coco_openworld_study(tmp_path))
    weights = json.loads((results / "openworld/class_weights.json").read_text())
    assert weights["known_train_ids"] == [t for t in range(19) if t not in (13, 16)]
    metrics = json.loads((results / "openworld/metrics/contmav.json").read_text())
    assert metrics["run"]["unknown_train_ids"] == [13, 16] and metrics["run"]["unknown"] == "13 16"
    assert metrics["classes"]["unknown"] == ["automobile", "tram"]  # the dataset's names
    assert metrics["classes"]["known"][:2] == ["roadway", "footpath"]
    assert 0.0 <= metrics["anomaly"]["auroc"] <= 1.0  # the city's val images have cars
    # no class-similarity table: the paper's (train -> truck: tram -> lorry here) is Cityscapes'
    assert metrics["class_similarity"] is None
    table = (results / "table.md").read_text()
    assert "## Open-world segmentation (ContMAV)" in table and "| contmav |" in table


def test_contmav_commands_of_a_coco_study_use_its_train_ids(tmp_path):
    # About 3 s: two dry runs.
    config = coco_openworld_study(tmp_path)
    config["openworld"]["eval"] = {"size": None, "similar": [["tram", "lorry"]]}
    res = snakemake(tmp_path, "-n", "-p", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode == 0, res.stderr[-3000:]
    known = " ".join(str(t) for t in range(19) if t not in (13, 16))
    assert f"--known {known} --labels results/myow/labelset.json" in res.stdout
    assert "--unknown 13 16  --cluster-stride 4 --similar 16:14 --threads 1 --labels results/myow/labelset.json" in res.stdout
    config["openworld"]["eval"]["similar"] = [["roadway", "lorry"]]
    res = snakemake(tmp_path, "-n", "--configfile", str(write_config(tmp_path / "c.yaml", config)))
    assert res.returncode != 0
    assert "config key openworld.eval.similar.0: ['roadway', 'lorry'] must pair an unknown class" in res.stderr + res.stdout
