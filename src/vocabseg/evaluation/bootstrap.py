"""Image-level bootstrap confidence intervals and paired differences of the panoptic metrics.

The validation images are the sample: a resample draws N of the N images with
replacement (image i drawn ``c_i`` times), and every metric is recomputed on it
exactly as :mod:`vocabseg.evaluation.panoptic` computes it on the full set. The
counts of a resample are weighted sums of the per-image counts
(:class:`~vocabseg.evaluation.panoptic.PerImageStats`), so B resamples of all the
per-class counts are one matrix product::

    (B, N) resample counts  @  (N, 6 K) per-image [ΣIoU | TP | FP | FN | ∩ | ∪]

No PNG is read again, and the result equals evaluating a GT/prediction set in
which image i appears ``c_i`` times (the tests check this against the evaluator).
Per resample, as the evaluator: a class with ``TP + FP + FN = 0`` has PQ = SQ = RQ
= 0 and is left out of its groups' means; a group left without any class is NaN
(JSON null) in that resample; a class with semantic union 0 is left out of mIoU.

Intervals are percentile intervals (default 95 %: the 2.5th and 97.5th percentiles
of the B resampled values, linear interpolation, resamples where the metric is NaN
left out). A **paired** difference of a row against a reference row uses the same
resampled images for both rows (same seed, same counts matrix), so the image
sampling noise common to both cancels; its interval excludes 0 when the two rows
differ by more than the choice of validation images explains. A row against itself
gives exactly 0.

Open-world (ContMAV) rows resample :class:`~vocabseg.openworld.metrics.OpenWorldImageStats`
the same way: known mIoU from the per-image intersections / unions; open-world mIoU
by the Hungarian matching of the resample's summed contingency; AUPR, AUROC and
FPR95 from per-image unknown-score counts, as follows (:func:`anomaly_resamples`).
Each image stores its counts at the resolution of the point estimate (the 2^20
:class:`~vocabseg.openworld.metrics.BinnedScores` bins, or every distinct score),
sparsely. Resampling all M non-empty bins would cost ``B · N · M``, so they are first
grouped into at most ``score_bins`` (default :data:`BOOTSTRAP_SCORE_BINS`) bins by
:func:`~vocabseg.openworld.metrics.score_grid`, with edges from the POOLED counts:
pooled quantiles of each class, crowded bins and the bin of the pooled FPR95 point
kept on their own. If M fits, nothing is grouped and every resample's metrics are
those of the resampled image list, exactly. Otherwise a resample's value is

    metric(grouped counts of the resample) + [metric(all images, M bins) − metric(all images, grouped)]

the second term being the part of the curves inside the groups, taken from the full
sample. So the full sample (every image once) gives the point estimate exactly, and
a resample b differs from its M-bin metric by at most ``E_b + E_1``, where E is the
grouping's error bound (:meth:`~vocabseg.openworld.metrics.BinnedScores.error_bound`
of the grouped counts; on the full sample's groups, with L = (score_bins − 3) // 4
levels, AUROC <= 1/L and FPR95 <= 2/L, and 0 for its FPR95, whose bin is kept).

What the interval covers: the variation of the metric under a new draw of
validation images from the same distribution, with the trained models fixed. It
does not cover training noise (seeds), which needs replicated training runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd

from vocabseg.errors import InputError
from vocabseg.openworld.metrics import FPR_TPR, OpenWorldImageStats, match_discovered
from vocabseg.evaluation.panoptic import PerImageStats

__all__ = [
    "METRICS",
    "OPENWORLD_METRICS",
    "BOOTSTRAP_SCORE_BINS",
    "anomaly_metrics",
    "anomaly_resamples",
    "resample_counts",
    "resampled_metrics",
    "metric_values",
    "percentile_interval",
    "percentile_intervals",
    "BootstrapSettings",
    "bootstrap_rows",
]

GROUPS = ("All", "Things", "Stuff", "In", "Out")
#: metric names, as paths into the metrics JSON: "<group>/<pq|sq|rq>" and "semantic/miou"
METRICS = (*(f"{g}/{k}" for g in GROUPS for k in ("pq", "sq", "rq")), "semantic/miou")
#: open-world metric names, as paths into the ``contmav-eval`` metrics JSON
OPENWORLD_METRICS = (
    "known/miou", "anomaly/aupr", "anomaly/auroc", "anomaly/fpr95", "open_world/miou", "class_similarity/accuracy",
)


#: at most this many score bins per open-world row in the resamples' curves (time ~ B·N·bins)
BOOTSTRAP_SCORE_BINS = 4096


def resample_counts(n_images: int, resamples: int, seed: int) -> np.ndarray:
    """(B, N) float64: how often each image is drawn in each of B resamples.

    Draws ``rng.integers(0, N, (B, N))`` of ``numpy.random.default_rng(seed)``, so
    the same seed and sizes give the same resamples on every machine.
    """
    if n_images < 1 or resamples < 1:
        raise InputError(f"bootstrap needs at least one image and one resample (got {n_images}, {resamples})")
    drawn = np.random.default_rng(seed).integers(0, n_images, size=(resamples, n_images))
    offsets = np.arange(resamples)[:, None] * n_images
    counts = np.bincount((drawn + offsets).ravel(), minlength=resamples * n_images)
    return counts.reshape(resamples, n_images).astype(np.float64)


def _class_sums(stats: PerImageStats, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class count of each resample: ``{count name: (B, K) float64}``."""
    k = stats.category_ids.size
    stacked = np.concatenate([getattr(stats, name).astype(np.float64) for name in stats.COUNTS], axis=1)
    sums = counts @ stacked  # (B, 6K); integer counts stay exact below 2**53
    return {name: sums[:, i * k : (i + 1) * k] for i, name in enumerate(stats.COUNTS)}


