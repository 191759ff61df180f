"""Class-wise combination of two evaluated approaches: the seed's "Naive" row.

The seed's naive number (All PQ 50.35, In 65.575, Out 29.416) is not the score of a
merged prediction: In is exactly the lower bound's, Out exactly zero-shot's, and
All = (11·65.575 + 8·29.416)/19. Each class is scored from the model responsible for
it. This module computes exactly that from two metrics files of
:func:`vocabseg.evaluation.panoptic.evaluate_panoptic`, without any prediction:

    per_class[c] = in_metrics.per_class[c]   for c in the split's in_ids
                   out_metrics.per_class[c]  for c in the split's out_ids
    counts[c], semantic.per_class[c]: taken the same way

and the groups All / Things / Stuff / In / Out are recomputed from the combined
per-class results by :func:`~vocabseg.evaluation.panoptic.group_metrics`, exactly as
the evaluator aggregates (a class counts iff its TP + FP + FN > 0), and the semantic
mIoU by :func:`~vocabseg.evaluation.semantic.mean_iou`. Its deployable counterpart,
one merged prediction, is :mod:`vocabseg.approaches.intersection`.

The per-image counts that the bootstrap resamples (:class:`PerImageStats`) are combined
the same way, column by column, so the row gets intervals like every other
(:func:`classwise_images`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vocabseg.approaches.intersection import split_ids
from vocabseg.data.labelset import LabelSet, read_labelset
from vocabseg.errors import InputError
from vocabseg.evaluation.panoptic import Categories, PerImageStats, group_members, group_metrics
from vocabseg.evaluation.semantic import mean_iou
from vocabseg.fileio import read_json

__all__ = ["classwise_metrics", "classwise_from_files", "classwise_images", "classwise_images_from_files"]


def _per_class_part(metrics: Mapping, key: str, ids: list[int], source: str) -> dict[str, object]:
    """``metrics[key]`` (``metrics["semantic"]["per_class"]`` for ``"semantic"``)
    restricted to ``ids``; InputError naming ``source`` if a class is missing."""
    table = metrics.get("semantic", {}).get("per_class") if key == "semantic" else metrics.get(key)
    if not isinstance(table, Mapping):
        hint = " (metrics written before per-class counts were recorded: evaluate again)" if key == "counts" else ""
        raise InputError(f"{source}: metrics JSON has no {key!r} entry{hint}")
    missing = [c for c in ids if str(c) not in table]
    if missing:
        raise InputError(f"{source}: {key!r} lacks the class(es) {missing}")
    return {str(c): table[str(c)] for c in ids}


def _covering_split(split: Mapping, labels: LabelSet | None) -> tuple[list[int], list[int], Categories]:
    """In ids, out ids and the evaluated categories of ``labels`` (None: Cityscapes);
    InputError unless the split covers them."""
    in_ids, out_ids = split_ids(split)
    categories = Categories.from_gt_json({"categories": (labels or read_labelset(None)).categories()})
    uncovered = [c for c in categories.ids if c not in set(in_ids) | set(out_ids)]
    if uncovered:
        raise InputError(f"vocabulary split: class(es) {uncovered} are neither in 'in_ids' nor in 'out_ids'")
    return in_ids, out_ids, categories


def classwise_metrics(
    in_metrics: Mapping,
    out_metrics: Mapping,
    split: Mapping,
    *,
    names: tuple[str, str] = ("in metrics", "out metrics"),
    labels: LabelSet | None = None,
) -> dict:
    """The class-wise combination (module docstring) of two results dicts.

    Args:
        in_metrics: results of the approach scored on the split's in-classes.
        out_metrics: results of the approach scored on its out-classes.
        split: content of a ``split.json`` (``in_ids``, ``out_ids``); together they
            must cover the evaluated classes of ``labels``.
        names: how error messages call the two inputs (their paths).
        labels: the dataset's label set (None: Cityscapes, 19 evaluated classes).

    Returns:
        A results dict of the evaluator's schema: ``All``, ``Things``, ``Stuff``,
        ``In``, ``Out``, ``per_class``, ``counts``, ``semantic``.
    """
    in_ids, out_ids, categories = _covering_split(split, labels)
    parts = {}
    for key in ("per_class", "counts", "semantic"):
        parts[key] = {
            **_per_class_part(in_metrics, key, in_ids, names[0]),
            **_per_class_part(out_metrics, key, out_ids, names[1]),
        }
    per_class = {c: parts["per_class"][str(c)] for c in categories.ids}
    present = {c: sum(int(parts["counts"][str(c)][k]) for k in ("tp", "fp", "fn")) > 0 for c in categories.ids}
    semantic = {str(c): parts["semantic"][str(c)] for c in categories.ids}
    return {
        **group_metrics(per_class, present, categories, split),
        "per_class": {str(c): per_class[c] for c in categories.ids},
        "counts": {str(c): parts["counts"][str(c)] for c in categories.ids},
        "semantic": {"miou": mean_iou(semantic), "per_class": semantic},
    }


def classwise_from_files(in_metrics: Path, out_metrics: Path, split: Path, labels: LabelSet | None = None) -> dict:
    """:func:`classwise_metrics` of two metrics JSON files and a ``split.json``."""
    return classwise_metrics(
        read_json(in_metrics), read_json(out_metrics), read_json(split), names=(str(in_metrics), str(out_metrics)),
        labels=labels,
    )


def classwise_images(
    in_stats: PerImageStats,
    out_stats: PerImageStats,
    split: Mapping,
    *,
    names: tuple[str, str] = ("in images", "out images"),
    labels: LabelSet | None = None,
) -> PerImageStats:
    """Per-image counts of the class-wise combination: the in-classes' columns from
    ``in_stats``, the out-classes' from ``out_stats`` (both over the same images and
    categories), groups as the evaluator forms them for ``split``."""
    _, out_ids, categories = _covering_split(split, labels)
    for stats, name in zip((in_stats, out_stats), names):
        if list(stats.category_ids) != list(categories.ids):
            raise InputError(f"{name}: categories {list(stats.category_ids)} are not the evaluated classes")
    if list(in_stats.image_ids) != list(out_stats.image_ids):
        raise InputError(f"{names[0]} and {names[1]}: the two evaluations cover different validation images")
    from_out = np.isin(in_stats.category_ids, out_ids)
    counts = {
        name: np.where(from_out, getattr(out_stats, name), getattr(in_stats, name)) for name in PerImageStats.COUNTS
    }
    groups = {g: np.isin(categories.ids, m) for g, m in group_members(categories, split).items()}
    return PerImageStats(image_ids=in_stats.image_ids, category_ids=in_stats.category_ids, groups=groups, **counts)


def classwise_images_from_files(
    in_images: Path, out_images: Path, split: Path, labels: LabelSet | None = None
) -> PerImageStats:
    """:func:`classwise_images` of two ``.npz`` files of per-image counts and a ``split.json``."""
    return classwise_images(
        PerImageStats.load(in_images), PerImageStats.load(out_images), read_json(split),
        names=(str(in_images), str(out_images)), labels=labels,
    )
