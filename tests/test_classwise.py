"""The seed's naive row: a class-wise combination of two metrics files, no prediction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vocabseg.approaches.classwise import classwise_images, classwise_metrics
from vocabseg.cli import main
from vocabseg.data.labels import EVAL_LABELS, THING_IDS
from vocabseg.data.panoptic_png import read_panoptic_png
from vocabseg.data.vocab import make_split
from vocabseg.errors import InputError
from vocabseg.evaluation import evaluate_panoptic
from vocabseg.evaluation.bootstrap import METRICS, resampled_metrics
from vocabseg.evaluation.panoptic import evaluate_panoptic_images
from vocabseg.evaluation.synthetic import make_prediction_ids, write_dataset
from vocabseg.fileio import read_json

IDS = [lb.id for lb in EVAL_LABELS]


def _group(per_class: dict, counts: dict, members) -> float | None:
    pqs = [per_class[str(c)]["pq"] for c in members if sum(counts[str(c)].values()) > 0]
    return sum(pqs) / len(pqs) if pqs else None


def test_classwise_equals_the_class_wise_combination_of_two_evaluations(tmp_path):
    """Two real evaluations of different predictions; every per-class entry comes from
    the model responsible for the class, every group is the evaluator's mean of them."""
    ds = write_dataset(tmp_path / "data", n_images=3, height=64, width=128, seed=21)
    rng = np.random.default_rng(7)
    images = []
    for gt_ann in read_json(ds.gt_json)["annotations"]:
        ids, segments = make_prediction_ids(rng, read_panoptic_png(ds.gt_folder / gt_ann["file_name"]), gt_ann["segments_info"])
        images.append((gt_ann["image_id"], ids, segments))
    from test_intersection import write_prediction

    b_json, b_folder = write_prediction(tmp_path / "b", {i: (ids, segs) for i, ids, segs in images})
    split = make_split("004")
    a = evaluate_panoptic(ds.gt_json, ds.gt_folder, ds.pred_json, ds.pred_folder, split=split)
    b = evaluate_panoptic(ds.gt_json, ds.gt_folder, b_json, b_folder, split=split)
    assert abs(a["In"]["pq"] - b["In"]["pq"]) > 0.01 and abs(a["Out"]["pq"] - b["Out"]["pq"]) > 0.01
    m = classwise_metrics(a, b, split)
    for c in split["in_ids"]:
        assert m["per_class"][str(c)] == a["per_class"][str(c)] and m["counts"][str(c)] == a["counts"][str(c)]
    for c in split["out_ids"]:
        assert m["per_class"][str(c)] == b["per_class"][str(c)] and m["counts"][str(c)] == b["counts"][str(c)]
    assert m["In"] == a["In"] and m["Out"] == b["Out"]  # same classes, same numbers: identical groups
    stuff = [c for c in IDS if c not in THING_IDS]
    for group, members in (("All", IDS), ("Things", THING_IDS), ("Stuff", stuff)):
        assert m[group]["pq"] == pytest.approx(_group(m["per_class"], m["counts"], members), abs=1e-12)
    assert m["All"]["n"] == a["In"]["n"] + b["Out"]["n"]
    ious = [v for c, v in {**a["semantic"]["per_class"], **{str(c): b["semantic"]["per_class"][str(c)] for c in split["out_ids"]}}.items() if v is not None]
    assert m["semantic"]["miou"] == pytest.approx(sum(ious) / len(ious), abs=1e-12)

    # the per-image counts combine the same way: summed over all images (one bootstrap
    # "resample" drawing every image once) they give exactly the class-wise metrics
    a_images = evaluate_panoptic_images(ds.gt_json, ds.gt_folder, ds.pred_json, ds.pred_folder, split=split)[1]
    b_images = evaluate_panoptic_images(ds.gt_json, ds.gt_folder, b_json, b_folder, split=split)[1]
    combined = classwise_images(a_images, b_images, split)
    once = resampled_metrics(combined, np.ones((1, len(combined.image_ids))))
    for metric in METRICS:
        group, key = metric.split("/")
        assert once[metric][0] == pytest.approx(m[group][key], abs=1e-12), metric
    with pytest.raises(InputError, match="different validation images"):
        classwise_images(a_images, combined.__class__(**{**vars(b_images), "image_ids": b_images.image_ids[::-1]}), split)


def _flat(pq_in: float, pq_out: float, split: dict) -> dict:
    """Metrics whose in-classes all have PQ pq_in and out-classes pq_out."""
    per_class = {str(c): {"pq": pq_in if c in split["in_ids"] else pq_out, "sq": 0.8, "rq": 0.5} for c in IDS}
    return {"per_class": per_class, "counts": {str(c): {"tp": 1, "fp": 0, "fn": 1} for c in IDS},
            "semantic": {"per_class": {str(c): 0.5 for c in IDS}}}


def test_seed_numbers_reproduce_the_seed_naive_row(tmp_path):
    """Lower bound In 65.575 and zero-shot Out 29.416 give the seed's All 50.35."""
    split = make_split("008")
    lower, zero = _flat(0.65575, 0.0, split), _flat(0.48234, 0.29416, split)
    (tmp_path / "lb.json").write_text(json.dumps(lower))
    (tmp_path / "zs.json").write_text(json.dumps(zero))
    (tmp_path / "split.json").write_text(json.dumps(split))
    out = tmp_path / "naive.json"
    assert main(["classwise", "--in-metrics", str(tmp_path / "lb.json"), "--out-metrics", str(tmp_path / "zs.json"),
                 "--split", str(tmp_path / "split.json"), "--out", str(out), "--fact", "seed_row=naive"]) == 0
    m = read_json(out)
    assert round(100 * m["All"]["pq"], 2) == 50.35 and round(100 * m["All"]["pq"], 3) == 50.350
    assert m["In"]["pq"] == pytest.approx(0.65575) and m["Out"]["pq"] == pytest.approx(0.29416)
    assert m["run"] == {"seed_row": "naive"}


def test_missing_counts_and_uncovered_classes_are_named(tmp_path):
    split = make_split("008")
    old = _flat(0.5, 0.5, split)
    del old["counts"]
    with pytest.raises(InputError, match="old.json: metrics JSON has no 'counts' entry .*evaluate again"):
        classwise_metrics(old, _flat(0.5, 0.5, split), split, names=("old.json", "b.json"))
    with pytest.raises(InputError, match="neither in 'in_ids' nor in 'out_ids'"):
        classwise_metrics(_flat(0.5, 0.5, split), _flat(0.5, 0.5, split), {"in_ids": [7], "out_ids": [24]})
