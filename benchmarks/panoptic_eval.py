"""Benchmark: vocabseg's panoptic evaluator against cityscapesscripts, single process.

Writes N synthetic Cityscapes-sized (1024x2048) GT/prediction pairs to a temporary
directory twice, with the same ids and JSON files:

* as the pipeline writes every panoptic PNG it evaluates (prepared GT, predictions):
  :func:`vocabseg.data.panoptic_png.write_panoptic_png`; this is the measurement;
* with Pillow's default PNG writer (as ``csCreatePanopticImgs`` does), for information.

On each copy it times, PNG decoding included:

* the reference: ``cityscapesscripts``' per-image core ``pq_compute_single_core`` over
  the matched annotation list (it decodes the PNGs itself, with Pillow);
* ours: ``evaluate_panoptic(..., threads=1)`` (JSON parsing included).

It checks that All/Things/Stuff/per_class agree to 1e-12 and prints the time per
image (one GT and one predicted PNG), the speed-up, the share of the time spent
decoding PNGs and the mean PNG size.

Usage: python benchmarks/panoptic_eval.py [--images N] [--repeats R] [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as reference
from PIL import Image

from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.evaluation.panoptic import evaluate_panoptic
from vocabseg.evaluation.synthetic import SyntheticDataset, write_dataset

TOLERANCE = 1e-12
TARGET = 5.0


def best_times(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Smallest wall time (seconds) of each function over ``repeats`` rounds, and results.

    The functions take turns within every round, so that a change in the machine's
    load affects all of them alike.
    """
    best = dict.fromkeys(fns, float("inf"))
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            results[name] = fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best, results


def png_files(ds: SyntheticDataset) -> list[Path]:
    """Every GT and predicted PNG of ``ds``."""
    return sorted(ds.gt_folder.glob("*.png")) + sorted(ds.pred_folder.glob("*.png"))


def rewrite_as_pipeline(ds: SyntheticDataset, root: Path) -> SyntheticDataset:
    """A copy of ``ds`` (same ids, same JSON files) written by write_panoptic_png."""
    folders = {}
    for name, folder in (("gt", ds.gt_folder), ("pred", ds.pred_folder)):
        folders[name] = root / name
        folders[name].mkdir(parents=True)
        for png in sorted(folder.glob("*.png")):
            write_panoptic_png(folders[name] / png.name, read_panoptic_png(png, "pil"))
    return SyntheticDataset(ds.gt_json, folders["gt"], ds.pred_json, folders["pred"], ds.image_ids)


def run_reference(ds: SyntheticDataset) -> dict:
    """cityscapesscripts' single-core evaluation of ``ds``; returns its results dict."""
    gt = json.loads(ds.gt_json.read_text())
    pred = json.loads(ds.pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_image[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints progress
        stats = reference.pq_compute_single_core(
            0, pairs, str(ds.gt_folder), str(ds.pred_folder), categories
        )
    return json.loads(json.dumps(reference.average_pq(stats, categories)))  # int keys -> str


def run_ours(ds: SyntheticDataset) -> dict:
    """vocabseg's evaluation of ``ds`` in this process."""
    return evaluate_panoptic(ds.gt_json, ds.gt_folder, ds.pred_json, ds.pred_folder, threads=1)


def reference_decode(ds: SyntheticDataset) -> None:
    """The reference's own decoding (Pillow + rgb2id) of every PNG of ``ds``.

    Each image is dropped before the next one is decoded, as in the evaluators.
    """
    for f in png_files(ds):
        reference.rgb2id(np.array(Image.open(f), dtype=np.uint32))


def our_decode(ds: SyntheticDataset) -> None:
    """read_panoptic_png of every PNG of ``ds``, one image at a time."""
    for f in png_files(ds):
        read_panoptic_png(f)


def max_difference(ours: dict, ref: dict) -> float:
    """Largest absolute difference over All/Things/Stuff/per_class."""
    diffs = [
        abs(ours[g][k] - ref[g][k])
        for g in ("All", "Things", "Stuff")
        for k in ("pq", "sq", "rq", "n")
    ]
    if set(ours["per_class"]) != set(ref["per_class"]):
        return float("inf")
    for cat, values in ref["per_class"].items():
        diffs += [abs(ours["per_class"][cat][k] - v) for k, v in values.items()]
    return max(diffs)


def row(label: str, seconds: float, decoding: float, n: int, ref_seconds: float, diff: str) -> str:
    """One line of the result table (times per image)."""
    return (
        f"  {label:31s} {1000 * seconds / n:9.1f} {1000 * decoding / n:10.1f}"
        f" {100 * decoding / seconds:8.0f}% {ref_seconds / seconds:8.1f}x  {diff}"
    )


def compare(title: str, ds: SyntheticDataset, n: int, repeats: int) -> float:
    """Time both evaluators on ``ds``, print two rows; returns the speed-up."""
    sizes = [f.stat().st_size for f in png_files(ds)]
    print(f"{title}, mean PNG size {np.mean(sizes):.0f} bytes")
    fns = {
        "ref": lambda: run_reference(ds),
        "ours": lambda: run_ours(ds),
        "ref_decode": lambda: reference_decode(ds),
        "our_decode": lambda: our_decode(ds),
    }
    best, results = best_times(fns, repeats)
    diff = max_difference(results["ours"], results["ref"])
    verdict = f"{diff:.1e} {'OK' if diff <= TOLERANCE else 'MISMATCH'}"
    ref_time = best["ref"]
    print(row("cityscapesscripts (single core)", ref_time, best["ref_decode"], n, ref_time, "-"))
    print(row("vocabseg (threads=1)", best["ours"], best["our_decode"], n, ref_time, verdict))
    if diff > TOLERANCE:
        raise SystemExit("results differ from cityscapesscripts")
    return ref_time / best["ours"]


def versions() -> str:
    """Versions of the libraries that set the speed."""
    import zlib

    import PIL
    from zlib_ng import zlib_ng

    return (
        f"numpy {np.__version__}, Pillow {PIL.__version__} (zlib {zlib.ZLIB_RUNTIME_VERSION}),"
        f" zlib-ng {zlib_ng.ZLIBNG_VERSION}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="number of 1024x2048 image pairs")
    parser.add_argument("--repeats", type=int, default=9, help="timing rounds (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.images

    with tempfile.TemporaryDirectory(prefix="panoptic-bench-") as tmp:
        pillow = write_dataset(Path(tmp), n_images=n, height=1024, width=2048, seed=args.seed)
        pipeline = rewrite_as_pipeline(pillow, Path(tmp) / "pipeline")
        print(f"{n} images of 1024x2048 (GT + prediction PNG each), best of {args.repeats} runs,")
        print(f"one process ({versions()})")
        print(" " * 34 + "ms/image  decode ms  decode %  speed-up  max |diff|")
        title = "PNGs written by write_panoptic_png (as the pipeline)"
        speedup = compare(title, pipeline, n, args.repeats)
        compare("PNGs written by Pillow's defaults (for information)", pillow, n, args.repeats)
        verdict = "met" if speedup >= TARGET else "NOT met"
        print(f"speed-up on the pipeline's PNGs: {speedup:.1f}x (target >= {TARGET:g}x: {verdict})")


if __name__ == "__main__":
    main()
