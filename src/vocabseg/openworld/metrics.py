"""Open-world segmentation metrics (seed 003, ContMAV): known mIoU, anomaly AUPR /
FPR95 / AUROC, open-world mIoU of discovered classes, class-similarity accuracy.

What: the metrics of Sodano et al., CVPR 2024 ([P] §4.1, facts file §5), computed
from per-pixel arrays that any open-world model produces (closed-world prediction,
unknown score, open-world label map, most similar known class), accumulated image by
image, and written as a JSON like ``evaluate_panoptic``'s metrics files.

Why here and not in the model code: the definitions (tie handling, the FPR95
operating point, the matching of discovered classes) decide whether numbers are
comparable across variants and with the paper, so they live in one tested place.

Label spaces. Ground truth: ``0 .. K-1`` known classes, ``K .. K+U-1`` unknown
(held-out) classes, ``ignore_index`` (default 255) void; void pixels count nowhere.
Open-world prediction: ``0 .. K-1`` known classes, ``K + g`` discovered class g.

Definitions (all values are fractions in [0, 1]; ``None`` when undefined):

* **Known mIoU** (``known``): confusion over GT pixels of known classes, rows the GT
  class, columns the predicted known class or a last "other" column (any prediction
  outside ``0..K-1``); ``IoU_c = TP / (TP + FP + FN)``, mean over classes with a
  non-zero denominator (:func:`vocabseg.evaluation.semantic.semantic_metrics`).
  ``known`` uses the closed-world prediction ``argmax f`` on GT-known pixels, as
  [C]'s validation (torchmetrics ``JaccardIndex``, unknown GT set to 255) and the
  paper's Table 1; ``known_openworld`` uses the open-world map, so a known pixel
  flagged unknown is a miss of its class.
* **Anomaly** (``anomaly``): unknown GT pixels are positives, known GT pixels
  negatives, the score is ``s_unk`` (higher = more unknown). With the distinct scores
  ``t_1 > t_2 > ... > t_m`` and ``TP_i``, ``FP_i`` the positives / negatives with
  score ``>= t_i`` (P, N the totals), exactly as scikit-learn (tied scores form one
  point of the curves):

  - AUPR = ``Σ_i (R_i − R_{i−1}) · Prec_i``, ``R_i = TP_i / P``, ``R_0 = 0``,
    ``Prec_i = TP_i / (TP_i + FP_i)`` (``average_precision_score``; no interpolation);
  - AUROC = trapezoidal area under ``(FP_i / N, TP_i / P)`` from ``(0, 0)``
    (``roc_auc_score``), i.e. ``P(s⁺ > s⁻) + ½ P(s⁺ = s⁻)``;
  - FPR95 = ``FP_i / N`` at the first point (highest threshold) with ``TPR_i >= 0.95``,
    tested exactly in integers (``20 TP_i >= 19 P``): the lowest false-positive rate
    of any threshold that finds 95 % of the unknown pixels; with ``roc_curve(...,
    drop_intermediate=False)`` it is ``fpr[searchsorted(tpr, 0.95)]``.

  AUPR needs P > 0; AUROC and FPR95 need P > 0 and N > 0.
* **Open-world mIoU** (``open_world``): ``M[g, c]`` = pixels predicted as discovered
  class g with GT class c (non-void GT); ``IoU(g, u) = M[g, u] / (|pred = g| + |GT = u|
  − M[g, u])`` over non-void pixels. Discovered classes are matched **one-to-one** to
  the U unknown GT classes by the Hungarian algorithm maximising the summed IoU
  (``scipy.optimize.linear_sum_assignment``). Each unknown GT class present gets the
  IoU of its match (0 if none overlaps); the mean is over those classes. One-to-one
  and not each cluster's most-overlapping GT class ([P] §4.1's wording): with the
  unbounded number of classes of the online clustering, a many-to-one score would
  reward splitting an object into many small clusters, and the global optimum is
  independent of the order of the clusters (a greedy pick is not).
* **Class similarity** (``class_similarity``): for an unknown GT class u with a target
  known class ``t(u)`` (the paper's lookup table, e.g. motorcycle → car, train →
  truck, [P] §4.4), ``accuracy(u)`` = fraction of the GT pixels of u whose most
  similar known class ``k̃ = argmax_k s_k`` equals ``t(u)``; ``accuracy_flagged(u)``
  is the same over those pixels flagged unknown. The pooled values are the mean over
  classes with pixels. All GT pixels make ``accuracy`` independent of the threshold δ.

Per image (``per_image``): the accumulator can also keep every image's counts
(:class:`OpenWorldImageStats`: known intersection / union, the positives and
negatives of each unknown-score bin the image has pixels in, its discovered-class
contingency and GT areas), whose sums over any list of images are that list's counts;
the bootstrap (:mod:`vocabseg.evaluation.bootstrap`) resamples them. The score counts
have the resolution of the pooled curves (the same :class:`BinnedScores` bins, or
every distinct score with :class:`ExactScores`), so the sum over all images is the
histogram of the point estimate itself; they are sparse (only non-empty bins: at most
12 bytes per labelled pixel and per image at most 12 bytes per bin, binned).
:func:`score_grid` groups the pooled bins into at most a few thousand before the
bootstrap resamples them (edges from the pooled counts; crowded bins and the FPR95
bin keep their own).

Streaming: :class:`BinnedScores` keeps two histograms over ``[0, 1]`` (default
:data:`SCORE_BINS` = 2^20 bins, 16 MiB whatever the number of pixels); its metrics are
the exact metrics of the quantised scores, and it reports a guaranteed bound on the
difference to the exact metrics (derived in :meth:`BinnedScores.error_bound`).
:class:`ExactScores` keeps every score (9 bytes per labelled pixel; with the sort,
about 52 bytes per labelled pixel at its peak, measured by
``benchmarks/contmav_eval_memory.py``: some 36 GB for the 0.7 billion pixels of
BDD-Anomaly's test split); it is the reference the binned metrics are tested against.

Tolerance of the binned metrics, from the bin width ``w = 1 / n_bins``. Let ``c⁺``
(``c⁻``) be the largest fraction of the unknown (known) pixels that one bin holds,
``n`` the labelled pixels and ``m₁`` those of the highest non-empty bin. Then

    |ΔAUROC| <= ½ min(c⁺, c⁻),   |ΔFPR95| <= c⁻,   |ΔAUPR| <= c⁺ (1 + ln(n / m₁)),

(:meth:`BinnedScores.error_bound` is tighter still and is what a metrics file
reports). Tied scores fall into one bin and stay tied, so only distinct scores
sharing a bin cost accuracy: where the scores of each class have a density of at
most ``f`` per unit score (a fraction ``f·w`` of a class per bin; a class of many
pixels, as a bin holds whole pixels), ``c <= f·w``; with
2^20 bins and ``f <= 100`` (no 1 % of a class within a 10⁻⁴-wide score range) that is
``|ΔAUROC| <= 4.8e-5`` and ``|ΔFPR95| <= 9.6e-5``. Scores crowded into a narrower
range (e.g. a Gaussian score saturating at 1) make the bound grow; it is written with
the metrics (``anomaly.error_bound``) so that a run shows it, and ``contmav-eval
--exact-scores`` computes the exact values where memory allows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vocabseg.evaluation.semantic import intersection_union, semantic_metrics
from vocabseg.errors import InputError
from vocabseg.fileio import read_npz, write_json_atomic, write_npz_atomic

__all__ = [
    "FPR_TPR",
    "SCORE_BINS",
    "curve_counts",
    "metrics_from_counts",
    "average_precision",
    "auroc",
    "fpr_at_tpr",
    "ExactScores",
    "BinnedScores",
    "score_grid",
    "known_confusion",
    "discovered_contingency",
    "match_discovered",
    "OpenWorldAccumulator",
    "OpenWorldImageStats",
    "write_openworld_metrics",
    "openworld_table_row",
]

#: The TPR of the FPR95 operating point.
FPR_TPR = 0.95

#: Default bins of :class:`BinnedScores` (two int64 histograms: 16 MiB).
SCORE_BINS = 2**20


def _numpy(a: Any) -> np.ndarray:
    """A numpy view of a numpy array, a torch tensor (any device) or a sequence."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


