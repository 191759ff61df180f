"""Benchmark: the image-level bootstrap of a Cityscapes-size table against a naive loop.

Builds random but realistic per-image statistics (default 500 validation images,
19 classes, 20 table rows; per image every stuff class is present with probability
0.8, 0-12 segments per thing class, 40-90 % of the segments matched with IoU
0.5-0.95, a few false positives; semantic counts of a 1024x2048 image) and times:

* ours: :func:`vocabseg.evaluation.bootstrap.bootstrap_rows` with 1000 resamples and
  3 reference rows (every metric's interval and every paired difference); with
  ``--replicates N`` every row has N training replicates (rows ``row00``,
  ``row00.r1``, ...) and the timed call is the replicated table's
  :func:`vocabseg.report.replicates.replicate_bootstrap` (N bootstraps of 20 rows);
* the naive reference: per resample and row, the resampled image list summed in a
  Python loop (the evaluator's ``ImageStats`` sums) and the evaluator's ``summarize``;
  timed on a few resamples in the same run and extrapolated to all of them.

It checks that both give the same metrics on those resamples (to 1e-12) and prints
the two times (wall and CPU: on a shared machine the CPU time is the steadier
number) and their ratio.

Then ContMAV rows (``--openworld-rows``, default 6, with 1 reference row): per image
``--openworld-pixels`` labelled pixels (17 known, 2 unknown classes, 5 % unknown)
whose unknown scores crowd as plain ContMAV's (30 % of the known and 10 % of the
unknown pixels within 1e-4 of 0.5005, so the FPR95 threshold lies in the crowd; the
others normal, known 0.3 ± 0.15, unknown 0.75 ± 0.08), 64 discovered classes. Each row is built as
``contmav-eval --images-out`` stores it (per image, the non-empty bins of the 2^20
bins of the point estimate) and grouped as ``vocabseg report`` loads it
(:meth:`~vocabseg.openworld.metrics.OpenWorldImageStats.grouped`), one row at a time;
timed: the grouping and :func:`bootstrap_rows` of all rows, against the previous
method (1000 score bins per image) on the same scores. It checks that the full sample
gives each row's point estimate exactly and prints both methods' FPR95 interval of the
first row beside its point estimate.

Usage: python benchmarks/bootstrap.py [--images N] [--rows R] [--resamples B] [--naive-resamples b] [--replicates N]
       [--openworld-rows R] [--openworld-pixels P]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from vocabseg.data.labels import EVAL_LABELS, THING_IDS
from vocabseg.evaluation import panoptic as pan
from vocabseg.evaluation.bootstrap import METRICS, BootstrapSettings, bootstrap_rows, resample_counts, resampled_metrics
from vocabseg.openworld.metrics import SCORE_BINS, BinnedScores, OpenWorldImageStats
from vocabseg.report.replicates import replicate_bootstrap

TOLERANCE = 1e-12
SPLIT = {"in_ids": [lb.id for lb in EVAL_LABELS if lb.id not in THING_IDS], "out_ids": sorted(THING_IDS)}
CATEGORIES = pan.Categories(tuple(lb.id for lb in EVAL_LABELS), tuple(lb.id in THING_IDS for lb in EVAL_LABELS))


def realistic_stats(rng: np.random.Generator, n_images: int, quality: float) -> pan.PerImageStats:
    """Per-image counts of one table row; ``quality`` in (0, 1) scales the matched share."""
    k = len(CATEGORIES.ids)
    isthing = np.array(CATEGORIES.isthing)
    shape = (n_images, k)
    gt = np.where(isthing, rng.integers(0, 13, shape), rng.random(shape) < 0.8)
    tp = rng.binomial(gt, np.clip(quality * rng.uniform(0.4, 0.9, shape), 0, 1))
    fp = rng.poisson(np.where(isthing, 1.5, 0.3), shape)
    pixels = rng.integers(1_000, 400_000, shape) * (gt > 0)
    inter = (pixels * rng.uniform(0.3, 0.95, shape) * quality).astype(np.int64)
    return pan.PerImageStats(
        image_ids=np.array([f"val_{i:04d}" for i in range(n_images)]),
        category_ids=np.array(CATEGORIES.ids, dtype=np.int64),
        groups={g: np.isin(CATEGORIES.ids, m) for g, m in pan.group_members(CATEGORIES, SPLIT).items()},
        iou=tp * rng.uniform(0.5, 0.95, shape), tp=tp, fp=fp, fn=gt - tp,
        sem_inter=inter, sem_union=pixels + rng.integers(0, 50_000, shape) * (pixels > 0),
    )


def naive_metrics(stats: pan.PerImageStats, drawn: np.ndarray) -> dict:
    """The evaluator's results on the image list ``drawn`` (indices, repeats allowed)."""
    k = stats.category_ids.size
    total = pan.ImageStats.zeros(k)
    for i in drawn:
        confusion = np.zeros((k, k + 1), np.int64)
        np.fill_diagonal(confusion, stats.sem_inter[i])
        confusion[:, k] = stats.sem_union[i] - stats.sem_inter[i]
        total += pan.ImageStats(stats.iou[i], stats.tp[i], stats.fp[i], stats.fn[i], confusion)
    return pan.summarize(total, CATEGORIES, SPLIT)


