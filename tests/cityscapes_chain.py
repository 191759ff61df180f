"""A tiny deterministic chain of the Cityscapes-format path, and its recorded outputs.

The label-set change (issue 15) replaced the Cityscapes table in every stage by a
``LabelSet`` passed to each command. ``tests/test_cityscapes_unchanged.py`` checks that the
Cityscapes-format path still gives what it gave before: it runs this chain with the current
code and compares the summary with ``tests/fixtures/cityscapes_chain.json``, the summary
the same chain gave with the code of commit d78b85f (the last one before ``LabelSet``).

The chain, on a synthetic city in the Cityscapes layout (2 training and 2 validation
images of 64 x 128), every step a ``vocabseg`` command line that both versions accept:
prepare -> vocab-split 008 -> text-embeddings (000, 008) -> predict (val) -> oracle
(val, train) -> intersect (in-classes of the model, out-classes of the oracle) ->
evaluate-panoptic of the model and of the intersection (PQ, SQ, RQ, mIoU, In / Out,
per class) -> pseudolabel (the teacher: the training oracle with score 1) ->
contmav-weights -> contmav-train (4 epochs of the tiny ContMAV, train and motorcycle
unknown) -> contmav-eval (with the paper's class similarity).

Its inputs are made by the code that runs the test (:func:`make_inputs`): the city and
two weight files drawn from fixed seeds (the tiny CLIP and the tiny FC-CLIP, untrained;
``overlap_threshold`` 0 keeps the segments of its random masks).
The summary holds the digests of these inputs, and what may be compared across machines:
sha256 of the integer outputs
(label PNGs, ground-truth JSON), and for the outputs of a network the numbers themselves
(per-image class areas of the panoptic predictions, metrics, text-embedding row sums, the
ContMAV class weights), which the test compares with a tolerance.

Regenerate the fixture (e.g. after a change of the synthetic city), from the repository root::

    git worktree add /tmp/before-labelset d78b85f
    python tests/cityscapes_chain.py --code /tmp/before-labelset/src --out tests/fixtures/cityscapes_chain.json
    git worktree remove /tmp/before-labelset

``--code`` is the ``src`` folder of the code that runs the chain (the inputs are always
made by the current code); without it the current code runs it too.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

#: the model block of the chain (the tiny FC-CLIP and the CLIP weights of make_inputs)
MODEL = {"preset": "tiny", "overrides": {"overlap_threshold": 0.0}}
#: ContMAV's unknown classes: train and motorcycle (the paper's similar classes: truck, car)
UNKNOWN = ["16", "17"]
SPLITS = {"train": 2, "val": 2}


def make_inputs(work: Path) -> None:
    """The city (work/raw) and the weights (work/clip.pt, work/base.pt) from fixed seeds."""
    import open_clip
    import torch

    from vocabseg.approaches.study_model import ModelSpec, build_model
    from vocabseg.data.synth import generate_city
    from vocabseg.models.clip_tiny import TINY_CLIP_NAME, register_tiny_clip

    generate_city(work / "raw", split_sizes=SPLITS, height=64, width=128, seed=3)
    register_tiny_clip()
    torch.manual_seed(0)
    clip = open_clip.create_model(TINY_CLIP_NAME)
    torch.save({k: v.detach().clone() for k, v in clip.state_dict().items()}, work / "clip.pt")
    torch.manual_seed(1)
    model = build_model(ModelSpec(**MODEL, clip_pretrained=str(work / "clip.pt")), None)
    torch.save({"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}, work / "base.pt")


def run_chain(work: Path) -> None:
    """Every step of the chain with the importable ``vocabseg`` (module docstring)."""
    w = str(work)
    model = json.dumps({**MODEL, "clip_pretrained": f"{w}/clip.pt"})
    gt = f"{w}/prepared/cityscapes_panoptic"
    steps = [
        ["prepare", "--raw", f"{w}/raw", "--out", f"{w}/prepared", "--splits", "train", "val", "--threads", "1"],
        ["vocab-split", "--conf", "008", "--train-json", f"{gt}_train.json", "--train-folder", f"{gt}_train",
         "--split-out", f"{w}/vocab/split.json", "--gt-json-out", f"{w}/vocab/train.json",
         "--gt-folder-out", f"{w}/vocab/train"],
        ["text-embeddings", "--model", model, "--out", f"{w}/text/000.pt"],
        ["text-embeddings", "--model", model, "--split", f"{w}/vocab/split.json", "--out", f"{w}/text/008.pt"],
    ]
    steps.append(["predict", "--model", model, "--weights", f"{w}/base.pt", "--text", f"{w}/text/000.pt",
                  "--gt-json", f"{gt}_val.json", "--image-root", f"{w}/raw/leftImg8bit/val",
                  "--out-json", f"{w}/pred/model.json", "--out-folder", f"{w}/pred/model", "--threads", "1"])
    for split in ("val", "train"):
        steps.append(["oracle", "--gt-json", f"{gt}_{split}.json", "--gt-folder", f"{gt}_{split}",
                      "--out-json", f"{w}/pred/oracle_{split}.json", "--out-folder", f"{w}/pred/oracle_{split}"])
    steps.append(["intersect", "--in-json", f"{w}/pred/model.json", "--in-folder", f"{w}/pred/model",
                  "--out-json", f"{w}/pred/oracle_val.json", "--out-folder", f"{w}/pred/oracle_val",
                  "--split", f"{w}/vocab/split.json", "--merged-json", f"{w}/pred/intersect.json",
                  "--merged-folder", f"{w}/pred/intersect"])
    for pred in ("model", "intersect"):
        steps.append(["evaluate-panoptic", "--gt-json", f"{gt}_val.json", "--gt-folder", f"{gt}_val",
                      "--pred-json", f"{w}/pred/{pred}.json", "--pred-folder", f"{w}/pred/{pred}",
                      "--split", f"{w}/vocab/split.json", "--out", f"{w}/metrics/{pred}.json",
                      "--images-out", f"{w}/metrics/{pred}.images.npz"])
    _run(steps)
    _score_teacher(work / "pred/oracle_train.json", work / "pred/teacher.json")
    ow = ["--image-root", f"{w}/raw/leftImg8bit/train", "--label-root", f"{w}/prepared/gtFine/train"]
    _run([
        ["pseudolabel", "--gt-json", f"{w}/vocab/train.json", "--gt-folder", f"{w}/vocab/train",
         "--teacher-json", f"{w}/pred/teacher.json", "--teacher-folder", f"{w}/pred/oracle_train",
         "--split", f"{w}/vocab/split.json", "--out-json", f"{w}/pseudo/train.json", "--out-folder", f"{w}/pseudo/train"],
        ["contmav-weights", *ow, "--unknown", *UNKNOWN, "--out", f"{w}/contmav/weights.json"],
        ["contmav-train", *ow, "--unknown", *UNKNOWN, "--weights", f"{w}/contmav/weights.json",
         "--model", json.dumps({"preset": "tiny"}), "--variant", json.dumps({"mav_start_epoch": 1}), "--threads", "1",
         "--recipe", json.dumps({"epochs": 4, "batch_size": 2, "augment": {"crop_size": [32, 64]}}),
         "--out", f"{w}/contmav/model.pt", "--state-dir", f"{w}/contmav/state", "--metrics-log", f"{w}/contmav/log.jsonl"],
        ["contmav-eval", "--model", f"{w}/contmav/model.pt", "--image-root", f"{w}/raw/leftImg8bit/val",
         "--label-root", f"{w}/prepared/gtFine/val", "--unknown", *UNKNOWN, "--threads", "1", "--score-bins", str(2**20),
         "--out", f"{w}/contmav/metrics.json", "--images-out", f"{w}/contmav/metrics.images.npz"],
    ])


def _run(steps: list[list[str]]) -> None:
    """``vocabseg`` command lines, in this process."""
    from vocabseg.cli import main

    for step in steps:
        if main(step) != 0:
            raise RuntimeError(f"vocabseg {step[0]} failed")


def _score_teacher(oracle: Path, out: Path) -> None:
    """The oracle's prediction as a teacher: every segment with score 1."""
    data = json.loads(oracle.read_text())
    for ann in data["annotations"]:
        for seg in ann["segments_info"]:
            seg["score"] = 1.0
    out.write_text(json.dumps(data))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path, pattern: str = "*.png") -> dict[str, str]:
    """sha256 of every file below ``folder`` matching ``pattern``, by relative path."""
    return {p.relative_to(folder).as_posix(): _sha(p) for p in sorted(folder.rglob(pattern))}