# ---------------------------------------------------------------- anomaly curves
def curve_counts(scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative counts at each distinct score, highest first.

    ``scores`` [N] float, ``positive`` [N] bool (any shape, flattened) ->
    ``(tp [m], fp [m])`` int64: positives / negatives with score ``>= t_i`` for the m
    distinct scores ``t_1 > ... > t_m`` (scikit-learn's ``_binary_clf_curve``).
    """
    s = _numpy(scores).astype(np.float64, copy=False).ravel()
    y = _numpy(positive).astype(bool, copy=False).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if not np.isfinite(s).all():
        raise ValueError("unknown scores must be finite")
    if s.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)  # end of each tie group
    tp = np.cumsum(y, dtype=np.int64)[last]
    return tp, last + 1 - tp


def _first_at_tpr(tp: np.ndarray, n_pos: int, target: float) -> int:
    """Index of the first point with ``tp / n_pos >= target``, compared exactly."""
    frac = Fraction(str(target))
    if not 0 < frac <= 1:
        raise ValueError(f"target TPR must lie in (0, 1], got {target}")
    wide = n_pos * frac.denominator >= 2**62  # beyond int64: Python integers
    counts = tp.astype(object) if wide else tp.astype(np.int64)
    ok = np.asarray(counts * frac.denominator >= frac.numerator * n_pos, dtype=bool)
    return int(np.argmax(ok))  # the last point has tp = n_pos, so some point qualifies


def metrics_from_counts(tp: np.ndarray, fp: np.ndarray, tpr: float = FPR_TPR) -> dict:
    """AUPR, AUROC, FPR at ``tpr`` from :func:`curve_counts`-style cumulative counts.

    Returns ``{"aupr", "auroc", "fpr95", "n_unknown", "n_known"}`` (the FPR key keeps
    its name whatever ``tpr``); undefined values are None (see the module docstring).
    """
    n_pos = int(tp[-1]) if tp.size else 0
    n_neg = int(fp[-1]) if fp.size else 0
    out: dict[str, Any] = {"aupr": None, "auroc": None, "fpr95": None, "n_unknown": n_pos, "n_known": n_neg}
    if n_pos == 0:
        return out
    tp_f, fp_f = tp.astype(np.float64), fp.astype(np.float64)
    precision = tp_f / (tp_f + fp_f)
    recall_step = np.diff(tp_f, prepend=0.0) / n_pos
    out["aupr"] = float(np.sum(recall_step * precision))
    if n_neg == 0:
        return out
    tp0, fp0 = np.append(0.0, tp_f), np.append(0.0, fp_f)
    out["auroc"] = float(np.sum(np.diff(fp0) * (tp0[1:] + tp0[:-1])) / (2.0 * n_pos * n_neg))
    out["fpr95"] = float(fp[_first_at_tpr(tp, n_pos, tpr)] / n_neg)
    return out


def average_precision(scores: Any, positive: Any) -> float | None:
    """AUPR of ``scores`` for ``positive`` pixels (= ``sklearn.metrics.average_precision_score``)."""
    return metrics_from_counts(*curve_counts(scores, positive))["aupr"]


def auroc(scores: Any, positive: Any) -> float | None:
    """Area under the ROC curve (= ``sklearn.metrics.roc_auc_score``)."""
    return metrics_from_counts(*curve_counts(scores, positive))["auroc"]


def fpr_at_tpr(scores: Any, positive: Any, tpr: float = FPR_TPR) -> float | None:
    """False-positive rate at the highest threshold reaching TPR >= ``tpr`` (FPR95)."""
    return metrics_from_counts(*curve_counts(scores, positive), tpr=tpr)["fpr95"]


def _split_counts(index: np.ndarray, positive: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives per value of ``index`` [P] in ``0..n-1``: two (n,) int32."""
    if index.shape != positive.shape:
        raise ValueError(f"{index.size} scores but {positive.size} labels")
    if index.size >= 2**31:
        raise ValueError(f"{index.size} pixels in one image: per-image counts are int32")
    pos = np.bincount(index[positive], minlength=n).astype(np.int32)
    return pos, np.bincount(index[~positive], minlength=n).astype(np.int32)


class ExactScores:
    """Keeps every (score, is-unknown) pair; :meth:`metrics` is exact. Memory 9 B/pixel."""

    method = "exact"

    def __init__(self) -> None:
        self._scores: list[np.ndarray] = []
        self._positive: list[np.ndarray] = []

    def update(self, scores: Any, positive: Any) -> None:
        """Add ``scores`` [...] float and ``positive`` [...] bool of one image or batch."""
        s = _numpy(scores).astype(np.float64).ravel()
        y = _numpy(positive).astype(bool).ravel()
        if s.shape != y.shape:
            raise ValueError(f"{s.size} scores but {y.size} labels")
        self._scores.append(s)
        self._positive.append(y)

    def image_counts(self, scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's counts at this resolution, [...] -> ``(keys [T] float64, pos [T],
        neg [T] int32)``: its T distinct scores, ascending, and their positives / negatives."""
        s = _numpy(scores).astype(np.float64).ravel()
        if not np.isfinite(s).all():
            raise ValueError("unknown scores must be finite")
        keys, inverse = np.unique(s, return_inverse=True)
        return (keys, *_split_counts(inverse.ravel(), _numpy(positive).astype(bool).ravel(), keys.size))

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        if not self._scores:
            return curve_counts(np.zeros(0), np.zeros(0, bool))
        return curve_counts(np.concatenate(self._scores), np.concatenate(self._positive))

    def metrics(self) -> dict:
        out = metrics_from_counts(*self.counts())
        out.update(method=self.method, bins=None, error_bound={"aupr": 0.0, "auroc": 0.0, "fpr95": 0.0})
        return out


class BinnedScores:
    """Histogram accumulation for large data: ``n_bins`` equal bins over ``[lo, hi]``.

    A score s falls into bin ``min(floor((s − lo) / (hi − lo) · n_bins), n_bins − 1)``;
    scores outside ``[lo, hi]`` are an error (``s_unk`` lies in [0, 1]). The metrics
    are those of :func:`metrics_from_counts` with every score replaced by its bin, i.e.
    all scores of a bin count as tied. Memory ``16 · n_bins`` bytes.
    """

    method = "binned"

    def __init__(self, n_bins: int = SCORE_BINS, lo: float = 0.0, hi: float = 1.0) -> None:
        if n_bins < 1 or not hi > lo:
            raise ValueError(f"need n_bins >= 1 and hi > lo, got {n_bins}, [{lo}, {hi}]")
        self.n_bins, self.lo, self.hi = int(n_bins), float(lo), float(hi)
        self.pos = np.zeros(self.n_bins, np.int64)
        self.neg = np.zeros(self.n_bins, np.int64)

    def bin_index(self, scores: Any) -> np.ndarray:
        """Bin of each score, [...] -> [...] int64."""
        s = _numpy(scores).astype(np.float64)
        if not np.isfinite(s).all() or (s < self.lo).any() or (s > self.hi).any():
            raise ValueError(f"unknown scores must lie in [{self.lo}, {self.hi}]")
        idx = np.floor((s - self.lo) / (self.hi - self.lo) * self.n_bins).astype(np.int64)
        return np.minimum(idx, self.n_bins - 1)

    def update(self, scores: Any, positive: Any) -> None:
        idx = self.bin_index(scores).ravel()
        y = _numpy(positive).astype(bool).ravel()
        if idx.shape != y.shape:
            raise ValueError(f"{idx.size} scores but {y.size} labels")
        self.pos += np.bincount(idx[y], minlength=self.n_bins)
        self.neg += np.bincount(idx[~y], minlength=self.n_bins)

    def image_counts(self, scores: Any, positive: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image's counts in these bins, [...] -> ``(keys [T] int32, pos [T], neg [T]
        int32)``: its T non-empty bins, ascending, and their positives / negatives."""
        idx = self.bin_index(scores).ravel()
        pos, neg = _split_counts(idx, _numpy(positive).astype(bool).ravel(), self.n_bins)
        keys = np.flatnonzero((pos + neg) > 0)
        return keys.astype(np.int32 if self.n_bins <= 2**31 else np.int64), pos[keys], neg[keys]

    def _nonempty_desc(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-bin (positives, negatives) of the non-empty bins, highest bin first."""
        keep = (self.pos + self.neg) > 0
        return self.pos[keep][::-1], self.neg[keep][::-1]

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        p, n = self._nonempty_desc()
        return np.cumsum(p), np.cumsum(n)

    def error_bound(self, tpr: float = FPR_TPR) -> dict:
        """Guaranteed ``|binned − exact|`` for the scores accumulated so far.

        With bins b = 1..B from the top, ``p_b``, ``n_b`` their positives / negatives,
        ``TP_b``, ``FP_b`` the cumulative counts through bin b (``TP_0 = FP_0 = 0``):

        * AUROC: pairs in different bins keep their order; a positive/negative pair in
          one bin counts ½ binned and 0, ½ or 1 exactly, so the error is at most
          ``Σ_b p_b n_b / (2 P N)``.
        * FPR95: the binned point is the first bin j reaching the TPR; the exact
          threshold must lie inside bin j (above it the TPR is too low, its bottom
          qualifies), so ``FP_{j−1}/N <= exact <= binned = FP_j/N``: at most ``n_j / N``
          (the binned value never under-states the FPR).
        * AUPR: bin b contributes ``(p_b / P) · Prec_b`` binned and, exactly, recall steps
          summing to ``p_b / P`` at precisions inside ``[lo_b, hi_b]``, where
          ``lo_b = (TP_{b−1} + 1) / (TP_{b−1} + 1 + FP_b)`` and
          ``hi_b = TP_b / (TP_b + FP_{b−1})`` (precision grows with TP, falls with FP;
          ``Prec_b`` is inside too): at most ``Σ_b (p_b / P)(hi_b − lo_b)``.

        Values are None where the metric is undefined.
        """
        p, n = self._nonempty_desc()
        n_pos, n_neg = int(p.sum()), int(n.sum())
        out: dict[str, float | None] = {"aupr": None, "auroc": None, "fpr95": None}
        if n_pos == 0:
            return out
        tp, fp = np.cumsum(p).astype(np.float64), np.cumsum(n).astype(np.float64)
        tp_prev, fp_prev = np.append(0.0, tp[:-1]), np.append(0.0, fp[:-1])
        has = p > 0
        lo = (tp_prev + 1) / (tp_prev + 1 + fp)
        hi = tp / np.maximum(tp + fp_prev, 1.0)
        out["aupr"] = float(np.sum(np.where(has, p / n_pos * (hi - lo), 0.0)))
        if n_neg == 0:
            return out
        out["auroc"] = float(np.sum(p.astype(np.float64) * n) / (2.0 * n_pos * n_neg))
        j = _first_at_tpr(np.cumsum(p), n_pos, tpr)
        out["fpr95"] = float(n[j] / n_neg)
        return out

    def metrics(self) -> dict:
        out = metrics_from_counts(*self.counts())
        out.update(method=self.method, bins=self.n_bins, error_bound=self.error_bound())
        return out


def score_grid(pos: np.ndarray, neg: np.ndarray, max_bins: int, tpr: float = FPR_TPR) -> np.ndarray:
    """Group M bins of pooled counts into at most ``max_bins`` consecutive bins.

    ``pos``, ``neg`` (M,) int: positives / negatives of M non-empty bins (or distinct
    scores), ascending -> (M,) int64 ascending group of each bin, 0..M'-1. With
    ``M <= max_bins`` every bin is its own group. Otherwise, with
    ``L = (max_bins - 3) // 4`` levels, a group starts

    * where ``floor(L · cumulative / total)`` of the positives or of the negatives
      changes (pooled quantiles: a group of several bins holds less than 2/L of each
      class, so its within-group pairs cost AUROC at most 1/L);
    * right after a bin holding at least 1/L of a class (such a bin also starts one:
      crowded scores keep their own bins);
    * at and right after the bin where the curve from the top first reaches the TPR
      ``tpr`` (the FPR95 point of these counts is the same grouped as not).

    That makes at most ``1 + 2L + 2L + 2 <= max_bins`` groups.
    """
    pos, neg = np.asarray(pos, np.int64), np.asarray(neg, np.int64)
    m = pos.size
    if max_bins < 7:
        raise ValueError(f"max_bins must be >= 7, got {max_bins}")
    if m <= max_bins:
        return np.arange(m, dtype=np.int64)
    levels = (max_bins - 3) // 4
    start = np.zeros(m, bool)
    start[0] = True
    for counts in (pos, neg):
        total = int(counts.sum())
        if total == 0:
            continue
        level = np.cumsum(counts) * levels // total
        start[1:] |= level[1:] != level[:-1]
        heavy = np.flatnonzero(counts * levels >= total)
        start[heavy[heavy + 1 < m] + 1] = True
    if pos.sum() > 0:
        crossing = m - 1 - _first_at_tpr(np.cumsum(pos[::-1]), int(pos.sum()), tpr)
        start[crossing] = True
        if crossing + 1 < m:
            start[crossing + 1] = True
    return np.cumsum(start) - 1


# ---------------------------------------------------------------- segmentation counts
def known_confusion(pred: Any, gt: Any, n_known: int) -> np.ndarray:
    """(K, K + 1) int64 confusion over GT pixels with ``0 <= gt < K``.

    Column ``K`` collects predictions outside ``0..K-1`` (unknown / discovered); GT
    pixels outside ``0..K-1`` (void, unknown classes) are skipped.
    """
    p, g = _numpy(pred).astype(np.int64).ravel(), _numpy(gt).astype(np.int64).ravel()
    if p.shape != g.shape:
        raise ValueError(f"prediction has {p.size} pixels, ground truth {g.size}")
    keep = (g >= 0) & (g < n_known)
    col = np.where((p >= 0) & (p < n_known), p, n_known)[keep]
    cells = g[keep] * (n_known + 1) + col
    return np.bincount(cells, minlength=n_known * (n_known + 1)).reshape(n_known, n_known + 1)


def discovered_contingency(pred: Any, gt: Any, n_known: int, n_classes: int) -> np.ndarray:
    """(G, K + U) int64 counts ``M[g, c]`` of pixels predicted ``K + g`` with GT c.

    ``n_classes`` = K + U; GT outside ``0..K+U-1`` (void) is skipped; G is one more
    than the largest discovered class in ``pred`` (0 if none).
    """
    p, g = _numpy(pred).astype(np.int64).ravel(), _numpy(gt).astype(np.int64).ravel()
    keep = (g >= 0) & (g < n_classes) & (p >= n_known)
    d = p[keep] - n_known
    n_disc = int(d.max()) + 1 if d.size else 0
    return np.bincount(d * n_classes + g[keep], minlength=n_disc * n_classes).reshape(n_disc, n_classes)


def match_discovered(
    contingency: np.ndarray, gt_area: np.ndarray, n_known: int
) -> list[tuple[float | None, int | None]]:
    """Hungarian one-to-one match of discovered classes to the unknown GT classes.

    ``contingency`` [G, K + U] (:func:`discovered_contingency`), ``gt_area`` [K + U]
    non-void GT pixels per class -> per unknown class u = K..K+U-1:
    ``(IoU, g)`` of its match, ``(0.0, None)`` if no discovered class overlaps it,
    ``(None, None)`` if u has no GT pixel. Maximises ``Σ IoU(g, u)``.
    """
    from scipy.optimize import linear_sum_assignment

    n_unknown = gt_area.shape[0] - n_known
    inter = contingency[:, n_known:].astype(np.float64)  # [G, U]
    union = contingency.sum(axis=1, keepdims=True) + gt_area[None, n_known:] - inter
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    iou[:, gt_area[n_known:] == 0] = 0.0  # absent classes are never matched
    result: list[tuple[float | None, int | None]] = [
        (0.0, None) if gt_area[n_known + u] > 0 else (None, None) for u in range(n_unknown)
    ]
    if iou.size:
        rows, cols = linear_sum_assignment(iou, maximize=True)
        for g, u in zip(rows.tolist(), cols.tolist()):
            if iou[g, u] > 0:  # only for present classes (see above)
                result[u] = (float(iou[g, u]), g)
    return result


# ---------------------------------------------------------------- accumulator
@dataclass(frozen=True)
class OpenWorldImageStats:
    """Per-image counts of one open-world evaluation (N images, K known, U unknown classes).

    Attributes:
        image_ids: (N,) str, evaluation order.
        n_known: K.
        known_inter, known_union: (N, K) int64 pixel intersection / union of the
            closed-world prediction per known class (the ``known`` mIoU).
        score_offsets: (N + 1,) int64; image i's unknown-score counts are the entries
            ``score_offsets[i] : score_offsets[i + 1]`` of the three arrays below
            (compressed sparse rows: only the bins an image has pixels in).
        score_keys: (T,) the image's non-empty bins at the resolution of the metrics
            file's point estimate, ascending: :class:`BinnedScores` bin indices (int32)
            or, for exact scores, the distinct scores themselves (float64).
        score_pos, score_neg: (T,) int32 unknown (positive) and known (negative) GT
            pixels of each entry. Summed over all images they are the histogram the
            metrics file's AUPR / AUROC / FPR95 come from.
        contingency: (N, G, K + U) int64 discovered-class contingency (G classes
            discovered over the whole split; zeros where an image has fewer).
        gt_area: (N, K + U) int64 non-void GT pixels per class.
        open_world: whether open-world predictions were scored (else no OW mIoU).
        similar: (N, U, 2) int64 per unknown class: its GT pixels and those whose most
            similar known class is its target (class similarity; zeros for a class
            without a target, (N, 0, 2) without class-similarity input).
        score_point: None when the score counts are at the resolution of the point
            estimate; after :meth:`grouped`, (3,) float64 AUPR, AUROC, FPR95 of all
            images at that resolution (NaN where undefined), which the grouped counts
            no longer hold.
    """

    image_ids: np.ndarray
    n_known: int
    open_world: bool
    known_inter: np.ndarray
    known_union: np.ndarray
    score_offsets: np.ndarray
    score_keys: np.ndarray
    score_pos: np.ndarray
    score_neg: np.ndarray
    contingency: np.ndarray
    gt_area: np.ndarray
    similar: np.ndarray
    score_point: np.ndarray | None = None

    COUNTS = ("known_inter", "known_union", "score_offsets", "score_keys", "score_pos", "score_neg",
              "contingency", "gt_area", "similar")

    def save(self, path: Path | str) -> None:
        """Write a compressed ``.npz`` (plain arrays, no pickle) atomically."""
        arrays = {name: getattr(self, name) for name in ("image_ids", *self.COUNTS)}
        if self.score_point is not None:
            arrays["score_point"] = self.score_point
        write_npz_atomic({**arrays, "n_known": np.int64(self.n_known), "open_world": np.bool_(self.open_world)}, path)

    @classmethod
    def load(cls, path: Path | str) -> OpenWorldImageStats:
        """Read a file of :meth:`save`; a missing or damaged one is an InputError naming
        it, and so is one of an older version whose score counts are 1000-bin histograms
        per image (too coarse: its intervals could exclude their own value)."""
        fields = ("image_ids", "n_known", "open_world", *cls.COUNTS)
        what = "open-world per-image statistics"
        arrays = read_npz(path, ["image_ids", "n_known", "open_world"], what)
        if "score_offsets" not in arrays and np.ndim(arrays.get("score_pos")) == 2:
            raise InputError(
                f"{path}: {what} of an older version (unknown-score histograms of {arrays['score_pos'].shape[1]} "
                "bins per image, too coarse for the intervals); rerun the evaluation that wrote it "
                "(snakemake --forcerun contmav_eval, or contmav-eval --images-out)"
            )
        missing = [f for f in fields if f not in arrays]
        if missing:
            raise InputError(f"{path}: {what} lack {', '.join(missing)}")
        flags = {"n_known": int(arrays["n_known"]), "open_world": bool(arrays["open_world"])}
        return cls(**{**{f: arrays[f] for f in fields}, **flags}, score_point=arrays.get("score_point"))

    def rebinned_scores(self, max_bins: int, tpr: float = FPR_TPR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every image's score counts on one grid of at most ``max_bins`` bins.

        The M bins (or distinct scores) that any image has pixels in are pooled over
        all images and grouped by :func:`score_grid` (edges from the pooled counts);
        returns ``(pos [N, M'], neg [N, M'], point [3])`` float64: the grouped per-image
        counts (ascending), whose weighted sums over images a resample's curves come
        from, and AUPR, AUROC, FPR95 of all images before grouping (NaN where
        undefined; :func:`metrics_from_counts` of the pooled counts, so exactly the
        metrics file's point estimate). ``M <= max_bins``: no grouping (M' = M).
        """
        n = self.image_ids.size
        keys = self.score_keys
        if np.issubdtype(keys.dtype, np.integer):  # bin indices: a bincount, not a sort
            size = int(keys.max()) + 1 if keys.size else 0
            present = np.zeros(size, bool)
            present[keys] = True
            fine = (np.cumsum(present) - 1)[keys]
        else:
            _, fine = np.unique(keys, return_inverse=True)
            fine = fine.ravel()
        m = int(fine.max()) + 1 if fine.size else 0
        pooled_pos = np.bincount(fine, weights=self.score_pos, minlength=m)
        pooled_neg = np.bincount(fine, weights=self.score_neg, minlength=m)
        pooled_pos, pooled_neg = pooled_pos.astype(np.int64), pooled_neg.astype(np.int64)
        group = score_grid(pooled_pos, pooled_neg, max_bins, tpr)
        width = int(group[-1]) + 1 if m else 0
        image = np.repeat(np.arange(n), np.diff(self.score_offsets))
        cell = image * width + group[fine]
        pos = np.bincount(cell, weights=self.score_pos, minlength=n * width).reshape(n, width)
        neg = np.bincount(cell, weights=self.score_neg, minlength=n * width).reshape(n, width)
        if self.score_point is not None:
            return pos, neg, np.asarray(self.score_point, np.float64)
        point = metrics_from_counts(np.cumsum(pooled_pos[::-1]), np.cumsum(pooled_neg[::-1]), tpr)
        return pos, neg, np.array([np.nan if point[k] is None else point[k] for k in ("aupr", "auroc", "fpr95")])

    def grouped(self, max_bins: int, tpr: float = FPR_TPR) -> OpenWorldImageStats:
        """These statistics with the score counts on the :meth:`rebinned_scores` grid
        (keys: the group, int32) and the point estimate kept in ``score_point``: what
        the bootstrap needs, in memory bounded by N x ``max_bins`` (the report groups
        every row as it loads it). Its :meth:`rebinned_scores` with the same
        ``max_bins`` gives the same counts and point."""
        pos, neg, point = self.rebinned_scores(max_bins, tpr)
        image, group = np.nonzero((pos + neg) > 0)
        offsets = np.searchsorted(image, np.arange(self.image_ids.size + 1))
        return dataclasses.replace(
            self, score_offsets=offsets.astype(np.int64), score_keys=group.astype(np.int32),
            score_pos=pos[image, group].astype(np.int32), score_neg=neg[image, group].astype(np.int32),
            score_point=point,
        )


class OpenWorldAccumulator:
    """Accumulates every open-world metric image by image; :meth:`summarize` gives the
    results dict (schema in the module docstring and :func:`write_openworld_metrics`).

    ``n_known`` K, ``n_unknown`` U (GT labels ``K..K+U-1``), ``ignore_index`` GT void;
    ``score_bins`` None keeps every score (exact), an int uses :class:`BinnedScores`;
    ``similar_targets`` maps an unknown GT label to its most similar known class (the
    class-similarity lookup table); ``class_names`` (K + U names) keys the per-class
    entries (default: the label as a string); ``per_image`` also keeps each update's
    counts (:meth:`image_stats`), its unknown scores at the resolution of the pooled
    curves (the same bins, or every distinct score when exact).
    """

    def __init__(
        self,
        n_known: int,
        n_unknown: int = 0,
        *,
        ignore_index: int = 255,
        score_bins: int | None = None,
        similar_targets: Mapping[int, int] | None = None,
        class_names: Sequence[str] | None = None,
        per_image: bool = False,
    ) -> None:
        self.k, self.u, self.ignore = int(n_known), int(n_unknown), int(ignore_index)
        self.per_image = per_image
        self._images: list[dict[str, np.ndarray]] = []
        if self.k < 1 or self.u < 0 or 0 <= self.ignore < self.k + self.u:
            raise ValueError(f"bad label space: K={n_known}, U={n_unknown}, ignore_index={ignore_index}")
        self.names = [str(i) for i in range(self.k + self.u)] if class_names is None else list(class_names)
        if len(self.names) != self.k + self.u or len(set(self.names)) != len(self.names):
            raise ValueError(f"class_names must be {self.k + self.u} distinct names, got {class_names!r}")
        self.targets = dict(similar_targets or {})
        for u, t in self.targets.items():
            if not (self.k <= u < self.k + self.u and 0 <= t < self.k):
                raise ValueError(f"similar_targets: {u} -> {t} must map an unknown label to a known class")
        self.scores = ExactScores() if score_bins is None else BinnedScores(score_bins)
        self.confusion = np.zeros((self.k, self.k + 1), np.int64)
        self.confusion_ow = np.zeros((self.k, self.k + 1), np.int64)
        self.contingency = np.zeros((0, self.k + self.u), np.int64)
        self.gt_area = np.zeros(self.k + self.u, np.int64)
        self.similar_counts = np.zeros((self.u, 4), np.int64)  # n, correct, n flagged, correct flagged
        self.n_images = 0
        self._has_ow = self._has_similar = False

    def _gt(self, gt: Any) -> np.ndarray:
        g = _numpy(gt).astype(np.int64)
        bad = (g != self.ignore) & ((g < 0) | (g >= self.k + self.u))
        if bad.any():
            raise ValueError(
                f"ground truth label {int(g[bad][0])} is neither a class (0..{self.k + self.u - 1}) "
                f"nor ignore_index {self.ignore}"
            )
        return g

    def update(
        self,
        gt: Any,
        *,
        semantic_pred: Any,
        unknown_score: Any,
        openworld_pred: Any | None = None,
        similar: Any | None = None,
    ) -> None:
        """Add one image or batch; every array has the GT's shape ([H, W] or [B, H, W]).

        ``semantic_pred`` closed-world argmax, ``unknown_score`` s_unk, ``openworld_pred``
        the open-world map (unknown pixels ``K + g``), ``similar`` the most similar
        known class k̃. The optional ones must be given for every image or for none.
        """
        g = self._gt(gt)
        arrays = {"semantic_pred": semantic_pred, "unknown_score": unknown_score}
        arrays.update(openworld_pred=openworld_pred, similar=similar)
        for key, value in arrays.items():
            if value is not None and _numpy(value).shape != g.shape:
                raise ValueError(f"{key} has shape {_numpy(value).shape}, ground truth {g.shape}")
        first = self.n_images == 0
        for flag, value in (("_has_ow", openworld_pred), ("_has_similar", similar)):
            if first:
                setattr(self, flag, value is not None)
            elif getattr(self, flag) != (value is not None):
                raise ValueError("openworld_pred / similar must be given for every image or for none")
        self.n_images += 1

        valid = g != self.ignore
        gt_area = np.bincount(g[valid], minlength=self.k + self.u)
        confusion = known_confusion(semantic_pred, g, self.k)
        self.gt_area += gt_area
        self.confusion += confusion
        labelled = valid & (g < self.k + self.u)
        scores, positive = _numpy(unknown_score)[labelled], g[labelled] >= self.k
        self.scores.update(scores, positive)
        contingency = np.zeros((0, self.k + self.u), np.int64)
        if openworld_pred is not None:
            ow = _numpy(openworld_pred).astype(np.int64)
            self.confusion_ow += known_confusion(ow, g, self.k)
            contingency = discovered_contingency(ow, g, self.k, self.k + self.u)
            self._add_contingency(contingency)
        similar_counts = np.zeros((self.u, 4), np.int64)
        if similar is not None and self.u:
            similar_counts = self._similarity_counts(g, _numpy(similar).astype(np.int64), openworld_pred)
            self.similar_counts += similar_counts
        if self.per_image:
            keys, pos, neg = self.scores.image_counts(scores, positive)
            inter, union = intersection_union(confusion)
            self._images.append({"known_inter": inter, "known_union": union, "score_keys": keys, "score_pos": pos,
                                 "score_neg": neg, "contingency": contingency, "gt_area": gt_area,
                                 "similar": similar_counts[:, :2]})

    def image_stats(self, image_ids: Sequence[str] | None = None) -> OpenWorldImageStats:
        """The per-update counts (needs ``per_image``); ``image_ids`` default "0", "1", ..."""
        if not self.per_image:
            raise ValueError("per-image statistics need per_image=True")
        n, c = len(self._images), self.k + self.u
        contingency = np.zeros((n, self.contingency.shape[0], c), np.int64)
        for i, image in enumerate(self._images):
            contingency[i, : image["contingency"].shape[0]] = image["contingency"]

        def stack(name: str, width: int) -> np.ndarray:
            return np.array([image[name] for image in self._images], dtype=np.int64).reshape(n, width)

        no_pixel = self.scores.image_counts(np.zeros(0), np.zeros(0, bool))  # the dtypes of the score counts
        ids = [str(i) for i in range(n)] if image_ids is None else list(image_ids)
        with_similar = self._has_similar and bool(self.targets)  # else summarize() has no class similarity
        return OpenWorldImageStats(
            image_ids=np.array(ids, dtype=str), n_known=self.k, open_world=self._has_ow,
            known_inter=stack("known_inter", self.k), known_union=stack("known_union", self.k),
            score_offsets=np.cumsum([0] + [image["score_keys"].size for image in self._images], dtype=np.int64),
            **{name: np.concatenate([empty, *(image[name] for image in self._images)])
               for name, empty in zip(("score_keys", "score_pos", "score_neg"), no_pixel)},
            contingency=contingency, gt_area=stack("gt_area", c),
            similar=stack("similar", 2 * self.u).reshape(n, self.u, 2) if with_similar else np.zeros((n, 0, 2), np.int64),
        )

    def _add_contingency(self, part: np.ndarray) -> None:
        if part.shape[0] > self.contingency.shape[0]:
            grown = np.zeros_like(part)
            grown[: self.contingency.shape[0]] = self.contingency
            self.contingency = grown
        self.contingency[: part.shape[0]] += part

    def _similarity_counts(self, g: np.ndarray, similar: np.ndarray, openworld_pred: Any | None) -> np.ndarray:
        """(U, 4) class-similarity counts of one update: per unknown class its GT pixels,
        those whose most similar known class is its target, and the same two over the
        pixels flagged unknown (zeros for a class without a target)."""
        counts = np.zeros((self.u, 4), np.int64)
        flagged = None if openworld_pred is None else _numpy(openworld_pred) >= self.k
        for label, target in self.targets.items():
            on = g == label
            hit = on & (similar == target)
            row = counts[label - self.k]
            row[0], row[1] = int(on.sum()), int(hit.sum())
            if flagged is not None:
                row[2], row[3] = int((on & flagged).sum()), int((hit & flagged).sum())
        return counts

    def summarize(self) -> dict:
        """The results dict: ``known``, ``known_openworld``, ``anomaly``, ``open_world``,
        ``class_similarity`` (None where no input), ``n_images``, ``classes``."""
        known_names = self.names[: self.k]
        results: dict[str, Any] = {
            "n_images": self.n_images,
            "classes": {"known": known_names, "unknown": self.names[self.k :]},
            "known": semantic_metrics(self.confusion, known_names),
            "known_openworld": semantic_metrics(self.confusion_ow, known_names) if self._has_ow else None,
            "anomaly": self.scores.metrics(),
            "open_world": self._open_world() if self._has_ow else None,
            "class_similarity": self._class_similarity() if self._has_similar and self.targets else None,
        }
        return results

    def _open_world(self) -> dict:
        matches = match_discovered(self.contingency, self.gt_area, self.k)
        per_class = {
            self.names[self.k + u]: {"iou": iou, "match": g} for u, (iou, g) in enumerate(matches)
        }
        present = [iou for iou, _ in matches if iou is not None]
        return {
            "miou": sum(present) / len(present) if present else None,
            "per_class": per_class,
            "n_discovered": int(self.contingency.shape[0]),
            "matching": "hungarian",
        }

    def _class_similarity(self) -> dict:
        per_class, acc, acc_flagged = {}, [], []
        for label, target in sorted(self.targets.items()):
            n, hit, n_f, hit_f = self.similar_counts[label - self.k].tolist()
            a = hit / n if n else None
            a_f = hit_f / n_f if n_f else None
            per_class[self.names[label]] = {
                "target": self.names[target], "accuracy": a, "n": n, "accuracy_flagged": a_f, "n_flagged": n_f,
            }
            acc += [a] if a is not None else []
            acc_flagged += [a_f] if a_f is not None else []
        return {
            "accuracy": sum(acc) / len(acc) if acc else None,
            "accuracy_flagged": sum(acc_flagged) / len(acc_flagged) if acc_flagged else None,
            "per_class": per_class,
        }


# ---------------------------------------------------------------- output
def _json_clean(value: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_openworld_metrics(results: Mapping, out: Path | str, run: Mapping | None = None) -> None:
    """Write the :meth:`OpenWorldAccumulator.summarize` dict as sorted, indented JSON.

    ``run`` (the approach's run facts: approach, kind, study, dataset, ...) is stored
    under ``"run"`` as in ``evaluate-panoptic --fact``; values are fractions in [0, 1]
    like the panoptic metrics files. Written atomically.
    """
    data = dict(results)
    if run is not None:
        data["run"] = dict(run)
    write_json_atomic(_json_clean(data), out)


def _x100(value: float | None) -> float | None:
    return None if value is None else round(100.0 * value, 3)


def openworld_table_row(results: Mapping) -> dict:
    """One row of the open-world table (x100, 3 decimals; None prints as "-"):
    approach, mIoU known, AUPR, FPR95, AUROC, OW mIoU, class similarity."""
    anomaly = results.get("anomaly") or {}
    ow = results.get("open_world") or {}
    sim = results.get("class_similarity") or {}
    run = results.get("run") or {}
    return {
        "approach": run.get("approach", "-"),
        "mIoU known": _x100((results.get("known") or {}).get("miou")),
        "AUPR": _x100(anomaly.get("aupr")),
        "FPR95": _x100(anomaly.get("fpr95")),
        "AUROC": _x100(anomaly.get("auroc")),
        "OW mIoU": _x100(ow.get("miou")),
        "class sim": _x100(sim.get("accuracy")),
    }
