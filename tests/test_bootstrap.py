"""Tests of vocabseg.evaluation.bootstrap: per-image statistics, resampled metrics equal
to the evaluator on the resampled image list, paired intervals, and the table's
intervals and marks."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from vocabseg.cli import main
from vocabseg.data.labels import EVAL_LABELS, STUFF_IDS, THING_IDS
from vocabseg.errors import InputError
from vocabseg.evaluation import panoptic as pan
from vocabseg.evaluation.bootstrap import (
    METRICS,
    BootstrapSettings,
    bootstrap_rows,
    percentile_interval,
    percentile_intervals,
    resample_counts,
    resampled_metrics,
)
from vocabseg.evaluation.synthetic import write_dataset
from vocabseg.fileio import read_json
from vocabseg.report.table import write_report

TOL = 1e-12
SPLIT = {"in_ids": list(STUFF_IDS), "out_ids": list(THING_IDS)}


def json_metric(results: dict, metric: str) -> float:
    """A metric of :data:`METRICS` from an evaluator result dict; None -> NaN."""
    group, key = metric.split("/")
    value = (results[group] or {}).get(key)  # a group the results lack (no class similarity): None
    return math.nan if value is None else value


def assert_metrics_equal(results: dict, resampled: dict, b: int, metrics=METRICS) -> None:
    for metric in metrics:
        want, got = json_metric(results, metric), resampled[metric][b]
        assert (math.isnan(want) and math.isnan(got)) or abs(want - got) <= TOL, (metric, want, got)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Five 64x128 GT/prediction pairs (one prediction VOID only) and their per-image stats."""
    ds = write_dataset(tmp_path_factory.mktemp("boot") / "data", n_images=5, seed=5, empty_images=1)
    results, per_image = pan.evaluate_panoptic_images(
        ds.gt_json, ds.gt_folder, ds.pred_json, ds.pred_folder, split=SPLIT
    )
    return ds, results, per_image


# --------------------------------------------------------------------------- per-image statistics


def test_per_image_stats_sum_to_the_evaluated_totals(dataset):
    ds, results, per_image = dataset
    assert per_image.image_ids.tolist() == [a["image_id"] for a in read_json(ds.gt_json)["annotations"]]
    assert set(per_image.groups) == {"All", "Things", "Stuff", "In", "Out"}
    assert per_image.groups["Out"].sum() == 8 and per_image.groups["In"].sum() == 11
    assert_metrics_equal(results, resampled_metrics(per_image, np.ones((1, 5))), 0)


