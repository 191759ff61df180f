"""Open-world metrics against direct computations and scikit-learn, on data with ties."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from vocabseg.openworld.metrics import (
    BinnedScores,
    ExactScores,
    OpenWorldAccumulator,
    auroc,
    average_precision,
    curve_counts,
    discovered_contingency,
    fpr_at_tpr,
    known_confusion,
    match_discovered,
    metrics_from_counts,
    openworld_table_row,
    write_openworld_metrics,
)


# ---------------------------------------------------------------- direct references
def direct_ap(s: np.ndarray, y: np.ndarray) -> float:
    """Σ (R_t − R_prev) Prec_t over the distinct thresholds t, highest first."""
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        above = s >= t
        tp, fp = int((above & y).sum()), int((above & ~y).sum())
        recall = tp / y.sum()
        total += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return total


def direct_auroc(s: np.ndarray, y: np.ndarray) -> float:
    """Mann–Whitney: P(s⁺ > s⁻) + ½ P(s⁺ = s⁻), over all pairs."""
    pos, neg = s[y], s[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def direct_fpr95(s: np.ndarray, y: np.ndarray) -> float:
    """Smallest FPR over the thresholds t whose TPR is at least 95 % (exact fractions)."""
    best = None
    for t in set(s.tolist()):
        above = s >= t
        if Fraction(int((above & y).sum()), int(y.sum())) >= Fraction(95, 100):
            fpr = (above & ~y).sum() / (~y).sum()
            best = fpr if best is None else min(best, fpr)
    return float(best)


def random_tied(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores on a coarse grid (many ties) in [0, 1], correlated with the labels."""
    levels = int(rng.integers(2, 25))
    y = rng.random(n) < rng.uniform(0.1, 0.9)
    raw = rng.random(n) + rng.uniform(0, 1) * y
    s = np.floor(raw / raw.max() * (levels - 1)) / (levels - 1)
    return s, y


# ---------------------------------------------------------------- anomaly metrics
def test_curve_metrics_by_hand():
    s = np.array([0.9, 0.8, 0.8, 0.1])
    y = np.array([True, False, True, False])
    tp, fp = curve_counts(s, y)
    assert tp.tolist() == [1, 2, 2] and fp.tolist() == [0, 1, 2]
    assert average_precision(s, y) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert auroc(s, y) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    assert fpr_at_tpr(s, y) == 0.5  # TPR 1 first at threshold 0.8, with 1 of 2 negatives


def test_metrics_match_direct_computation_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(60):
        s, y = random_tied(rng, int(rng.integers(5, 120)))
        if y.all() or not y.any():
            continue
        assert average_precision(s, y) == pytest.approx(direct_ap(s, y), abs=1e-12)
        assert auroc(s, y) == pytest.approx(direct_auroc(s, y), abs=1e-12)
        assert fpr_at_tpr(s, y) == pytest.approx(direct_fpr95(s, y), abs=1e-12)


def test_metrics_match_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(60):
        s, y = random_tied(rng, int(rng.integers(5, 2000)))
        if y.all() or not y.any():
            continue
        assert average_precision(s, y) == pytest.approx(metrics.average_precision_score(y, s), abs=1e-12)
        assert auroc(s, y) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
        fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
        assert fpr_at_tpr(s, y) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)


def test_fpr95_at_exactly_95_percent_and_undefined_cases():
    # 19 of 20 unknown pixels score 1.0: TPR = 0.95 exactly at threshold 1.0, no negative there
    s = np.array([1.0] * 19 + [0.0] + [0.5] * 10 + [0.0] * 10)
    y = np.array([True] * 20 + [False] * 20)
    assert fpr_at_tpr(s, y) == 0.0
    no_pos = metrics_from_counts(*curve_counts([0.1, 0.2], [False, False]))
    assert (no_pos["aupr"], no_pos["auroc"], no_pos["fpr95"], no_pos["n_known"]) == (None, None, None, 2)
    no_neg = metrics_from_counts(*curve_counts([0.1, 0.2], [True, True]))
    assert (no_neg["aupr"], no_neg["auroc"], no_neg["fpr95"]) == (1.0, None, None)
    with pytest.raises(ValueError):
        curve_counts([0.1, float("nan")], [True, False])