def openworld_stats(rng: np.random.Generator, n_images: int, pixels: int, shift: float,
                    bins: int) -> tuple[OpenWorldImageStats, dict]:
    """One ContMAV row with per-image score counts in ``bins`` bins, and the point
    estimate of its pooled 2^20-bin curves (``BinnedScores.metrics()``)."""
    k, u, g = 17, 2, 64
    image = BinnedScores(bins)
    pooled = BinnedScores(SCORE_BINS)
    keys, pos, neg, offsets = [], [], [], [0]
    for _ in range(n_images):
        unknown = rng.random(pixels) < 0.05
        crowd = rng.random(pixels) < np.where(unknown, 0.1, 0.3)
        spread = rng.normal(np.where(unknown, 0.75 + shift, 0.3), np.where(unknown, 0.08, 0.15))
        score = np.clip(np.where(crowd, 0.5005 + rng.uniform(-1e-4, 1e-4, pixels), spread), 0.0, 1.0)
        pooled.update(score, unknown)
        key, p, n = image.image_counts(score, unknown)
        keys.append(key), pos.append(p), neg.append(n), offsets.append(offsets[-1] + key.size)
    area = rng.integers(1000, 50_000, (n_images, k + u))
    contingency = rng.integers(0, 200, (n_images, g, k + u)) * (rng.random((n_images, g, 1)) < 0.2)
    inter = (area[:, :k] * rng.uniform(0.3, 0.9, (n_images, k))).astype(np.int64)
    stats = OpenWorldImageStats(
        image_ids=np.array([f"val_{i:04d}" for i in range(n_images)]), n_known=k, open_world=True,
        known_inter=inter, known_union=area[:, :k] + rng.integers(0, 5_000, (n_images, k)),
        score_offsets=np.array(offsets, np.int64), score_keys=np.concatenate(keys),
        score_pos=np.concatenate(pos), score_neg=np.concatenate(neg),
        contingency=contingency, gt_area=area, similar=np.zeros((n_images, 0, 2), np.int64),
    )
    return stats, pooled.metrics()


