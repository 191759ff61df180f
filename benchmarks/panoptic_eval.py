"""Benchmark: vocabseg's panoptic evaluator against cityscapesscripts, single process.

Writes N synthetic Cityscapes-sized (1024x2048) GT/prediction pairs to a temporary
directory, then times, on the same files:

* the reference: ``cityscapesscripts``' per-image core ``pq_compute_single_core`` over
  the matched annotation list (it decodes the PNGs itself);
* ours: ``evaluate_panoptic(..., threads=1)`` for every available PNG decoder
  (JSON parsing and PNG decoding included).

It checks that All/Things/Stuff/per_class agree to 1e-12 and prints the time per
image, the speed-up and the share of our time spent decoding PNGs.

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

from vocabseg.evaluation.io import read_panoptic_png, vips_available
from vocabseg.evaluation.panoptic import evaluate_panoptic
from vocabseg.evaluation.synthetic import SyntheticDataset, write_dataset

TOLERANCE = 1e-12


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls of ``fn`` (seconds) and its last result."""
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


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


def png_files(ds: SyntheticDataset) -> list[Path]:
    """Every GT and predicted PNG of ``ds``."""
    return sorted(ds.gt_folder.glob("*.png")) + sorted(ds.pred_folder.glob("*.png"))


def decode_time(ds: SyntheticDataset, decoder: str, repeats: int) -> float:
    """Best time (seconds) for our decoder to read every PNG of ``ds``."""
    files = png_files(ds)
    return best_time(lambda: [read_panoptic_png(f, decoder) for f in files], repeats)[0]


def reference_decode_time(ds: SyntheticDataset, repeats: int) -> float:
    """Best time (seconds) for the reference's own decoding (PIL + rgb2id) of every PNG."""
    files = png_files(ds)

    def decode_all():
        return [reference.rgb2id(np.array(Image.open(f), dtype=np.uint32)) for f in files]

    return best_time(decode_all, repeats)[0]


def row(label: str, seconds: float, decoding: float, n: int, ref_seconds: float, diff: str) -> str:
    """One line of the result table (times per image)."""
    return (
        f"{label:32s} {1000 * seconds / n:9.1f} {1000 * decoding / n:10.1f}"
        f" {100 * decoding / seconds:8.0f}% {ref_seconds / seconds:8.1f}x  {diff}"
    )


def versions() -> str:
    """Versions of the libraries that set the speed."""
    import PIL

    text = f"numpy {np.__version__}, Pillow {PIL.__version__}"
    if vips_available():
        import pyvips

        text += f", libvips {pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6, help="number of 1024x2048 image pairs")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.images

    with tempfile.TemporaryDirectory(prefix="panoptic-bench-") as tmp:
        ds = write_dataset(Path(tmp), n_images=n, height=1024, width=2048, seed=args.seed)
        print(f"{n} image pairs of 1024x2048, best of {args.repeats} runs, one process")
        print(f"({versions()})")
        print(" " * 33 + " ms/image  decode ms  decode %  speed-up  max |diff|")
        ref_time, ref = best_time(lambda: run_reference(ds), args.repeats)
        ref_decoding = reference_decode_time(ds, args.repeats)
        print(row("cityscapesscripts (single core)", ref_time, ref_decoding, n, ref_time, "-"))
        for decoder in ["pil"] + (["vips"] if vips_available() else []):
            run = lambda: evaluate_panoptic(  # noqa: E731
                ds.gt_json, ds.gt_folder, ds.pred_json, ds.pred_folder, threads=1, decoder=decoder
            )
            ours_time, ours = best_time(run, args.repeats)
            diff = max_difference(ours, ref)
            decoding = decode_time(ds, decoder, args.repeats)
            verdict = f"{diff:.1e} {'OK' if diff <= TOLERANCE else 'MISMATCH'}"
            print(
                row(
                    f"vocabseg threads=1, decoder={decoder}",
                    ours_time,
                    decoding,
                    n,
                    ref_time,
                    verdict,
                )
            )
            if diff > TOLERANCE:
                raise SystemExit("results differ from cityscapesscripts")
        if not vips_available():
            print("(pyvips is not installed: only the PIL decoder was measured)")


if __name__ == "__main__":
    main()