def test_per_image_stats_round_trip_without_pickle(dataset, tmp_path):
    _, _, per_image = dataset
    per_image.save(tmp_path / "a.images.npz")
    with np.load(tmp_path / "a.images.npz", allow_pickle=False) as data:
        assert data["tp"].shape == (5, 19) and data["image_ids"].dtype.kind == "U"
    loaded = pan.PerImageStats.load(tmp_path / "a.images.npz")
    for name in ("image_ids", "category_ids", *pan.PerImageStats.COUNTS):
        assert np.array_equal(getattr(loaded, name), getattr(per_image, name)), name
    assert all(np.array_equal(loaded.groups[g], m) for g, m in per_image.groups.items())
    (tmp_path / "bad.images.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="bad.images.npz"):
        pan.PerImageStats.load(tmp_path / "bad.images.npz")


def test_evaluate_command_writes_the_per_image_stats(dataset, tmp_path):
    ds, results, per_image = dataset
    split = tmp_path / "split.json"
    split.write_text(json.dumps(SPLIT))
    args = ["evaluate-panoptic", "--gt-json", str(ds.gt_json), "--gt-folder", str(ds.gt_folder),
            "--pred-json", str(ds.pred_json), "--pred-folder", str(ds.pred_folder), "--split", str(split),
            "--out", str(tmp_path / "m.json"), "--images-out", str(tmp_path / "m.images.npz")]
    assert main(args) == 0
    assert np.array_equal(pan.PerImageStats.load(tmp_path / "m.images.npz").iou, per_image.iou)
    assert read_json(tmp_path / "m.json")["All"] == results["All"]


# --------------------------------------------------------------------------- exactness


def test_resamples_equal_the_evaluator_on_the_resampled_image_list(dataset, tmp_path):
    """Each resample's metrics equal evaluating a GT set in which image i appears c_i times."""
    ds, _, per_image = dataset
    counts = resample_counts(5, 4, seed=7)
    assert (counts > 1).any() and (counts == 0).any()  # repeated and left-out images are exercised
    resampled = resampled_metrics(per_image, counts)
    gt, pred = read_json(ds.gt_json), read_json(ds.pred_json)
    pred_of = {ann["image_id"]: ann for ann in pred["annotations"]}
    for b, row in enumerate(counts.astype(int)):
        # the k-th copy of an image is a new image id over the same PNGs (the evaluator
        # rightly refuses an image id given twice)
        copies = [(ann, k) for ann, c in zip(gt["annotations"], row) for k in range(c)]
        paths = {}
        for name, data, annotations in (
            ("gt", gt, [{**ann, "image_id": f"{ann['image_id']}#{k}"} for ann, k in copies]),
            ("pred", pred, [{**pred_of[ann["image_id"]], "image_id": f"{ann['image_id']}#{k}"} for ann, k in copies]),
        ):
            paths[name] = tmp_path / f"{name}_resample_{b}.json"
            images = [{"id": a["image_id"], "file_name": a["file_name"]} for a in annotations]
            paths[name].write_text(json.dumps({**data, "images": images, "annotations": annotations}))
        results = pan.evaluate_panoptic(paths["gt"], ds.gt_folder, paths["pred"], ds.pred_folder, split=SPLIT)
        assert_metrics_equal(results, resampled, b)


def random_stats(rng, n_images: int, k: int, isthing: np.ndarray) -> pan.PerImageStats:
    """Sparse random per-image counts: many classes absent from many images."""
    shape = (n_images, k)
    present = rng.random(shape) < 0.3
    tp = rng.integers(0, 4, shape) * present
    return pan.PerImageStats(
        image_ids=np.array([f"im{i}" for i in range(n_images)]),
        category_ids=np.arange(k, dtype=np.int64),
        groups={"All": np.ones(k, bool), "Things": isthing, "Stuff": ~isthing,
                "In": np.arange(k) < 3, "Out": np.arange(k) >= 3},
        iou=tp * rng.uniform(0.5, 1.0, shape),
        tp=tp, fp=rng.integers(0, 3, shape) * present, fn=rng.integers(0, 3, shape) * present,
        sem_inter=rng.integers(0, 50, shape) * present, sem_union=rng.integers(50, 90, shape) * present,
    )


def test_group_rules_follow_the_evaluator_including_absent_classes_and_empty_groups():
    """Against ``summarize`` on the summed counts: absent classes are left out of the
    means and a group without any class is null, resample by resample."""
    rng = np.random.default_rng(3)
    k = 6
    isthing = np.array([False, False, False, True, True, True])
    stats = random_stats(rng, 4, k, isthing)
    categories = pan.Categories(tuple(range(k)), tuple(bool(t) for t in isthing))
    split = {"in_ids": [0, 1, 2], "out_ids": [3, 4, 5]}
    counts = resample_counts(4, 200, seed=1)
    resampled = resampled_metrics(stats, counts)
    empty_groups = 0
    for b, row in enumerate(counts):
        total = pan.ImageStats.zeros(k)
        for i, c in enumerate(row.astype(int)):
            for _ in range(c):
                confusion = np.zeros((k, k + 1), np.int64)
                np.fill_diagonal(confusion, stats.sem_inter[i])
                confusion[:, k] = stats.sem_union[i] - stats.sem_inter[i]
                total += pan.ImageStats(stats.iou[i].copy(), stats.tp[i].copy(), stats.fp[i].copy(),
                                        stats.fn[i].copy(), confusion)
        results = pan.summarize(total, categories, split)
        assert_metrics_equal(results, resampled, b)
        empty_groups += results["Things"]["n"] == 0 or results["Stuff"]["n"] == 0
    assert empty_groups > 0  # the data do produce resamples with an empty group


# --------------------------------------------------------------------------- intervals


def test_resampling_is_seeded_and_draws_n_images_each_time():
    a, b = resample_counts(30, 50, seed=4), resample_counts(30, 50, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, resample_counts(30, 50, seed=5))
    assert (a.sum(axis=1) == 30).all()


def test_percentile_intervals_are_numpys_percentiles_of_the_finite_values():
    rng = np.random.default_rng(8)
    samples = rng.normal(size=(30, 97))
    samples[rng.random(samples.shape) < 0.2] = np.nan
    samples[0] = np.nan
    samples[1, 1:] = np.nan  # a single finite value
    got = percentile_intervals(samples, 0.9)
    assert np.isnan(got[0]).all()
    for row, (lo, hi) in zip(samples[1:], got[1:]):
        want = np.percentile(row[~np.isnan(row)], [5.0, 95.0])
        assert abs(lo - want[0]) <= TOL and abs(hi - want[1]) <= TOL
    assert percentile_interval(np.array([np.nan, *range(101)], dtype=float)) == pytest.approx((2.5, 97.5))


def test_paired_interval_of_a_row_against_itself_is_exactly_zero(dataset):
    _, _, per_image = dataset
    boot = bootstrap_rows({"a": per_image, "b": per_image}, ["a"], BootstrapSettings(resamples=200, seed=2))
    paired = boot[boot["reference"] == "a"]
    assert len(paired) == 2 * 16
    finite = paired.dropna(subset=["lo"])
    assert (finite[["estimate", "lo", "hi"]] == 0.0).all().all() and len(finite) == 2 * 16
    own = boot[boot["reference"] == ""].set_index(["approach", "metric"])
    assert (own.loc["a"] == own.loc["b"]).all().all()
    assert (own["lo"] <= own["estimate"]).all() and (own["estimate"] <= own["hi"]).all()


def test_rows_over_different_images_are_refused(dataset):
    _, _, per_image = dataset
    other = pan.PerImageStats(**{**per_image.__dict__, "image_ids": per_image.image_ids[::-1]})
    with pytest.raises(InputError, match="different images"):
        bootstrap_rows({"a": per_image, "b": other})
    with pytest.raises(InputError, match="not rows"):
        bootstrap_rows({"a": per_image}, ["zeroshot"])


# --------------------------------------------------------------------------- the table


def row_files(tmp_path, name: str, stats: pan.PerImageStats):
    """Metrics JSON (by the evaluator's summarize) and per-image stats of one table row."""
    k = stats.category_ids.size
    total = pan.ImageStats(stats.iou.sum(0), stats.tp.sum(0), stats.fp.sum(0), stats.fn.sum(0),
                           np.zeros((k, k + 1), np.int64))
    np.fill_diagonal(total.confusion, stats.sem_inter.sum(0))
    total.confusion[:, k] = stats.sem_union.sum(0) - stats.sem_inter.sum(0)
    categories = pan.Categories(tuple(int(c) for c in stats.category_ids),
                                tuple(lb.id in THING_IDS for lb in EVAL_LABELS))
    metrics = pan.summarize(total, categories, SPLIT)
    metrics["run"] = {"approach": name, "kind": "zeroshot" if name == "zeroshot" else "finetune",
                      "vocab": "008", "eval_vocab": "008"}
    json_path, npz_path = tmp_path / f"{name}.json", tmp_path / f"{name}.images.npz"
    json_path.write_text(json.dumps(metrics))
    stats.save(npz_path)
    return json_path, npz_path


def scaled_stats(stats: pan.PerImageStats, quality: float) -> pan.PerImageStats:
    """The same images with a share ``quality`` of the matches kept (the rest become FN + FP)."""
    tp = np.floor(stats.tp * quality).astype(np.int64)
    lost = stats.tp - tp
    return pan.PerImageStats(**{**stats.__dict__, "tp": tp, "iou": stats.iou * np.divide(
        tp, stats.tp, out=np.zeros(tp.shape), where=stats.tp > 0), "fp": stats.fp + lost, "fn": stats.fn + lost,
        "sem_inter": np.floor(stats.sem_inter * quality).astype(np.int64)})


def table_stats(seed: int = 0, n_images: int = 60) -> pan.PerImageStats:
    """Random per-image counts of the 19 Cityscapes classes (stuff in, things out), with
    enough matches per image that scaled copies (:func:`scaled_stats`) differ significantly."""
    rng = np.random.default_rng(seed)
    ids = [lb.id for lb in EVAL_LABELS]
    isthing = np.array([i in THING_IDS for i in ids])
    base = random_stats(rng, n_images, 19, isthing)
    base = pan.PerImageStats(**{**base.__dict__, "category_ids": np.array(ids), "groups": {
        "All": np.ones(19, bool), "Things": isthing, "Stuff": ~isthing, "In": ~isthing, "Out": isthing}})
    return pan.PerImageStats(**{**base.__dict__, "tp": base.tp + 3 * (base.sem_union > 0),
                                "iou": base.iou + 2.4 * (base.sem_union > 0)})


def test_table_shows_intervals_and_marks_significant_paired_differences(tmp_path):
    base = table_stats()
    rows = {"zeroshot": scaled_stats(base, 0.5), "good": base, "same": scaled_stats(base, 0.5)}
    files = [row_files(tmp_path, name, s) for name, s in rows.items()]
    md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    frame = write_report([j for j, _ in files], md, table_csv, tmp_path / "b.png", "T",
                         tradeoff_png=tmp_path / "to.png", image_stats=[n for _, n in files],
                         references=["zeroshot"], bootstrap=BootstrapSettings(resamples=300, seed=0))
    text = md.read_text()
    assert "95 % bootstrap interval over the 60 validation images (300 resamples, seed 0" in text
    assert "Marks: the paired 95 % interval of the difference to that row excludes 0 (* zeroshot)" in text
    good, same = frame.set_index("approach").loc["good"], frame.set_index("approach").loc["same"]
    assert good["PQ vs zeroshot lo"] > 0 and same["PQ vs zeroshot lo"] == same["PQ vs zeroshot hi"] == 0
    cell = f"{good['PQ']:.3f} [{good['PQ lo']:.1f}, {good['PQ hi']:.1f}]*"
    assert f"| good | - | - | {cell} |" in text  # no seed row, no seed numbers
    assert f"| same | - | - | {same['PQ']:.3f} [{same['PQ lo']:.1f}, {same['PQ hi']:.1f}] |" in text
    header = next(csv.reader(table_csv.open()))
    for column in ("PQ lo", "PQ hi", "PQ vs zeroshot", "PQ vs zeroshot lo", "mIoU vs zeroshot hi", "PQ Out hi"):
        assert column in header
    assert (tmp_path / "to.png").stat().st_size > 0


def test_report_command_takes_the_uncertainty_options(dataset, tmp_path):
    ds, results, per_image = dataset
    results = {**results, "run": {"approach": "a"}}
    (tmp_path / "a.json").write_text(json.dumps(results))
    per_image.save(tmp_path / "a.images.npz")
    out = ["--table-md", str(tmp_path / "t.md"), "--table-csv", str(tmp_path / "t.csv"), "--bars", str(tmp_path / "b.png")]
    args = ["report", "--metrics", str(tmp_path / "a.json"), *out, "--images", str(tmp_path / "a.images.npz"),
            "--resamples", "50", "--seed", "3", "--references", "a"]
    assert main(args) == 0
    assert "(50 resamples, seed 3" in (tmp_path / "t.md").read_text()
    assert main([*args[:3], str(tmp_path / "a.json"), *args[3:]]) == 1  # two metrics, one npz
    assert main([*args, "--score-bins", "5"]) == 1  # the open-world rows' score groups: at least 10


# --------------------------------------------------------------------------- open-world rows


def openworld_images(rng, n_images: int, k: int = 3, u: int = 2, shape=(12, 16)):
    """Random per-image arrays of an open-world evaluation (void, unknown and discovered pixels)."""
    images = []
    for _ in range(n_images):
        gt = rng.integers(0, k + u, shape)
        gt[rng.random(shape) < 0.1] = 255
        images.append({
            "gt": gt,
            "semantic_pred": rng.integers(0, k, shape),
            "unknown_score": np.round(np.clip(rng.normal(0.3 + 0.4 * (gt >= k) * (gt != 255), 0.2), 0, 1), 2),
            "openworld_pred": np.where(rng.random(shape) < 0.3, k + rng.integers(0, 3, shape), rng.integers(0, k, shape)),
            "similar": rng.integers(0, k, shape),  # the most similar known class of each pixel
        })
    return images


@pytest.mark.parametrize("score_bins", [64, None], ids=["binned", "exact"])
def test_openworld_resamples_equal_the_accumulator_on_the_resampled_image_list(score_bins):
    """Per-image counts at the accumulator's resolution (64 bins, or every distinct
    score): every resample equals the accumulator fed the resampled image list."""
    from vocabseg.evaluation.bootstrap import OPENWORLD_METRICS
    from vocabseg.openworld.metrics import OpenWorldAccumulator

    rng = np.random.default_rng(6)
    images = openworld_images(rng, 6)
    targets = {3: 1}  # class similarity of unknown class 3; class 4 has no target
    acc = OpenWorldAccumulator(3, 2, score_bins=score_bins, per_image=True, similar_targets=targets)
    for image in images:
        acc.update(image["gt"], **{key: v for key, v in image.items() if key != "gt"})
    stats = acc.image_stats()
    counts = resample_counts(6, 5, seed=2)
    assert (counts > 1).any()
    resampled = resampled_metrics(stats, np.vstack([np.ones(6), counts]))
    for b, row in enumerate([np.ones(6, int), *counts.astype(int)]):
        again = OpenWorldAccumulator(3, 2, score_bins=score_bins, similar_targets=targets)  # the same scores
        for image, c in zip(images, row):
            for _ in range(c):
                again.update(image["gt"], **{key: v for key, v in image.items() if key != "gt"})
        assert_metrics_equal(again.summarize(), resampled, b, OPENWORLD_METRICS)
    assert not np.isnan(resampled["class_similarity/accuracy"]).any()


def openworld_row_files(tmp_path, noise_of: dict[str, float]) -> list[tuple]:
    """(metrics JSON, per-image stats) of open-world rows on the same 12 random images,
    row ``name`` with its unknown score blurred by uniform noise of ``noise_of[name]``."""
    from vocabseg.openworld.metrics import OpenWorldAccumulator, write_openworld_metrics

    rng = np.random.default_rng(1)
    images = openworld_images(rng, 12)
    files = []
    for name, noise in noise_of.items():
        acc = OpenWorldAccumulator(3, 2, score_bins=32, per_image=True, similar_targets={3: 1, 4: 0})
        for image in images:
            score = np.clip(image["unknown_score"] + noise * rng.random(image["gt"].shape), 0, 1)
            acc.update(image["gt"], **{**{key: v for key, v in image.items() if key != "gt"}, "unknown_score": score})
        write_openworld_metrics(acc.summarize(), tmp_path / f"{name}.json", run={"approach": name})
        acc.image_stats().save(tmp_path / f"{name}.images.npz")
        files.append((tmp_path / f"{name}.json", tmp_path / f"{name}.images.npz"))
    return files


def test_openworld_stats_round_trip_and_enter_the_table(tmp_path):
    from vocabseg.openworld.metrics import OpenWorldImageStats

    files = openworld_row_files(tmp_path, {"contmav": 0.0, "contmav_focal": 0.5})
    loaded = OpenWorldImageStats.load(files[0][1])
    assert loaded.n_known == 3 and loaded.open_world and loaded.score_offsets.shape == (13,)
    assert loaded.score_keys.dtype == np.int32 and loaded.score_keys.max() < 32  # bins of the 32-bin curves
    assert np.unique(loaded.score_keys).size > 10  # so the report's 10 score groups group them
    md, table_csv = tmp_path / "t.md", tmp_path / "t.csv"
    write_report([], md, table_csv, tmp_path / "b.png", "T", openworld_files=[j for j, _ in files],
                 openworld_image_stats=[n for _, n in files], openworld_references=["contmav"],
                 bootstrap=BootstrapSettings(resamples=200, score_bins=10))
    text = md.read_text()
    assert "grouped into at most 10 bins" in text
    assert "| contmav_focal |" in text and "AUROC" in text
    row = next(line for line in text.splitlines() if line.startswith("| contmav_focal |"))
    assert row.count("[") == 6  # every metric has its interval, the class similarity too
    header = next(csv.reader((tmp_path / "t_openworld.csv").open()))
    assert {"AUROC lo", "AUROC hi", "AUROC vs contmav lo", "OW mIoU vs contmav hi", "class sim lo"} <= set(header)


# --------------------------------------------------------------------------- open-world score resolution

ANOMALY = ("anomaly/aupr", "anomaly/auroc", "anomaly/fpr95")


def crowded_images(rng, n_images: int, shape=(64, 64)):
    """Images of 2 known + 1 unknown class whose scores crowd as plain ContMAV's: 30 % of
    the known and 10 % of the unknown pixels within 1e-4 of 0.5005 (inside one 1/1000-wide
    bin), so the FPR95 threshold lies inside the crowd; the rest spread out."""
    for _ in range(n_images):
        gt = rng.integers(0, 3, shape)
        band = 0.5005 + rng.uniform(-1e-4, 1e-4, shape)
        unknown = np.where(rng.random(shape) < 0.1, band, rng.uniform(0.6, 1.0, shape))
        known = np.where(rng.random(shape) < 0.3, band, rng.uniform(0.0, 0.49, shape))
        yield {"gt": gt, "semantic_pred": np.minimum(gt, 1), "unknown_score": np.where(gt >= 2, unknown, known),
               "openworld_pred": np.where(gt >= 2, 2, gt)}


@pytest.mark.parametrize("score_bins", [2**20, None], ids=["binned", "exact"])
def test_crowded_scores_full_sample_is_the_point_estimate_and_inside_its_interval(score_bins):
    """Issue #14: with 1000 score bins per image, this data's full-sample FPR95 was 0.30
    against a point estimate of 0.157, and the interval [0.297, 0.303] excluded the
    point. At the point estimate's resolution the full sample gives the point exactly."""
    from vocabseg.openworld.metrics import OpenWorldAccumulator

    acc = OpenWorldAccumulator(2, 1, score_bins=score_bins, per_image=True)
    for image in crowded_images(np.random.default_rng(0), 40):
        acc.update(image.pop("gt"), **image)
    point, stats = acc.summarize()["anomaly"], acc.image_stats()
    assert np.unique(stats.score_keys).size > 10**5  # more bins than the 4096 the resamples use: grouped
    settings = BootstrapSettings(resamples=200)
    boot = bootstrap_rows({"contmav": stats}, settings=settings)
    for metric in ANOMALY:
        row = boot[boot["metric"] == metric].iloc[0]
        want = point[metric.split("/")[1]]
        assert row["estimate"] == want, (metric, row["estimate"], want)
        assert row["lo"] <= want <= row["hi"], (metric, row["lo"], want, row["hi"])
    assert 0.15 < point["fpr95"] < 0.17
    # what the report does to bound its memory: group each row as it loads it; the same intervals
    grouped = stats.grouped(settings.score_bins)
    assert grouped.score_keys.size < stats.score_keys.size / 2 and grouped.score_keys.max() < 4096
    again = bootstrap_rows({"contmav": grouped}, settings=settings)
    assert np.allclose(again[["estimate", "lo", "hi"]], boot[["estimate", "lo", "hi"]], rtol=0, atol=1e-12, equal_nan=True)


def test_grouped_resamples_stay_within_the_grouping_bound():
    """Forced into 31 bins: the full sample is the point estimate exactly (and its FPR95
    bin is kept, so the grouped counts alone give it), and each resample differs from
    the accumulator run on the resampled image list by at most E_b + E_1, the grouping's
    error bound on the resample's and on the full sample's grouped counts."""
    from vocabseg.evaluation.bootstrap import anomaly_metrics, anomaly_resamples
    from vocabseg.openworld.metrics import BinnedScores, OpenWorldAccumulator

    images = list(crowded_images(np.random.default_rng(1), 8, shape=(16, 24)))
    acc = OpenWorldAccumulator(2, 1, score_bins=2**20, per_image=True)
    for image in images:
        acc.update(image["gt"], **{key: v for key, v in image.items() if key != "gt"})
    stats = acc.image_stats()
    pos, neg, point = stats.rebinned_scores(31)
    assert pos.shape[1] <= 31 < np.unique(stats.score_keys).size
    assert point.tolist() == [acc.summarize()["anomaly"][key] for key in ("aupr", "auroc", "fpr95")]
    counts = np.vstack([np.ones(8), resample_counts(8, 20, seed=4)])
    values = anomaly_resamples(stats, counts, score_bins=31)

    def bound(row: np.ndarray) -> dict:
        grouped = BinnedScores(pos.shape[1])
        grouped.pos, grouped.neg = (row @ pos).astype(np.int64), (row @ neg).astype(np.int64)
        return grouped.error_bound()

    full = bound(counts[0])
    assert full["fpr95"] > 0 and full["auroc"] > 0  # the grouping does cost resolution here
    assert anomaly_metrics(pos.sum(0)[None], neg.sum(0)[None])["anomaly/fpr95"][0] == acc.summarize()["anomaly"]["fpr95"]
    for b, row in enumerate(counts.astype(int)):
        again = OpenWorldAccumulator(2, 1, score_bins=2**20)
        for image, c in zip(images, row):
            for _ in range(c):
                again.update(image["gt"], **{key: v for key, v in image.items() if key != "gt"})
        want, e_b = again.summarize()["anomaly"], bound(row)
        for metric in ANOMALY:
            key = metric.split("/")[1]
            allowed = TOL if b == 0 else e_b[key] + full[key] + TOL
            assert abs(values[metric][b] - want[key]) <= allowed, (b, metric, values[metric][b], want[key])


def test_score_grid_keeps_crowded_bins_and_the_fpr95_bin_apart():
    from vocabseg.openworld.metrics import score_grid

    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 5, 5000), rng.integers(0, 5, 5000)
    neg[2500] = 10**6  # one crowded bin of the known class
    group = score_grid(pos, neg, 103)
    assert group[-1] + 1 <= 103 and np.all(np.diff(group) >= 0) and group[0] == 0
    assert np.sum(group == group[2500]) == 1  # alone in its group
    crossing = 5000 - 1 - int(np.argmax(np.cumsum(pos[::-1]) * 20 >= 19 * pos.sum()))
    assert np.sum(group == group[crossing]) == 1
    assert np.array_equal(score_grid(pos[:50], neg[:50], 103), np.arange(50))  # few bins: unchanged


def test_openworld_stats_of_the_old_1000_bin_format_are_refused_naming_the_file(tmp_path):
    from vocabseg.fileio import write_npz_atomic
    from vocabseg.openworld.metrics import OpenWorldImageStats

    n = 3
    write_npz_atomic({"image_ids": np.array(["a", "b", "c"]), "n_known": np.int64(2), "open_world": np.bool_(True),
                      "known_inter": np.zeros((n, 2), np.int64), "known_union": np.zeros((n, 2), np.int64),
                      "score_pos": np.zeros((n, 1000), np.int64), "score_neg": np.zeros((n, 1000), np.int64),
                      "contingency": np.zeros((n, 0, 3), np.int64), "gt_area": np.zeros((n, 3), np.int64)},
                     tmp_path / "contmav.images.npz")
    with pytest.raises(InputError, match=r"contmav\.images\.npz: .*1000 bins per image.*forcerun contmav_eval"):
        OpenWorldImageStats.load(tmp_path / "contmav.images.npz")
