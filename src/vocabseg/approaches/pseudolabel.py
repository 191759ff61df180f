"""FTZS pseudo-labels: in-class ground truth + the zero-shot model's out-class segments.

The seed's "FTZS" approach fine-tunes on a training set in which the out-classes of
the vocabulary configuration are not void but labelled by the zero-shot (teacher)
model. The teacher predicts the training images once (:func:`predict_panoptic` on
the train split, test vocabulary = all 19 classes, every segment with its class
probability ``"score"``); this module turns that prediction and the configuration's
ground truth (written by :func:`vocabseg.data.vocab.write_vocab_split`) into a new
COCO-panoptic pair that :class:`~vocabseg.data.panoptic_dataset.PanopticTrainDataset`
reads with the 19-class training vocabulary.

Rule, per training image (``out_ids`` from the configuration's ``split.json``):

1. Every ground-truth segment is kept unchanged: its pixels, id, category and
   ``iscrowd``. Ground-truth pixels are never overwritten.
2. A teacher segment becomes a pseudo segment if its category is an out-class and
   ``score >= threshold``. Its pixels are restricted to the pixels that are VOID
   (id 0) in the ground truth. Teacher segments of in-classes (or of any other
   category) are ignored: the ground truth is the supervision for the in-classes.
3. A pseudo segment left with fewer than ``min_pixels`` pixels is dropped.
4. Pseudo segments get fresh ids in the Cityscapes convention (``c * 1000 + j`` for
   category ``c``, the smallest ``j >= 0`` whose id is not already used in the image),
   ``iscrowd`` 0, ``area`` and ``bbox`` computed as ``csCreatePanopticImgs`` does, and
   ``"pseudo": true`` so that later steps can tell them from ground-truth segments.
   Teacher segments are disjoint (one panoptic map), so pseudo segments are too.

``threshold`` (default 0.5): ``score`` is the teacher's class probability of the
segment as :mod:`vocabseg.approaches.predict` writes it (the softmax of its query over
the 19 classes + void, after FC-CLIP's geometric ensemble; for a stuff segment merged
from several queries the largest). ``score >= 0.5`` means the teacher gives that class more
probability than all other classes and void together, i.e. the label is the
teacher's majority decision, not just its argmax among many weak alternatives. The
teacher's own panoptic merging keeps every non-void argmax (``object_mask_threshold``
0), so without this filter low-confidence guesses would become training targets.
It is the natural scale-free cut for a probability; a study can sweep it.

``min_pixels`` (default 16): the mask head predicts at stride 4, so 16 pixels are
one 4 x 4 cell of the H/4 x W/4 mask grid. A fragment smaller than one cell (at the
synthetic 256 x 512 resolution and at Cityscapes' 1024 x 2048 alike) cannot be
represented by a predicted mask and is almost always a sliver of a teacher segment
that mostly overlapped labelled pixels; as a target it would only add noise to the
Hungarian matching.

Output: ``out_folder/<annotation file_name>`` PNGs (hard-linked from the ground truth
where nothing is added) and ``out_json`` = the ground-truth JSON with the new
``annotations`` and ``categories`` = all 19 evaluated classes (the training
vocabulary in ∪ out), as ``csCreatePanopticImgs`` writes them. The folder is
built under a temporary name and renamed, the JSON is written last and atomically.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vocabseg.data.labelset import LabelSet, read_labelset
from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.errors import InputError
from vocabseg.fileio import link_or_copy, read_json, replace_dir, write_json_atomic

__all__ = ["build_pseudo_labels", "pseudo_segments", "PSEUDO_KEY"]

#: ``segments_info`` key that marks a pseudo-labelled segment.
PSEUDO_KEY = "pseudo"


def _out_ids(split: Mapping) -> set[int]:
    """``out_ids`` of a vocabulary split, checked: a list of label ids disjoint from ``in_ids``."""
    lists = {}
    for key in ("in_ids", "out_ids"):
        value = split.get(key) if isinstance(split, Mapping) else None
        if not isinstance(value, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
            raise InputError(f"vocabulary split: {key!r} must be a list of label ids, got {value!r}")
        lists[key] = set(value)
    both = sorted(lists["in_ids"] & lists["out_ids"])
    if both:
        raise InputError(f"vocabulary split: label id(s) {both} are both in 'in_ids' and in 'out_ids'")
    return lists["out_ids"]


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO ``[x, y, width, height]`` of a non-empty (H, W) bool mask."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def _fresh_id(category: int, used: set[int]) -> int:
    """Smallest unused ``category * 1000 + j`` (Cityscapes instance-id convention)."""
    for j in range(1000):
        candidate = category * 1000 + j
        if candidate not in used:
            return candidate
    raise InputError(f"category {category}: more than 1000 segments in one image, no free segment id")


def _score(segment: Mapping, source: str) -> float:
    value = segment.get("score")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InputError(
            f"{source}: segment {segment.get('id')!r} has no numeric 'score' (got {value!r}); "
            "the teacher prediction must carry each segment's class probability"
        )
    return float(value)


def pseudo_segments(
    gt_ids: np.ndarray,
    gt_segments: list[dict],
    teacher_ids: np.ndarray,
    teacher_segments: list[dict],
    out_ids: set[int],
    *,
    threshold: float = 0.5,
    min_pixels: int = 16,
    source: str = "teacher prediction",
) -> tuple[np.ndarray, list[dict], dict[str, int]]:
    """Add the teacher's out-class segments to one image's ground truth.

    Args:
        gt_ids: (H, W) ground-truth segment ids (0 = VOID).
        gt_segments: its ``segments_info``.
        teacher_ids: (H, W) teacher segment ids.
        teacher_segments: the teacher's ``segments_info`` (``id``, ``category_id``, ``score``).
        out_ids: label ids of the out-classes.
        threshold, min_pixels: see the module docstring.
        source: how errors name the teacher input.

    Returns:
        (H, W) uint32 ids, ``segments_info`` (ground truth first, unchanged, then the
        pseudo segments in teacher order) and counts ``{"kept", "dropped_score",
        "dropped_size", "ignored_in_class"}`` (``ignored_in_class``: teacher segments
        of categories that are not out-classes).

    Raises:
        InputError naming ``source``: a teacher segment without numeric ``score``.
    """
    merged = np.asarray(gt_ids).astype(np.uint32, copy=True)
    void = merged == 0
    used = {int(i) for i in np.unique(merged)} | {int(s["id"]) for s in gt_segments}
    segments = [dict(s) for s in gt_segments]
    counts = {"kept": 0, "dropped_score": 0, "dropped_size": 0, "ignored_in_class": 0}
    for seg in teacher_segments:
        try:
            seg_id, category = int(seg["id"]), int(seg["category_id"])
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{source}: a segments_info entry lacks an integer 'id' or 'category_id'") from None
        score = _score(seg, source)  # checked on every segment: catches score-less prediction files
        if category not in out_ids:
            counts["ignored_in_class"] += 1
            continue
        if score < threshold:
            counts["dropped_score"] += 1
            continue
        mask = void & (teacher_ids == seg_id) if seg_id != 0 else np.zeros_like(void)
        area = int(mask.sum())
        if area < min_pixels or area == 0:
            counts["dropped_size"] += 1
            continue
        new_id = _fresh_id(category, used)
        used.add(new_id)
        merged[mask] = new_id
        void &= ~mask
        segments.append(
            {"id": new_id, "category_id": category, "iscrowd": 0, "area": area, "bbox": _bbox(mask), PSEUDO_KEY: True}
        )
        counts["kept"] += 1
    return merged, segments, counts


def _teacher_annotations(teacher_json: Path) -> dict[str, dict]:
    data = read_json(teacher_json)
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise InputError(f"{teacher_json}: prediction JSON without an 'annotations' list")
    by_image: dict[str, dict] = {}
    for ann in annotations:
        if not isinstance(ann, dict) or not all(k in ann for k in ("image_id", "file_name", "segments_info")):
            raise InputError(f"{teacher_json}: an annotation lacks 'image_id', 'file_name' or 'segments_info'")
        by_image[str(ann["image_id"])] = ann
    return by_image


def build_pseudo_labels(
    gt_json: Path,
    gt_folder: Path,
    teacher_json: Path,
    teacher_folder: Path,
    split: Mapping,
    out_json: Path,
    out_folder: Path,
    *,
    threshold: float = 0.5,
    min_pixels: int = 16,
    labels: LabelSet | None = None,
) -> dict[str, int]:
    """Write the FTZS training ground truth of a vocabulary configuration.

    Args:
        gt_json, gt_folder: the configuration's training ground truth (out-classes VOID).
        teacher_json, teacher_folder: the zero-shot model's prediction of the same
            images (:func:`vocabseg.approaches.predict.predict_panoptic`).
        split: the configuration's ``split.json`` content (``in_ids``, ``out_ids``).
        out_json, out_folder: where the pseudo-labelled ground truth goes.
        threshold: minimum teacher ``score`` of a pseudo segment (see module docstring).
        min_pixels: minimum number of pixels a pseudo segment keeps.
        labels: the dataset's label set, whose evaluated classes the output lists as
            ``categories`` (None: Cityscapes).

    Returns:
        ``{"images", "images_with_pseudo", "pseudo_kept", "dropped_score",
        "dropped_size", "ignored_in_class", "pseudo_pixels"}``.

    Raises:
        InputError naming the file: unreadable JSON/PNG, an image without teacher
        prediction, a size mismatch, a teacher out-class segment without ``score``;
        or naming the option for a bad ``threshold`` / ``min_pixels``.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise InputError(f"pseudo-label threshold: expected a probability in [0, 1], got {threshold!r}")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise InputError(f"pseudo-label min_pixels: expected an integer >= 1, got {min_pixels!r}")
    out_ids = _out_ids(split)
    gt_json, gt_folder, teacher_json, teacher_folder = map(Path, (gt_json, gt_folder, teacher_json, teacher_folder))
    out_json, out_folder = Path(out_json), Path(out_folder)

    gt = read_json(gt_json)
    if not isinstance(gt, dict) or not isinstance(gt.get("annotations"), list):
        raise InputError(f"{gt_json}: panoptic JSON without an 'annotations' list")
    teacher = _teacher_annotations(teacher_json)

    tmp_folder = out_folder.with_name(out_folder.name + ".tmp")
    shutil.rmtree(tmp_folder, ignore_errors=True)
    tmp_folder.mkdir(parents=True)
    stats = {k: 0 for k in ("images", "images_with_pseudo", "pseudo_kept", "dropped_score", "dropped_size",
                            "ignored_in_class", "pseudo_pixels")}
    annotations = []
    for ann in gt["annotations"]:
        image_id = str(ann["image_id"])
        gt_png = gt_folder / ann["file_name"]
        t_ann = teacher.get(image_id)
        if t_ann is None:
            raise InputError(f"{teacher_json}: no teacher prediction for training image {image_id!r} (of {gt_json})")
        t_png = teacher_folder / t_ann["file_name"]
        gt_ids = read_panoptic_png(gt_png)
        t_ids = read_panoptic_png(t_png)
        if gt_ids.shape != t_ids.shape:
            raise InputError(
                f"{t_png}: size {t_ids.shape[::-1]} differs from the ground truth {gt_png} ({gt_ids.shape[::-1]})"
            )
        ids, segments, counts = pseudo_segments(
            gt_ids, list(ann["segments_info"]), t_ids, list(t_ann["segments_info"]), out_ids,
            threshold=threshold, min_pixels=min_pixels, source=f"{teacher_json} (image {image_id})",
        )
        dst = tmp_folder / ann["file_name"]
        if counts["kept"]:
            write_panoptic_png(dst, ids)
            stats["images_with_pseudo"] += 1
            stats["pseudo_pixels"] += sum(s["area"] for s in segments if s.get(PSEUDO_KEY))
        else:
            if not gt_png.is_file():
                raise InputError(f"cannot read panoptic PNG {gt_png}: file not found")
            link_or_copy(gt_png, dst)
        annotations.append({**ann, "segments_info": segments})
        stats["images"] += 1
        stats["pseudo_kept"] += counts["kept"]
        for key in ("dropped_score", "dropped_size", "ignored_in_class"):
            stats[key] += counts[key]

    replace_dir(tmp_folder, out_folder)
    write_json_atomic({**gt, "annotations": annotations, "categories": (labels or read_labelset(None)).categories()}, out_json)
    return stats
