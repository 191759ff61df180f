"""Benchmark: peak memory and time of the ContMAV evaluation's anomaly accumulation,
streamed score histograms (the default) against keeping every pixel's exact score.

Each method runs in a fresh child process (so its peak resident memory is its own)
that feeds N synthetic 1024x2048 evaluation images, one at a time, through
:class:`vocabseg.openworld.metrics.OpenWorldAccumulator` as ``contmav-eval`` does
(known mIoU counts, the per-image score counts of the bootstrap at the metrics'
resolution, sparse), then summarises:

* binned: ``score_bins=SCORE_BINS`` (2^20 bins), the evaluation's default;
* exact: ``score_bins=None``, every labelled pixel's float64 score and label kept and
  sorted at the end (``contmav-eval --exact-scores``).

Images: 17 known classes in horizontal bands, a rectangle of the 2 unknown classes
(about 4 % of the pixels), 5 % void; float32 unknown scores, higher on unknown pixels.
Generating them costs both methods the same and is not counted in the times (wall and
CPU seconds of the accumulation and the summary). Peak memory is ``ru_maxrss`` of the child;
"above start" subtracts the child's resident memory before the first image (Python,
numpy, the accumulator). The exact method's memory grows with the pixels: the script
prints its bytes per labelled pixel beyond the binned run's peak on the same images;
where it would not fit, run it on fewer images (``--exact-images``) and the script
prints, marked as an extrapolation, what N images would take. It checks that the binned metrics lie within their stated bound of the exact
ones on the images both methods saw, and prints the size of each run's per-image
counts (entries, and bytes of the compressed ``.npz`` per image).

Usage: python benchmarks/contmav_eval_memory.py [--images N] [--exact-images M] [--size H W]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K, U = 17, 2  # known classes, unknown classes (labels K, K + 1)


def synthetic_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(ground truth [H, W] int64 in 0..K+U-1 or 255, unknown score [H, W] float32 in [0, 1])."""
    gt = np.repeat((np.arange(h) * K // h)[:, None], w, axis=1).astype(np.int64)
    top, left = int(rng.integers(0, h - h // 5)), int(rng.integers(0, w - w // 5))
    gt[top : top + h // 5, left : left + w // 5] = K + int(rng.integers(0, U))  # 4 % unknown
    gt[rng.random((h, w), dtype=np.float32) < 0.05] = 255
    score = rng.standard_normal((h, w), dtype=np.float32) * np.float32(0.15) + np.float32(0.35)
    score += np.float32(0.3) * (gt >= K) * (gt != 255)
    return gt, np.clip(score, 0, 1)


def child(method: str, images: int, h: int, w: int, seed: int) -> None:
    """One method: accumulate ``images`` images, print a JSON line of time, memory, metrics."""
    from vocabseg.openworld.metrics import SCORE_BINS, OpenWorldAccumulator

    acc = OpenWorldAccumulator(K, U, score_bins=SCORE_BINS if method == "binned" else None, per_image=True)
    rng = np.random.default_rng(seed)
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    generate = generate_cpu = 0.0
    start, start_cpu = time.perf_counter(), time.process_time()
    labelled = 0
    for _ in range(images):
        t, t_cpu = time.perf_counter(), time.process_time()
        gt, score = synthetic_image(rng, h, w)
        generate += time.perf_counter() - t
        generate_cpu += time.process_time() - t_cpu
        labelled += int((gt != 255).sum())
        acc.update(gt, semantic_pred=np.minimum(gt, K - 1), unknown_score=score)
    anomaly = acc.summarize()["anomaly"]
    stats = acc.image_stats()
    seconds = time.perf_counter() - start - generate
    cpu = time.process_time() - start_cpu - generate_cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as tmp:
        stats.save(Path(tmp) / "images.npz")
        npz = (Path(tmp) / "images.npz").stat().st_size
    print(json.dumps({"method": method, "images": images, "labelled": labelled, "seconds": seconds, "cpu": cpu,
                      "generate_s": generate, "peak": peak, "start": start_rss, "anomaly": anomaly,
                      "entries": int(stats.score_keys.size), "npz": npz}))


def run(method: str, images: int, h: int, w: int, seed: int) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--images", str(images), "--size", str(h), str(w),
           "--seed", str(seed)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images of the binned run (the issue's 500)")
    parser.add_argument("--exact-images", type=int, default=None,
                        help="images of the exact run (default --images; fewer where it would not fit)")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--child", choices=["binned", "exact"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    h, w = args.size
    if args.child:
        child(args.child, args.images, h, w, args.seed)
        return
    n_exact = args.images if args.exact_images is None else args.exact_images
    runs = [run("binned", args.images, h, w, args.seed), run("exact", n_exact, h, w, args.seed)]
    if n_exact != args.images:  # the binned run on the exact run's images, for the comparison
        runs.append(run("binned", n_exact, h, w, args.seed))

    mib = 2**20
    print(f"{h}x{w} images, {K} known + {U} unknown classes; anomaly accumulation + per-image counts")
    print(f"{'method':8} {'images':>6} {'labelled px':>12} {'time s':>8} {'CPU s':>8} {'s/image':>8} "
          f"{'peak RSS MiB':>12} {'above start MiB':>15}")
    for r in runs:
        print(f"{r['method']:8} {r['images']:6d} {r['labelled']:12d} {r['seconds']:8.1f} {r['cpu']:8.1f} "
              f"{r['seconds'] / r['images']:8.3f} {r['peak'] / mib:12.0f} {(r['peak'] - r['start']) / mib:15.0f}")
    for r in runs:
        print(f"{r['method']:8} per-image counts: {r['entries'] / r['images']:.0f} entries "
              f"({r['entries'] / r['labelled']:.3f} per labelled pixel), .npz {r['npz'] / r['images'] / 1e3:.0f} kB per image")
    binned_n = next(r for r in runs if r["method"] == "binned" and r["images"] == args.images)
    binned_same = next(r for r in runs if r["method"] == "binned" and r["images"] == n_exact)
    exact = runs[1]
    per_pixel = (exact["peak"] - binned_same["peak"]) / exact["labelled"]
    print(f"exact: {per_pixel:.1f} bytes per labelled pixel at its peak beyond the binned run's")
    print(f"peak RSS ratio exact / binned at {n_exact} images: {exact['peak'] / binned_same['peak']:.1f}x; "
          f"time ratio {exact['seconds'] / binned_same['seconds']:.2f}x wall, "
          f"{exact['cpu'] / binned_same['cpu']:.2f}x CPU")
    if n_exact != args.images:
        estimate = binned_n["peak"] + per_pixel * binned_n["labelled"]
        print(f"EXTRAPOLATED (not measured): exact at {args.images} images would peak near "
              f"{estimate / 2**30:.1f} GiB ({per_pixel:.1f} B x {binned_n['labelled']} labelled pixels), "
              f"binned measured {binned_n['peak'] / 2**30:.2f} GiB")
    worst = {}
    for key in ("aupr", "auroc", "fpr95"):
        diff = abs(binned_same["anomaly"][key] - exact["anomaly"][key])
        assert diff <= binned_same["anomaly"]["error_bound"][key] + 1e-12, (key, diff)
        worst[key] = diff
    print("binned vs exact on the same images: |diff| " + ", ".join(f"{k} {v:.1e}" for k, v in worst.items())
          + " (each within the reported bound: "
          + ", ".join(f"{k} {v:.1e}" for k, v in binned_same["anomaly"]["error_bound"].items()) + ")")


if __name__ == "__main__":
    main()
