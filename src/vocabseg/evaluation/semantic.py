"""Semantic IoU from panoptic predictions.

Each GT pixel gets the category of its GT segment (crowd segments included); VOID
pixels and pixels of segments with a category outside the GT ``categories`` are
ignored. Each predicted pixel gets the category of its predicted segment; a VOID
prediction on a labelled GT pixel counts as a wrong prediction (a false negative of
the GT class, a false positive of no class).

The confusion matrix has shape (K, K + 1): rows are the K GT categories (GT JSON
order), columns the K predicted categories plus a last column for VOID.
``IoU_c = TP / (TP + FP + FN)``; a class whose denominator is 0 has IoU None and is
left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["confusion_from_histogram", "intersection_union", "semantic_metrics", "mean_iou"]


def confusion_from_histogram(
    hist: np.ndarray, row_category: np.ndarray, col_category: np.ndarray, n_categories: int
) -> np.ndarray:
    """Fold a joint (GT segment, predicted segment) histogram into a class confusion.

    ``hist`` is (R, C) int64 pixel counts; ``row_category`` (R,) int64 gives each GT
    row's category index or -1 (ignored); ``col_category`` (C,) int64 gives each
    predicted column's category index, ``n_categories`` meaning VOID.
    Returns the (K, K + 1) int64 confusion matrix, K = ``n_categories``.
    """
    width = n_categories + 1
    rows = np.flatnonzero(row_category >= 0)
    cells = row_category[rows, None] * width + col_category[None, :]
    counts = np.bincount(cells.ravel(), weights=hist[rows].ravel(), minlength=n_categories * width)
    return counts.astype(np.int64).reshape(n_categories, width)


def intersection_union(confusion: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class pixel intersection ``TP`` and union ``TP + FP + FN`` of a confusion.

    ``confusion`` is (K, K + 1) int64 (see :func:`confusion_from_histogram`); returns
    two (K,) int64 arrays. Both are sums over pixels, so the counts of several images
    add up to the counts of their union: the bootstrap resamples them per image.
    """
    k = confusion.shape[0]
    tp = np.diag(confusion[:, :k]).astype(np.int64)
    fn = confusion.sum(axis=1) - tp  # includes GT pixels predicted as VOID
    fp = confusion[:, :k].sum(axis=0) - tp
    return tp, tp + fp + fn


def semantic_metrics(confusion: np.ndarray, category_ids: Sequence[int]) -> dict:
    """IoU per class and mIoU from a (K, K + 1) int64 confusion matrix.

    Returns ``{"miou": float | None, "per_class": {str(category id): float | None}}``.
    """
    inter, union = intersection_union(confusion)
    per_class: dict[str, float | None] = {}
    for cat_id, t, denominator in zip(category_ids, inter.tolist(), union.tolist()):
        per_class[str(cat_id)] = t / denominator if denominator > 0 else None
    return {"miou": mean_iou(per_class), "per_class": per_class}


def mean_iou(per_class: dict[str, float | None]) -> float | None:
    """Mean of the per-class IoUs that are not None (classes in neither GT nor
    prediction); None if every class is."""
    present = [iou for iou in per_class.values() if iou is not None]
    return sum(present) / len(present) if present else None