def test_exact_accumulation_equals_one_shot():
    rng = np.random.default_rng(2)
    s, y = random_tied(rng, 500)
    acc = ExactScores()
    for part in np.array_split(np.arange(500), 7):
        acc.update(torch.from_numpy(s[part]), y[part])
    m = acc.metrics()
    assert m["aupr"] == average_precision(s, y) and m["auroc"] == auroc(s, y) and m["fpr95"] == fpr_at_tpr(s, y)
    assert (m["n_unknown"], m["n_known"], m["method"]) == (int(y.sum()), int((~y).sum()), "exact")


def test_binned_equals_exact_on_quantised_scores_and_stays_within_its_bound():
    rng = np.random.default_rng(3)
    for n_bins in (7, 50, 1000):
        for _ in range(10):
            n = int(rng.integers(50, 3000))
            y = rng.random(n) < 0.3
            s = np.clip(rng.beta(2, 5, n) + 0.3 * y * rng.random(n), 0, 1)
            s[:5] = 1.0  # the top edge belongs to the last bin
            binned = BinnedScores(n_bins)
            for part in np.array_split(np.arange(n), 3):
                binned.update(s[part], y[part])
            got = binned.metrics()
            quantised = np.minimum(np.floor(s * n_bins), n_bins - 1)
            exact_q = metrics_from_counts(*curve_counts(quantised, y))
            exact = metrics_from_counts(*curve_counts(s, y))
            for key in ("aupr", "auroc", "fpr95"):
                assert got[key] == pytest.approx(exact_q[key], abs=1e-12)
                assert abs(got[key] - exact[key]) <= got["error_bound"][key] + 1e-12
            assert got["fpr95"] >= exact["fpr95"] - 1e-12  # never under-states the FPR