def openworld_benchmark(args: argparse.Namespace) -> None:
    settings = BootstrapSettings(resamples=args.resamples, seed=args.seed)
    times: dict[str, list[float]] = {"build": [0.0, 0.0], "group": [0.0, 0.0]}
    new, old, points, entries = {}, {}, {}, 0
    for r in range(args.openworld_rows):
        for method, bins in (("new", SCORE_BINS), ("old", 1000)):
            start, cpu = time.perf_counter(), time.process_time()
            stats, point = openworld_stats(np.random.default_rng(args.seed + r), args.images, args.openworld_pixels,
                                           0.02 * r, bins)
            times["build"][0] += time.perf_counter() - start
            times["build"][1] += time.process_time() - cpu
            if method == "new":
                entries += stats.score_keys.size
                start, cpu = time.perf_counter(), time.process_time()
                new[f"contmav{r}"] = stats.grouped(settings.score_bins)  # as the report loads a row
                times["group"][0] += time.perf_counter() - start
                times["group"][1] += time.process_time() - cpu
                points[f"contmav{r}"] = point
            else:
                old[f"contmav{r}"] = stats
    boots = {}
    for method, rows in (("new", new), ("old", old)):
        start, cpu = time.perf_counter(), time.process_time()
        boots[method] = bootstrap_rows(rows, ["contmav0"], settings)
        times[method] = [time.perf_counter() - start, time.process_time() - cpu]
    boot = boots["new"][boots["new"]["reference"] == ""].set_index(["approach", "metric"])
    for name, point in points.items():
        for key in ("aupr", "auroc", "fpr95"):
            assert boot.loc[(name, f"anomaly/{key}"), "estimate"] == point[key], (name, key)
    print(f"\n{args.openworld_rows} ContMAV rows x {args.images} images x {args.openworld_pixels} labelled pixels "
          f"x {args.resamples} resamples, 1 reference row; per-image score counts: "
          f"{entries / args.openworld_rows / args.images:.0f} non-empty 2^20 bins per image")
    print(f"grouping the rows as the report loads them (<= {settings.score_bins} bins): "
          f"{times['group'][0]:6.2f} s wall, {times['group'][1]:6.2f} s CPU")
    print(f"bootstrap, grouped full-resolution counts:  {times['new'][0]:6.2f} s wall, {times['new'][1]:6.2f} s CPU")
    print(f"bootstrap, 1000 bins per image (previous):  {times['old'][0]:6.2f} s wall, {times['old'][1]:6.2f} s CPU")
    for method in ("new", "old"):
        b = boots[method].set_index(["approach", "metric", "reference"]).loc[("contmav0", "anomaly/fpr95", "")]
        print(f"FPR95 of contmav0: point {100 * points['contmav0']['fpr95']:.2f}, {method} full sample "
              f"{100 * b['estimate']:.2f}, interval [{100 * b['lo']:.2f}, {100 * b['hi']:.2f}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive-resamples", type=int, default=3, help="resamples timed for the naive loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicates", type=int, default=1, help="training replicates of every row")
    parser.add_argument("--openworld-rows", type=int, default=6, help="ContMAV rows (0: none)")
    parser.add_argument("--openworld-pixels", type=int, default=65536, help="labelled pixels per ContMAV image")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    rows = {f"row{r:02d}": realistic_stats(rng, args.images, rng.uniform(0.7, 1.0)) for r in range(args.rows)}
    references = list(rows)[:3]
    settings = BootstrapSettings(resamples=args.resamples, seed=args.seed)

    replicas = {
        f"{name}.r{k}": realistic_stats(rng, args.images, rng.uniform(0.7, 1.0))
        for name in rows for k in range(1, args.replicates)
    }

    start, cpu = time.perf_counter(), time.process_time()
    if replicas:
        boot = replicate_bootstrap({**rows, **replicas}, references, settings)
    else:
        boot = bootstrap_rows(rows, references, settings)
    ours, ours_cpu = time.perf_counter() - start, time.process_time() - cpu

    counts = resample_counts(args.images, args.resamples, args.seed)[: args.naive_resamples]
    start, cpu = time.perf_counter(), time.process_time()
    naive = {}
    for name, stats in rows.items():
        naive[name] = [naive_metrics(stats, np.repeat(np.arange(args.images), c.astype(int))) for c in counts]
    scale = args.resamples / args.naive_resamples * args.replicates  # the loop once per replicate
    naive_time, naive_cpu = (time.perf_counter() - start) * scale, (time.process_time() - cpu) * scale

    worst = 0.0
    for name, stats in rows.items():
        fast = resampled_metrics(stats, counts)
        for b, results in enumerate(naive[name]):
            for metric in METRICS:
                group, key = metric.split("/")
                want = results[group][key]
                got = fast[metric][b]
                if want is None:
                    assert math.isnan(got), (name, metric)
                else:
                    worst = max(worst, abs(want - got))
    assert worst <= TOLERANCE, worst

    print(f"{args.images} images x {len(CATEGORIES.ids)} classes x {args.resamples} resamples x {args.rows} rows "
          f"x {args.replicates} replicates, {len(references)} reference rows ({len(boot)} intervals)")
    print(f"ours (matrix products): {ours:8.2f} s wall, {ours_cpu:8.2f} s CPU")
    print(f"naive loop (extrapolated from {args.naive_resamples} resamples of the {args.rows} rows of replicate 0): {naive_time:8.1f} s wall, "
          f"{naive_cpu:8.1f} s CPU")
    print(f"speed-up: {naive_time / ours:.0f}x wall, {naive_cpu / ours_cpu:.0f}x CPU; "
          f"largest difference on the checked resamples {worst:.1e}")
    if args.openworld_rows:
        openworld_benchmark(args)


if __name__ == "__main__":
    main()