def _mean_over(values: np.ndarray, included: np.ndarray) -> np.ndarray:
    """(B,) mean of (B, K) ``values`` over the ``included`` (B, K) entries; NaN where none."""
    n = included.sum(axis=1)
    total = np.where(included, values, 0.0).sum(axis=1)
    return np.divide(total, n, out=np.full(n.shape, np.nan), where=n > 0)


def metric_values(sums: Mapping[str, np.ndarray], groups: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` (those whose group exists) from (B, K) class sums.

    Returns ``{metric: (B,) float64}``, fractions in [0, 1], NaN for an empty group.
    """
    iou, tp, fp, fn = sums["iou"], sums["tp"], sums["fp"], sums["fn"]
    present = (tp + fp + fn) > 0
    denominator = tp + 0.5 * fp + 0.5 * fn
    per_class = {
        "pq": np.divide(iou, denominator, out=np.zeros_like(iou), where=present),
        "sq": np.divide(iou, tp, out=np.zeros_like(iou), where=tp != 0),
        "rq": np.divide(tp, denominator, out=np.zeros_like(iou), where=present),
    }
    values = {}
    for group in GROUPS:
        if group in groups:
            included = present & groups[group][None, :]
            for key, per in per_class.items():
                values[f"{group}/{key}"] = _mean_over(per, included)
    values["semantic/miou"] = _miou(sums["sem_inter"], sums["sem_union"])
    return values


def _miou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """(B,) mean IoU over the classes with a non-zero union of (B, K) pixel counts."""
    class_iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    return _mean_over(class_iou, union > 0)


def anomaly_metrics(pos: np.ndarray, neg: np.ndarray) -> dict[str, np.ndarray]:
    """AUPR, AUROC, FPR95 of (B, bins) score histograms (bins ascending), as
    :func:`vocabseg.openworld.metrics.metrics_from_counts` on the non-empty bins
    (empty bins add nothing): ``{"anomaly/<metric>": (B,) float64}``, NaN where undefined."""
    tp, fp = np.cumsum(pos[:, ::-1], axis=1), np.cumsum(neg[:, ::-1], axis=1)
    n_pos, n_neg = tp[:, -1], fp[:, -1]
    has_pos, has_both = n_pos > 0, (n_pos > 0) & (n_neg > 0)
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    aupr = np.divide((np.diff(tp, axis=1, prepend=0.0) * precision).sum(axis=1), n_pos,
                     out=np.full(n_pos.shape, np.nan), where=has_pos)
    tp0 = np.concatenate([np.zeros((tp.shape[0], 1)), tp], axis=1)
    area = (np.diff(fp, axis=1, prepend=0.0) * (tp0[:, 1:] + tp0[:, :-1])).sum(axis=1)
    auroc = np.divide(area, 2.0 * n_pos * n_neg, out=np.full(n_pos.shape, np.nan), where=has_both)
    # first bin reaching TPR 0.95 (= 19/20), compared in integers as _first_at_tpr
    frac = Fraction(str(FPR_TPR))
    reached = tp * frac.denominator >= frac.numerator * n_pos[:, None]
    first = np.argmax(reached, axis=1)
    fp_at = fp[np.arange(fp.shape[0]), first]
    fpr95 = np.divide(fp_at, n_neg, out=np.full(n_pos.shape, np.nan), where=has_both)
    return {"anomaly/aupr": aupr, "anomaly/auroc": auroc, "anomaly/fpr95": fpr95}


def anomaly_resamples(
    stats: OpenWorldImageStats, counts: np.ndarray, score_bins: int = BOOTSTRAP_SCORE_BINS, chunk: int = 2**22
) -> dict[str, np.ndarray]:
    """AUPR, AUROC, FPR95 of each resample of (B, N) ``counts`` (module docstring):
    the grouped curves of the resample plus the full sample's within-group part.
    ``{"anomaly/<metric>": (B,) float64}``; resamples are taken ``chunk // bins`` at a
    time, so memory stays some ten times ``chunk`` floats."""
    pos, neg, point = stats.rebinned_scores(score_bins, FPR_TPR)
    step = max(1, chunk // max(1, pos.shape[1]))
    parts = [anomaly_metrics(counts[b : b + step] @ pos, counts[b : b + step] @ neg)
             for b in range(0, counts.shape[0], step)]
    grouped = anomaly_metrics(pos.sum(axis=0)[None], neg.sum(axis=0)[None])  # the full sample, grouped
    # + the part of the full sample's curves inside the groups (0 up to rounding if nothing is grouped)
    return {key: (np.concatenate([part[key] for part in parts]) - grouped[key][0]) + full
            for key, full in zip(("anomaly/aupr", "anomaly/auroc", "anomaly/fpr95"), point)}


def _openworld_metrics(stats: OpenWorldImageStats, counts: np.ndarray, score_bins: int) -> dict[str, np.ndarray]:
    """Every metric of :data:`OPENWORLD_METRICS` on each resample of (B, N) ``counts``."""
    values = {"known/miou": _miou(counts @ stats.known_inter, counts @ stats.known_union)}
    values.update(anomaly_resamples(stats, counts, score_bins))
    n, g, c = stats.contingency.shape
    contingency = (counts @ stats.contingency.reshape(n, g * c)).reshape(counts.shape[0], g, c)
    gt_area = counts @ stats.gt_area
    ow = np.full(counts.shape[0], np.nan)
    for b in range(counts.shape[0] if stats.open_world else 0):  # as OpenWorldAccumulator._open_world
        present = [iou for iou, _ in match_discovered(contingency[b], gt_area[b], stats.n_known) if iou is not None]
        if present:
            ow[b] = sum(present) / len(present)
    values["open_world/miou"] = ow
    # class similarity: per unknown class hits / GT pixels, the mean over classes with pixels
    n_unknown = stats.similar.shape[1]
    similar = (counts @ stats.similar.reshape(n, 2 * n_unknown)).reshape(counts.shape[0], n_unknown, 2)
    pixels, hits = similar[..., 0], similar[..., 1]
    accuracy = np.divide(hits, pixels, out=np.zeros_like(hits), where=pixels > 0)
    values["class_similarity/accuracy"] = _mean_over(accuracy, pixels > 0)
    return values


def resampled_metrics(
    stats: PerImageStats | OpenWorldImageStats, counts: np.ndarray, score_bins: int = BOOTSTRAP_SCORE_BINS
) -> dict[str, np.ndarray]:
    """Every metric on each resample of ``counts`` (B, N): ``{metric: (B,) float64}``
    (:data:`METRICS` of a panoptic row, :data:`OPENWORLD_METRICS` of an open-world one,
    whose score curves use at most ``score_bins`` bins: :func:`anomaly_resamples`)."""
    if counts.shape[1] != stats.image_ids.size:
        raise ValueError(f"counts cover {counts.shape[1]} images, the statistics {stats.image_ids.size}")
    if isinstance(stats, OpenWorldImageStats):
        return _openworld_metrics(stats, counts, score_bins)
    return metric_values(_class_sums(stats, counts), stats.groups)


def percentile_intervals(samples: np.ndarray, level: float = 0.95) -> np.ndarray:
    """(M, 2) percentile intervals of the rows of (M, B) ``samples``, NaN ignored.

    Linear interpolation between order statistics (``numpy.percentile``'s default
    method) over each row's F finite values; a row without any is (NaN, NaN).
    """
    ordered = np.sort(samples, axis=1)  # NaN sort last
    finite = (~np.isnan(samples)).sum(axis=1)
    tail = 0.5 * (1.0 - level)
    out = np.full((samples.shape[0], 2), np.nan)
    rows = np.flatnonzero(finite > 0)
    for j, q in enumerate((tail, 1.0 - tail)):
        position = q * (finite[rows] - 1)
        below = np.floor(position).astype(np.intp)
        above = np.minimum(below + 1, finite[rows] - 1)
        a, b = ordered[rows, below], ordered[rows, above]
        out[rows, j] = a + (b - a) * (position - below)
    return out


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of (B,) ``samples`` (NaN ignored); (NaN, NaN) if all are NaN."""
    lo, hi = percentile_intervals(samples[None, :], level)[0]
    return float(lo), float(hi)


@dataclass(frozen=True)
class BootstrapSettings:
    """``uncertainty`` block of the study config: resamples, seed, interval level, and
    the most score bins of an open-world row's resampled curves (:func:`anomaly_resamples`)."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    score_bins: int = BOOTSTRAP_SCORE_BINS

    def __post_init__(self) -> None:
        if self.score_bins < 10:
            raise InputError(f"bootstrap score bins must be >= 10, got {self.score_bins}")


def bootstrap_rows(
    stats: Mapping[str, PerImageStats],
    references: Sequence[str] = (),
    settings: BootstrapSettings = BootstrapSettings(),
) -> pd.DataFrame:
    """Intervals of every metric of every row, and paired differences to the references.

    Args:
        stats: ``{row name: per-image statistics}``; all rows must cover the same
            images in the same order (they are paired image by image).
        references: row names; each row is compared with each of them.
        settings: number of resamples, seed and interval level.

    Returns:
        A long frame with columns ``approach, metric, reference, estimate, lo, hi``:
        ``reference`` is empty for the metric's own interval and names the
        reference for the paired difference ``row - reference``; ``estimate`` is the
        value on all images (the evaluator's, to rounding), all as fractions.
    """
    if not stats:
        return pd.DataFrame(columns=["approach", "metric", "reference", "estimate", "lo", "hi"])
    unknown = [r for r in references if r not in stats]
    if unknown:
        raise InputError(f"bootstrap reference row(s) {unknown} are not rows of the table ({list(stats)})")
    first_name, first = next(iter(stats.items()))
    for name, s in stats.items():
        if not np.array_equal(s.image_ids, first.image_ids):
            raise InputError(
                f"per-image statistics of {name!r} and {first_name!r} cover different images; "
                "the rows of one table must be evaluated on the same validation set"
            )
    counts = resample_counts(first.image_ids.size, settings.resamples, settings.seed)
    everything = np.ones((1, first.image_ids.size))  # row 0: the full sample, the point estimate
    point, samples = {}, {}
    for name, s in stats.items():
        values = resampled_metrics(s, np.vstack([everything, counts]), settings.score_bins)
        point[name] = {metric: v[:1] for metric, v in values.items()}
        samples[name] = {metric: v[1:] for metric, v in values.items()}
    keys, estimates, resampled = [], [], []
    for name in stats:
        for metric, values in samples[name].items():
            keys.append((name, metric, ""))
            estimates.append(point[name][metric][0])
            resampled.append(values)
            for ref in references:
                if metric in samples[ref]:  # the same resamples of both rows: paired
                    keys.append((name, metric, ref))
                    estimates.append(point[name][metric][0] - point[ref][metric][0])
                    resampled.append(values - samples[ref][metric])
    intervals = percentile_intervals(np.array(resampled), settings.level)
    frame = pd.DataFrame(keys, columns=["approach", "metric", "reference"])
    return frame.assign(estimate=np.array(estimates, dtype=np.float64), lo=intervals[:, 0], hi=intervals[:, 1])