def realistic_scores(rng: np.random.Generator, kind: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unknown scores of ``n`` pixels (3 % unknown) shaped like a real evaluation's."""
    y = rng.random(n) < 0.03
    if kind == "smooth":  # densities below 3 per unit score
        return np.where(y, rng.beta(5, 2, n), rng.beta(2, 6, n)), y
    if kind == "ties":  # a coarse grid: every score shared by thousands of pixels
        return np.round(np.where(y, rng.beta(5, 2, n), rng.beta(2, 6, n)), 2), y
    if kind == "edges":  # atoms at 0 and 1, the rest crowded within 1e-4 of the edges
        s = np.clip(np.where(y, 1 - rng.exponential(1e-4, n), rng.exponential(1e-4, n)), 0, 1)
        s[rng.random(n) < 0.1], s[rng.random(n) < 0.1] = 1.0, 0.0
        return s, y
    # ContMAV's fused float32 score: a Gaussian score saturating towards 1, a norm score
    # clamped at 0 for most known pixels (the mass just below and at 0.5)
    d2 = np.where(y, rng.gamma(8, 3, n), rng.chisquare(19, n)).astype(np.float32)
    s_sem = 1 - np.exp(-0.5 * d2)
    s_cont = np.clip(1 - np.where(y, rng.gamma(1, 0.5, n), rng.gamma(6, 0.5, n)), 0, None).astype(np.float32)
    return (np.float32(0.5) * (s_sem + s_cont)).astype(np.float64), y


@pytest.mark.parametrize("kind", ["smooth", "ties", "edges", "contmav"])
def test_default_binning_stays_within_the_stated_tolerance(kind):
    """The module docstring's tolerance: ``|ΔAUROC| <= ½ min(c⁺, c⁻)``, ``|ΔFPR95| <= c⁻``,
    ``|ΔAUPR| <= c⁺ (1 + ln(n / m₁))`` from the bin masses, the reported bound tighter
    still, and for smooth scores (density f <= 100) 4.8e-5 / 9.6e-5 from the bin width."""
    from vocabseg.openworld.metrics import SCORE_BINS

    rng = np.random.default_rng(["smooth", "ties", "edges", "contmav"].index(kind))
    s, y = realistic_scores(rng, kind, 300_000)
    exact = metrics_from_counts(*curve_counts(s, y))
    try:  # the exact values are scikit-learn's
        from sklearn import metrics as sk
    except ImportError:
        sk = None
    if sk is not None:
        assert exact["aupr"] == pytest.approx(sk.average_precision_score(y, s), abs=1e-9)
        assert exact["auroc"] == pytest.approx(sk.roc_auc_score(y, s), abs=1e-9)
    binned = BinnedScores()
    for part in np.array_split(np.arange(s.size), 5):  # streamed, as images arrive
        binned.update(s[part], y[part])
    got, bound = binned.metrics(), binned.error_bound()
    assert got["bins"] == SCORE_BINS == 2**20 and got["error_bound"] == bound
    c_pos, c_neg = binned.pos.max() / y.sum(), binned.neg.max() / (~y).sum()
    m1 = (binned.pos + binned.neg)[(binned.pos + binned.neg) > 0][-1]
    stated = {"auroc": 0.5 * min(c_pos, c_neg), "fpr95": c_neg, "aupr": c_pos * (1 + math.log(s.size / m1))}
    for key in ("aupr", "auroc", "fpr95"):
        error = abs(got[key] - exact[key])
        assert error <= bound[key] + 1e-12 and bound[key] <= stated[key] + 1e-12, (key, error, bound, stated)
    if kind == "ties":  # grid scores never share a bin: binning is exact
        assert all(got[key] == pytest.approx(exact[key], abs=1e-12) for key in ("aupr", "auroc", "fpr95"))
    if kind == "smooth":
        assert c_neg <= 100 / SCORE_BINS  # 291 000 known pixels: their bins follow the density
        assert abs(got["auroc"] - exact["auroc"]) <= 4.8e-5 and abs(got["fpr95"] - exact["fpr95"]) <= 9.6e-5


def test_binned_bound_is_reached_when_a_whole_test_falls_in_one_bin():
    s = np.array([0.50001] * 10 + [0.5] * 10)  # positives just above negatives, one bin of 10
    y = np.array([True] * 10 + [False] * 10)
    binned = BinnedScores(10)
    binned.update(s, y)
    got, bound = binned.metrics(), binned.error_bound()
    assert (auroc(s, y), got["auroc"], bound["auroc"]) == (1.0, 0.5, 0.5)
    assert (fpr_at_tpr(s, y), got["fpr95"], bound["fpr95"]) == (0.0, 1.0, 1.0)
    assert (average_precision(s, y), got["aupr"]) == (1.0, 0.5)
    assert bound["aupr"] == pytest.approx(1 - 1 / 11)
    with pytest.raises(ValueError):
        binned.update(np.array([1.2]), np.array([True]))


# ---------------------------------------------------------------- known mIoU
def test_known_confusion_and_miou_match_direct_counts():
    rng = np.random.default_rng(4)
    k = 4
    gt = rng.choice([0, 1, 2, 3, 4, 5, 255], size=(3, 20, 30))  # 4, 5 unknown classes, 255 void
    pred = rng.integers(0, 8, size=gt.shape)  # >= 4: flagged unknown / discovered
    acc = OpenWorldAccumulator(k, 2)
    for i in range(3):
        acc.update(gt[i], semantic_pred=pred[i], unknown_score=rng.random(gt[i].shape))
    result = acc.summarize()["known"]
    conf = known_confusion(pred, gt, k)
    assert conf.shape == (4, 5) and conf.sum() == int(((gt >= 0) & (gt < k)).sum())
    ious = []
    for c in range(k):
        known = gt < k
        tp = int(((gt == c) & (pred == c)).sum())
        fp = int((known & (gt != c) & (pred == c)).sum())
        fn = int(((gt == c) & (pred != c)).sum())
        ious.append(tp / (tp + fp + fn))
        assert result["per_class"][str(c)] == pytest.approx(ious[-1])
    assert result["miou"] == pytest.approx(sum(ious) / k)


# ---------------------------------------------------------------- open-world mIoU
def test_hungarian_matching_beats_the_greedy_choice():
    # K = 1 known class (0), unknown GT classes 1 and 2 with 10 pixels each
    contingency = np.array([[0, 6, 4], [0, 4, 0]])  # discovered g0, g1 vs GT 0, 1, 2
    gt_area = np.array([5, 10, 10])
    # IoU(g0,1) = 6/14, IoU(g0,2) = 4/16, IoU(g1,1) = 4/10, IoU(g1,2) = 0.
    # Greedy for GT 1 takes g0 (6/14) and leaves GT 2 nothing: total 0.43; the best is 0.65.
    assert match_discovered(contingency, gt_area, 1) == [(0.4, 1), (0.25, 0)]
    assert match_discovered(np.zeros((0, 3), np.int64), gt_area, 1) == [(0.0, None), (0.0, None)]
    # a GT class without pixels is left out (None), even given inconsistent counts
    assert match_discovered(contingency, np.array([5, 10, 0]), 1) == [(6 / 14, 0), (None, None)]


def test_matching_is_optimal_against_brute_force():
    rng = np.random.default_rng(5)
    k, u = 2, 3
    for _ in range(20):
        gt = rng.choice([0, 1, 2, 3, 4, 255], size=(12, 12))
        pred = rng.integers(0, k + 4, size=gt.shape)  # up to 4 discovered classes
        cont = discovered_contingency(pred, gt, k, k + u)
        area = np.bincount(gt[gt != 255], minlength=k + u)
        valid = gt != 255

        def iou(g: int, c: int) -> float:
            inter = int(((pred == k + g) & (gt == c)).sum())
            union = int((((pred == k + g) & valid) | (gt == c)).sum())
            return inter / union if union else 0.0

        best = 0.0
        g_count = cont.shape[0]
        for perm in itertools.permutations(list(range(g_count)) + [None] * u, u):
            best = max(best, sum(iou(g, k + j) for j, g in enumerate(perm) if g is not None))
        got = match_discovered(cont, area, k)
        assert sum(v for v, _ in got if v is not None) == pytest.approx(best)
        for j, (value, g) in enumerate(got):
            if g is not None:
                assert value == pytest.approx(iou(g, k + j))


# ---------------------------------------------------------------- the accumulator
def make_world(seed: int):
    """Two 8x10 images, K = 2 known classes, unknown GT classes 2 and 3, void 255."""
    rng = np.random.default_rng(seed)
    gt = rng.choice([0, 1, 2, 3, 255], size=(2, 8, 10), p=[0.3, 0.3, 0.15, 0.15, 0.1])
    score = np.round(rng.random(gt.shape) * 0.5 + 0.4 * (gt >= 2) * (gt != 255), 1)  # ties
    sem = rng.integers(0, 2, size=gt.shape)
    ow = np.where(score > 0.6, 2 + rng.integers(0, 3, size=gt.shape), sem)
    similar = np.where(rng.random(gt.shape) < 0.7, np.where(gt == 2, 1, 0), rng.integers(0, 2, gt.shape))
    return gt, sem, score, ow, similar


def test_accumulator_summary_by_direct_computation(tmp_path):
    gt, sem, score, ow, similar = make_world(6)
    names = ["road", "car", "train", "moto"]
    acc = OpenWorldAccumulator(2, 2, similar_targets={2: 1, 3: 0}, class_names=names)
    for i in range(2):
        acc.update(gt[i], semantic_pred=sem[i], unknown_score=score[i], openworld_pred=ow[i], similar=similar[i])
    r = acc.summarize()
    labelled = gt != 255
    assert r["n_images"] == 2 and r["classes"] == {"known": ["road", "car"], "unknown": ["train", "moto"]}
    assert r["anomaly"]["aupr"] == pytest.approx(direct_ap(score[labelled], gt[labelled] >= 2))
    assert r["anomaly"]["auroc"] == pytest.approx(direct_auroc(score[labelled], gt[labelled] >= 2))
    assert r["anomaly"]["fpr95"] == pytest.approx(direct_fpr95(score[labelled], gt[labelled] >= 2))

    # known_openworld: a known pixel flagged unknown is a miss
    for c, name in enumerate(["road", "car"]):
        tp = int(((gt == c) & (ow == c)).sum())
        fp = int(((gt < 2) & (gt != c) & (ow == c)).sum())
        fn = int(((gt == c) & (ow != c)).sum())
        assert r["known_openworld"]["per_class"][name] == pytest.approx(tp / (tp + fp + fn))

    ow_part = r["open_world"]
    assert ow_part["matching"] == "hungarian" and ow_part["n_discovered"] == int(ow.max()) - 1
    for name, label in (("train", 2), ("moto", 3)):
        entry = ow_part["per_class"][name]
        g = entry["match"]
        inter = int(((ow == 2 + g) & (gt == label)).sum())
        union = int((((ow == 2 + g) & labelled) | (gt == label)).sum())
        assert entry["iou"] == pytest.approx(inter / union)
    assert ow_part["miou"] == pytest.approx(
        (ow_part["per_class"]["train"]["iou"] + ow_part["per_class"]["moto"]["iou"]) / 2
    )

    sim = r["class_similarity"]
    accs = []
    for name, label, target in (("train", 2, 1), ("moto", 3, 0)):
        on = gt == label
        entry = sim["per_class"][name]
        assert entry["target"] == names[target] and entry["n"] == int(on.sum())
        assert entry["accuracy"] == pytest.approx((on & (similar == target)).sum() / on.sum())
        flagged = on & (ow >= 2)
        assert entry["accuracy_flagged"] == pytest.approx((flagged & (similar == target)).sum() / flagged.sum())
        accs.append(entry["accuracy"])
    assert sim["accuracy"] == pytest.approx(sum(accs) / 2)

    # the JSON: strict (no NaN), sorted, with the run facts, readable back
    out = tmp_path / "metrics" / "contmav.json"
    write_openworld_metrics(r, out, run={"approach": "contmav", "dataset": "synthetic"})
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert data["run"] == {"approach": "contmav", "dataset": "synthetic"}
    assert data["anomaly"]["aupr"] == pytest.approx(r["anomaly"]["aupr"])
    row = openworld_table_row(data)
    assert row["approach"] == "contmav" and row["AUROC"] == round(100 * r["anomaly"]["auroc"], 3)
    assert row["OW mIoU"] == round(100 * ow_part["miou"], 3)


def test_accumulator_streams_and_bins():
    gt, sem, score, ow, similar = make_world(7)
    whole = OpenWorldAccumulator(2, 2, similar_targets={2: 1})
    whole.update(gt, semantic_pred=sem, unknown_score=score, openworld_pred=ow, similar=similar)
    per_image = OpenWorldAccumulator(2, 2, similar_targets={2: 1})
    for i in range(2):
        per_image.update(
            torch.from_numpy(gt[i]), semantic_pred=torch.from_numpy(sem[i]), unknown_score=torch.from_numpy(score[i]),
            openworld_pred=torch.from_numpy(ow[i]), similar=torch.from_numpy(similar[i]),
        )
    a, b = whole.summarize(), per_image.summarize()
    a["n_images"] = b["n_images"]
    assert a == b
    binned = OpenWorldAccumulator(2, 2, score_bins=10)  # scores are multiples of 0.1: binning is exact here
    binned.update(gt, semantic_pred=sem, unknown_score=score)
    m = binned.summarize()
    for key in ("aupr", "auroc", "fpr95"):
        assert m["anomaly"][key] == pytest.approx(a["anomaly"][key], abs=1e-12)
    assert m["anomaly"]["method"] == "binned" and m["open_world"] is None and m["class_similarity"] is None


def test_accumulator_rejects_bad_labels_and_inconsistent_inputs():
    acc = OpenWorldAccumulator(2, 1)
    with pytest.raises(ValueError, match="label 7"):
        acc.update(np.array([0, 7]), semantic_pred=np.array([0, 0]), unknown_score=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="shape"):
        acc.update(np.array([0, 1]), semantic_pred=np.array([0]), unknown_score=np.array([0.1, 0.2]))
    acc.update(np.array([0, 2]), semantic_pred=np.array([0, 0]), unknown_score=np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="every image"):
        acc.update(
            np.array([0, 2]), semantic_pred=np.array([0, 0]), unknown_score=np.array([0.1, 0.2]),
            openworld_pred=np.array([0, 2]),
        )
    with pytest.raises(ValueError):
        OpenWorldAccumulator(2, 2, similar_targets={1: 0})  # 1 is a known label
    no_unknown = OpenWorldAccumulator(2).summarize()
    assert no_unknown["anomaly"]["aupr"] is None and no_unknown["known"]["miou"] is None
    assert math.isclose(OpenWorldAccumulator(2, 1).summarize()["n_images"], 0)