def _class_areas(json_path: Path, folder: Path) -> dict[str, dict[str, int]]:
    """Per image: pixels of each category in a panoptic prediction (PNG + segments_info)."""
    import numpy as np
    from PIL import Image

    data = json.loads(json_path.read_text())
    areas = {}
    for ann in data["annotations"]:
        rgb = np.asarray(Image.open(folder / ann["file_name"]).convert("RGB")).astype(np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]
        per_class: dict[str, int] = {}
        for seg in ann["segments_info"]:
            key = str(seg["category_id"])
            per_class[key] = per_class.get(key, 0) + int((ids == seg["id"]).sum())
        areas[str(ann["image_id"])] = dict(sorted(per_class.items()))
    return areas


def _without_run(metrics: dict) -> dict:
    """A metrics JSON without its run facts (times, paths, device)."""
    return {k: v for k, v in metrics.items() if k != "run"}


def summarize(work: Path) -> dict:
    """What the chain's outputs are (module docstring)."""
    import torch

    def read(path: str):
        return json.loads((work / path).read_text())

    text = {}
    for vocab in ("000", "008"):
        clf = torch.load(work / f"text/{vocab}.pt", weights_only=True)
        text[vocab] = {"row_sums": [round(float(v), 6) for v in clf["embeddings"].sum(dim=1)],
                       "num_synonyms": clf["num_synonyms"]}
    weights = {}
    for name in ("clip.pt", "base.pt"):
        state = torch.load(work / name, weights_only=True)
        state = state.get("model", state)
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(key.encode() + state[key].contiguous().numpy().tobytes())
        weights[name] = digest.hexdigest()
    return {
        "inputs": {"city": _files(work / "raw", "*.*"), "weights": weights},
        "exact": {
            "prepared_labels": _files(work / "prepared/gtFine"),
            "prepared_panoptic": {**_files(work / "prepared", "cityscapes_panoptic_*/*.png"),
                                  **_files(work / "prepared", "cityscapes_panoptic_*.json")},
            "split": read("vocab/split.json"),
            "vocab_ground_truth": {**_files(work / "vocab/train"), "train.json": _sha(work / "vocab/train.json")},
            "pseudo_label_images": sorted(a["image_id"] for a in read("pseudo/train.json")["annotations"]),
        },
        "numbers": {
            "text": text,
            "prediction": _class_areas(work / "pred/model.json", work / "pred/model"),
            "intersection": _class_areas(work / "pred/intersect.json", work / "pred/intersect"),
            "pseudo_labels": _class_areas(work / "pseudo/train.json", work / "pseudo/train"),
            "metrics": _without_run(read("metrics/model.json")),
            "metrics_intersection": _without_run(read("metrics/intersect.json")),
            "contmav_class_weights": {k: v for k, v in read("contmav/weights.json").items() if "root" not in k},
            "contmav_metrics": _without_run(read("contmav/metrics.json")),
        },
    }


def chain_summary(work: Path, code: Path | None = None) -> dict:
    """Make the inputs (current code), run the chain with ``code`` (a ``src`` folder; None:
    the current code, in this process) and return the summary of its outputs."""
    make_inputs(work)
    if code is None:
        run_chain(work)
    else:
        env = {**os.environ, "PYTHONPATH": str(Path(code).resolve())}
        subprocess.run([sys.executable, __file__, "--run-only", str(work)], check=True, env=env)
    return summarize(work)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=None, help="src folder of the code that runs the chain")
    parser.add_argument("--out", type=Path, help="the summary JSON to write")
    parser.add_argument("--run-only", type=Path, default=None, help=argparse.SUPPRESS)  # the chain in a child
    a = parser.parse_args()
    if a.run_only is not None:
        run_chain(a.run_only)
        return
    with tempfile.TemporaryDirectory() as tmp:
        summary = chain_summary(Path(tmp), a.code)
    a.out.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
