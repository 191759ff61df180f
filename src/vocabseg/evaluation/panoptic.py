"""Panoptic quality (PQ, SQ, RQ) exactly as ``csEvalPanopticSemanticLabeling``, but fast.

Inputs are COCO-panoptic files: a GT JSON and folder of PNGs (as written by
``csCreatePanopticImgs``) and a prediction JSON and folder of PNGs. A PNG pixel
stores its segment id as ``R + 256 G + 256² B``; id 0 is VOID.

Semantics (identical to ``cityscapesscripts.evaluation.evalPanopticSemanticLabeling``):

* The evaluated classes and their thing/stuff split come only from the GT JSON
  ``categories``; predicted segments must use one of those category ids.
* A GT segment and a predicted segment of the same category match if
  ``IoU > 0.5`` (strict), where the union leaves out the predicted pixels lying on
  GT VOID: ``union = area_pred + area_gt - intersection - |pred ∩ VOID|``. The GT area
  is the ``area`` of the GT JSON (not recounted); the predicted area is counted from
  the PNG. Crowd GT segments (``iscrowd`` 1) are never matched.
* Every unmatched non-crowd GT segment is a false negative (FN).
* An unmatched predicted segment is a false positive (FP) unless more than half of
  it lies on GT VOID plus the crowd region of its category; the crowd region of a
  category is the *last* crowd segment of that category in ``segments_info`` order.
* Per class: ``PQ = ΣIoU / (TP + FP/2 + FN/2)``, ``SQ = ΣIoU / TP`` (0 if TP = 0),
  ``RQ = TP / (TP + FP/2 + FN/2)``. A group value (All, Things, Stuff) is the plain
  mean over the group's classes with ``TP + FP + FN > 0``, counted as ``n``; classes
  without any of them get pq = sq = rq = 0 in ``per_class``.
* Segment ids repeated in a ``segments_info`` list behave like the reference's
  ``{segment["id"]: segment}`` dictionaries: the last entry wins. GT PNG ids that
  are missing from the GT JSON are ignored (not VOID); GT JSON segments missing from
  the GT PNG are false negatives.

Deliberate differences from the reference:

* A group without any class with ``TP + FP + FN > 0`` (``n = 0``) makes the
  reference divide by zero; here its pq, sq and rq are ``None`` (JSON null) and n = 0.
* The sanity errors are raised as :class:`~vocabseg.errors.InputError` (a
  ``ValueError``; the reference raises ``Exception`` and ``KeyError``), with one
  message naming the offending file and the image id and/or segment id: a GT image
  without prediction; an id in a predicted PNG that its ``segments_info`` lacks; a
  ``segments_info`` entry absent from its PNG; a predicted ``category_id`` that is
  not a GT category. A missing, corrupt or truncated PNG, a PNG that is not 8-bit
  RGB(A), a GT/prediction size mismatch and an unreadable or incomplete JSON also
  raise ``InputError`` naming the file.
* ``threads`` bounds the number of (spawned) worker processes (the reference always
  starts ``cpu_count()`` of them); ``threads=1`` evaluates in this process. Per-image
  results are summed in image order, so the result does not depend on ``threads``.

Additions to the reference's result schema (``All``, ``Things``, ``Stuff`` each
``{pq, sq, rq, n}``; ``per_class`` ``{str(category id): {pq, sq, rq}}``; values are
fractions in [0, 1]):

* with a ``split`` (the content of a ``split.json``: ``in_ids``, ``out_ids``, ...),
  groups ``In`` and ``Out`` averaged like the others over the split's ids that are GT
  categories;
* ``semantic``: ``{"miou", "per_class"}``, semantic IoU computed from the same PNGs
  (see :mod:`vocabseg.evaluation.semantic`);
* ``counts``: ``{str(category id): {"tp", "fp", "fn"}}``, the matched, false positive
  and false negative segments of each class; a class counts in the group averages iff
  their sum is positive, so groups can be recomputed from per-class results
  (:func:`group_metrics`, used by the class-wise combination of two results).

Per-image statistics (:class:`PerImageStats`, from :func:`evaluate_panoptic_images`):
the per-image, per-class TP, FP, FN, IoU sums and semantic intersection / union pixel
counts whose sums over the images are the counts above. They are saved as a ``.npz``
(no pickle) beside the metrics JSON, so that the bootstrap
(:mod:`vocabseg.evaluation.bootstrap`) resamples images without reading a PNG again.

Speed: per image both PNGs are decoded once (the plain PNGs that the project
writes without Pillow, see :mod:`vocabseg.data.panoptic_png`), the pixels are cut
into runs of one (GT id, predicted id) pair in raster order, the runs' segment ids
are mapped to dense slots with small lookup tables, and one weighted ``np.bincount``
over the runs gives the joint (GT segment, predicted segment) pixel histogram;
matching, FN and FP are then vectorised over that small histogram.
"""

from __future__ import annotations

import functools
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vocabseg.errors import InputError
from vocabseg.data.panoptic_png import DECODERS, read_panoptic_png
from vocabseg.fileio import read_json, read_npz, write_json_atomic, write_npz_atomic
from vocabseg.evaluation.semantic import confusion_from_histogram, intersection_union, semantic_metrics

__all__ = [
    "Categories",
    "Segments",
    "ImageTask",
    "ImageStats",
    "PerImageStats",
    "evaluate_panoptic",
    "evaluate_panoptic_images",
    "group_members",
    "group_metrics",
    "write_metrics",
    "accumulate",
    "summarize",
    "build_tasks",
    "evaluate_image",
]

# ids up to this bound are mapped with a dense lookup table (2 or 4 bytes per entry);
# larger ids (up to 2**24) go through a binary search over the image's segment ids
LUT_MAX_ID = 1 << 20
VOID_SLOT = 0


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Categories:
    """The GT categories, in GT JSON order (the order of all averages)."""

    ids: tuple[int, ...]
    isthing: tuple[bool, ...]

    @classmethod
    def from_gt_json(cls, gt: Mapping) -> Categories:
        """Categories of a parsed GT JSON (repeated ids: the last entry wins)."""
        by_id = {c["id"]: c for c in gt["categories"]}
        return cls(tuple(by_id), tuple(c["isthing"] == 1 for c in by_id.values()))

    def index(self) -> dict[int, int]:
        """Map category id -> position in :attr:`ids`."""
        return {cat_id: k for k, cat_id in enumerate(self.ids)}


@dataclass(frozen=True)
class Segments:
    """The segments of one image's ``segments_info`` (one side, GT or prediction).

    All arrays have shape (S,), S = number of distinct segment ids, in the order of
    their first appearance; a repeated id takes its last entry.
    """

    ids: np.ndarray  # int64 segment ids
    category_ids: np.ndarray  # int64 category ids as written in the JSON
    category_index: np.ndarray  # int64 position in Categories.ids, -1 if unknown
    iscrowd: np.ndarray  # bool
    area: np.ndarray  # float64 JSON area (GT only; NaN for predictions)

    @classmethod
    def from_json(
        cls, segments_info: Iterable[Mapping], index: Mapping[int, int], *, gt: bool
    ) -> Segments:
        """Build from a ``segments_info`` list; ``gt`` requires and reads ``area``."""
        by_id = {s["id"]: s for s in segments_info}
        infos = list(by_id.values())
        return cls(
            ids=np.array([int(i) for i in by_id], dtype=np.int64),
            category_ids=np.array([int(s["category_id"]) for s in infos], dtype=np.int64),
            category_index=np.array(
                [index.get(s["category_id"], -1) for s in infos], dtype=np.int64
            ),
            iscrowd=np.array([gt and s.get("iscrowd", 0) == 1 for s in infos], dtype=bool),
            area=np.array([s["area"] if gt else np.nan for s in infos], dtype=np.float64),
        )


@dataclass(frozen=True)
class ImageTask:
    """Everything needed to evaluate one image, picklable for worker processes."""

    image_id: str
    gt_png: Path
    pred_png: Path
    pred_json: Path  # only for error messages
    gt: Segments
    pred: Segments


@dataclass
class ImageStats:
    """Per-category counts of one image or a sum of images (K = number of categories).

    ``iou``, ``tp``, ``fp``, ``fn`` have shape (K,) (float64, int64, int64, int64);
    ``confusion`` is the (K, K + 1) int64 semantic confusion matrix.
    """

    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    confusion: np.ndarray

    @classmethod
    def zeros(cls, k: int) -> ImageStats:
        """Empty counts for ``k`` categories."""
        z = np.zeros(k, dtype=np.int64)
        return cls(np.zeros(k), z.copy(), z.copy(), z.copy(), np.zeros((k, k + 1), dtype=np.int64))

    def __iadd__(self, other: ImageStats) -> ImageStats:
        self.iou += other.iou
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn
        self.confusion += other.confusion
        return self


@dataclass(frozen=True)
class PerImageStats:
    """Per-image, per-category counts of one evaluation (N images, K categories).

    Attributes:
        image_ids: (N,) str, GT annotation order.
        category_ids: (K,) int64, GT JSON order.
        groups: ``{group: (K,) bool}`` members of All, Things, Stuff (and In, Out
            with a split), as :func:`group_members`.
        iou: (N, K) float64 sum of the matched segments' IoU.
        tp, fp, fn: (N, K) int64 segment counts.
        sem_inter, sem_union: (N, K) int64 semantic pixel intersection and union
            (see :func:`vocabseg.evaluation.semantic.intersection_union`).

    Summing any count over images gives the count of that set of images, so a
    resample of images (with repeats) is a weighted sum of rows.
    """

    image_ids: np.ndarray
    category_ids: np.ndarray
    groups: dict[str, np.ndarray]
    iou: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    sem_inter: np.ndarray
    sem_union: np.ndarray

    COUNTS = ("iou", "tp", "fp", "fn", "sem_inter", "sem_union")

    @classmethod
    def of_images(
        cls, image_ids: Sequence[str], categories: Categories, groups: Mapping[str, Sequence[int]],
        images: Sequence[ImageStats],
    ) -> PerImageStats:
        """Stack the :class:`ImageStats` of ``images`` (one per id of ``image_ids``)."""
        k = len(categories.ids)
        semantic = [intersection_union(s.confusion) for s in images]

        def stack(rows: list[np.ndarray], dtype: type) -> np.ndarray:
            return np.array(rows, dtype=dtype).reshape(len(images), k)

        return cls(
            image_ids=np.array(image_ids, dtype=str),
            category_ids=np.array(categories.ids, dtype=np.int64),
            groups={g: np.isin(categories.ids, list(m)) for g, m in groups.items()},
            iou=stack([s.iou for s in images], np.float64),
            tp=stack([s.tp for s in images], np.int64),
            fp=stack([s.fp for s in images], np.int64),
            fn=stack([s.fn for s in images], np.int64),
            sem_inter=stack([i for i, _ in semantic], np.int64),
            sem_union=stack([u for _, u in semantic], np.int64),
        )

    def save(self, path: Path) -> None:
        """Write a compressed ``.npz`` (plain arrays, loadable without pickle) atomically."""
        arrays = {name: getattr(self, name) for name in ("image_ids", "category_ids", *self.COUNTS)}
        arrays.update({f"group_{g}": mask for g, mask in self.groups.items()})
        write_npz_atomic(arrays, path)

    @classmethod
    def load(cls, path: Path) -> PerImageStats:
        """Read a file of :meth:`save`; a missing or damaged one is an InputError naming it."""
        fields = ("image_ids", "category_ids", *cls.COUNTS)
        arrays = read_npz(path, fields, "per-image statistics")
        groups = {n.removeprefix("group_"): arrays[n] for n in arrays if n.startswith("group_")}
        return cls(groups=groups, **{f: arrays[f] for f in fields})


# --------------------------------------------------------------------------- per image


@dataclass(frozen=True)
class SlotMap:
    """Dense slots for the segment ids of one PNG.

    Slot 0 holds pixel id 0 (VOID), slots 1..U the distinct non-zero segment ids of
    the JSON (``keys``, (U,) int64, slot = position + 1), slot U + 1 every other id.
    ``segment_slot`` is (S,) intp, the slot of each JSON segment (a segment with id 0
    shares the VOID slot).
    """

    keys: np.ndarray
    segment_slot: np.ndarray

    @classmethod
    def of(cls, segment_ids: np.ndarray) -> SlotMap:
        """Slots for the (S,) int64 distinct JSON segment ids."""
        nonzero = segment_ids != 0
        segment_slot = np.zeros(segment_ids.shape, dtype=np.intp)
        segment_slot[nonzero] = np.arange(1, nonzero.sum() + 1)
        return cls(segment_ids[nonzero], segment_slot)

    @property
    def n_slots(self) -> int:
        """Number of slots, U + 2."""
        return self.keys.size + 2

    @property
    def other_slot(self) -> int:
        """Slot of the pixel ids that are neither 0 nor a JSON segment id."""
        return self.keys.size + 1


def pixel_slots(pixel_ids: np.ndarray, slots: SlotMap, scale: int, dtype: type) -> np.ndarray:
    """``scale * slot`` of every id: (N,) uint32 ids -> (N,) ``dtype``.

    Ids below :data:`LUT_MAX_ID` go through a dense lookup table; larger ids (up to
    2**24) through a binary search in the image's few segment ids.
    """
    max_id = int(pixel_ids.max()) if pixel_ids.size else 0
    if max_id >= LUT_MAX_ID:
        return _searched_slots(pixel_ids, slots).astype(dtype) * dtype(scale)
    lut = np.full(max_id + 1, slots.other_slot * scale, dtype=dtype)
    lut[VOID_SLOT] = VOID_SLOT
    inside = (slots.keys >= 0) & (slots.keys <= max_id)
    lut[slots.keys[inside]] = (np.flatnonzero(inside) + 1) * scale
    return np.take(lut, pixel_ids)


def _searched_slots(pixel_ids: np.ndarray, slots: SlotMap) -> np.ndarray:
    """Slots (N,) intp of (N,) uint32 ``pixel_ids`` by binary search in ``slots.keys``."""
    result = np.full(pixel_ids.shape, slots.other_slot, dtype=np.intp)
    if slots.keys.size:
        order = np.argsort(slots.keys)
        sorted_keys = slots.keys[order]
        pos = np.searchsorted(sorted_keys, pixel_ids)
        np.minimum(pos, sorted_keys.size - 1, out=pos)
        found = sorted_keys[pos] == pixel_ids
        result[found] = order[pos[found]] + 1
    result[pixel_ids == 0] = VOID_SLOT
    return result


def pair_runs(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, ...]:
    """Maximal runs of equal (GT id, predicted id) pairs in the (N,) uint32 pixel ids.

    Returns the runs' GT ids (R,) uint32, predicted ids (R,) uint32 and lengths (R,)
    int64. Segmentation maps are long runs of one colour: R is a small fraction of N.
    """
    changed = gt_ids[1:] != gt_ids[:-1]
    changed |= pred_ids[1:] != pred_ids[:-1]
    starts = np.flatnonzero(changed)
    starts += 1
    if gt_ids.size:
        starts = np.concatenate(([0], starts))
    return gt_ids[starts], pred_ids[starts], np.diff(starts, append=gt_ids.size)


def joint_histogram(
    gt_ids: np.ndarray, gt: SlotMap, pred_ids: np.ndarray, pred: SlotMap
) -> np.ndarray:
    """Pixel counts of every (GT slot, predicted slot) pair: (R, C) int64.

    ``gt_ids`` and ``pred_ids`` are (N,) uint32. The pixels are grouped into
    :func:`pair_runs`; one ``np.bincount`` over ``gt_slot * C + pred_slot`` of the
    runs, weighted by their lengths, counts the pixels (exactly: float64 holds
    integers up to 2**53).
    """
    gt_run, pred_run, length = pair_runs(gt_ids, pred_ids)
    n_cells = gt.n_slots * pred.n_slots
    dtype = np.uint16 if n_cells <= 1 << 16 else np.uint32 if n_cells <= 1 << 32 else np.int64
    cells = pixel_slots(gt_run, gt, pred.n_slots, dtype)
    cells += pixel_slots(pred_run, pred, 1, dtype)
    counts = np.bincount(cells, weights=length, minlength=n_cells)
    return counts.astype(np.int64).reshape(gt.n_slots, pred.n_slots)


def _check_prediction(
    task: ImageTask, pred_ids: np.ndarray, pred: SlotMap, hist: np.ndarray
) -> None:
    """Raise the reference's sanity errors for one predicted image, as InputError."""
    where = f"prediction {task.pred_png} (image id {task.image_id!r})"
    if hist[:, pred.other_slot].any():
        stray = np.unique(pred_ids[~np.isin(pred_ids, pred.keys) & (pred_ids != 0)])
        raise InputError(
            f"{where}: segment id(s) {stray[:10].tolist()} are in the PNG but not in its "
            f"segments_info in {task.pred_json}"
        )
    area = hist.sum(axis=0)[pred.segment_slot]
    if (area == 0).any():
        missing = task.pred.ids[area == 0]
        raise InputError(
            f"{where}: segment id(s) {missing[:10].tolist()} of segments_info in "
            f"{task.pred_json} are not in the PNG"
        )
    unknown_cat = task.pred.category_index < 0
    if unknown_cat.any():
        seg, cat = task.pred.ids[unknown_cat][0], task.pred.category_ids[unknown_cat][0]
        raise InputError(
            f"{task.pred_json}: image id {task.image_id!r}: segment id {seg} has category_id "
            f"{cat}, which is not a category of the GT JSON"
        )


def _crowd_slot_by_category(gt: Segments, gt_slot: np.ndarray, k: int) -> np.ndarray:
    """(K,) intp: slot of the last crowd segment of each category, -1 if none."""
    crowd_slot = np.full(k, -1, dtype=np.intp)
    for i in np.flatnonzero(gt.iscrowd & (gt.category_index >= 0)):
        crowd_slot[gt.category_index[i]] = gt_slot[i]  # later segments overwrite
    return crowd_slot


def _match(task: ImageTask, hist: np.ndarray, gt_slot: np.ndarray, pred_slot: np.ndarray, k: int):
    """Vectorised TP matching, FN and FP of one image from its (R, C) histogram.

    Returns (iou (K,) float64, tp, fp, fn (K,) int64).
    """
    gt, pred = task.gt, task.pred
    inter = hist[gt_slot][:, pred_slot]  # (G, P) intersections
    pred_area = hist.sum(axis=0)[pred_slot]  # (P,) counted from the PNG
    pred_on_void = hist[VOID_SLOT, pred_slot]  # (P,) |pred ∩ GT VOID|

    candidate = (
        (inter > 0)
        & ~gt.iscrowd[:, None]
        & (gt.category_ids[:, None] == pred.category_ids[None, :])
    )
    union = ((pred_area[None, :] + gt.area[:, None]) - inter) - pred_on_void[None, :]
    iou = np.zeros(inter.shape)
    np.divide(inter, union, out=iou, where=candidate)
    matched = candidate & (iou > 0.5)
    gi, pj = np.nonzero(matched)
    tp_cat = gt.category_index[gi]
    iou_sum = np.bincount(tp_cat, weights=iou[gi, pj], minlength=k)
    tp = np.bincount(tp_cat, minlength=k)

    fn_mask = ~matched.any(axis=1) & ~gt.iscrowd & (gt.category_index >= 0)
    fn = np.bincount(gt.category_index[fn_mask], minlength=k)

    crowd_slot = _crowd_slot_by_category(gt, gt_slot, k)[pred.category_index]  # (P,)
    on_crowd = np.where(crowd_slot >= 0, hist[np.maximum(crowd_slot, 0), pred_slot], 0)
    ignored = (pred_on_void + on_crowd) / pred_area > 0.5
    fp_mask = ~matched.any(axis=0) & ~ignored
    fp = np.bincount(pred.category_index[fp_mask], minlength=k)
    return iou_sum, tp, fp, fn


def _semantic_confusion(
    task: ImageTask, hist: np.ndarray, gt: SlotMap, pred: SlotMap, k: int
) -> np.ndarray:
    """(K, K + 1) int64 semantic confusion of one image from its (R, C) histogram."""
    row_category = np.full(gt.n_slots, -1, dtype=np.int64)
    row_category[gt.segment_slot] = task.gt.category_index
    col_category = np.full(pred.n_slots, k, dtype=np.int64)
    col_category[pred.segment_slot] = task.pred.category_index
    return confusion_from_histogram(hist, row_category, col_category, k)


def evaluate_image(task: ImageTask, n_categories: int, decoder: str = "auto") -> ImageStats:
    """Decode one GT/prediction PNG pair and count its TP, FP, FN, ΣIoU and confusion."""
    gt_ids = read_panoptic_png(task.gt_png, decoder)
    pred_ids = read_panoptic_png(task.pred_png, decoder)
    if gt_ids.shape != pred_ids.shape:
        raise InputError(
            f"prediction {task.pred_png} (image id {task.image_id!r}) has size "
            f"{pred_ids.shape[::-1]}, "
            f"its GT {task.gt_png} has size {gt_ids.shape[::-1]}"
        )
    gt_ids, pred_ids = gt_ids.ravel(), pred_ids.ravel()
    gt, pred = SlotMap.of(task.gt.ids), SlotMap.of(task.pred.ids)
    hist = joint_histogram(gt_ids, gt, pred_ids, pred)
    _check_prediction(task, pred_ids, pred, hist)
    iou, tp, fp, fn = _match(task, hist, gt.segment_slot, pred.segment_slot, n_categories)
    confusion = _semantic_confusion(task, hist, gt, pred, n_categories)
    return ImageStats(iou, tp, fp, fn, confusion)


# --------------------------------------------------------------------------- all images


def build_tasks(
    gt: Mapping, gt_json: Path, gt_folder: Path, pred: Mapping, pred_json: Path, pred_folder: Path
) -> list[ImageTask]:
    """One task per GT annotation, paired with its prediction by ``image_id``."""
    index = Categories.from_gt_json(gt).index()
    predictions = _by_image_id(pred["annotations"], pred_json)
    tasks = []
    for image_id, gt_ann in _by_image_id(gt["annotations"], gt_json).items():
        pred_ann = predictions.get(image_id)
        if pred_ann is None:
            raise InputError(
                f"{pred_json}: no prediction for the image with id {image_id!r} of {gt_json}"
            )
        tasks.append(
            ImageTask(
                image_id=str(image_id),
                gt_png=gt_folder / _field(gt_ann, "file_name", gt_json),
                pred_png=pred_folder / _field(pred_ann, "file_name", pred_json),
                pred_json=pred_json,
                gt=_segments(gt_ann, index, gt_json, gt=True),
                pred=_segments(pred_ann, index, pred_json, gt=False),
            )
        )
    return tasks


def _by_image_id(annotations: Sequence[Mapping], source: Path) -> dict:
    """``{image_id: annotation}``; an image id given twice is an InputError naming
    ``source`` and the id (the reference silently keeps one of them)."""
    out: dict = {}
    for position, annotation in enumerate(annotations):
        image_id = _field(annotation, "image_id", source)
        if image_id in out:
            first = list(out).index(image_id)
            raise InputError(
                f"{source}: image id {image_id!r} is duplicated (annotations {first} and {position}); "
                "each image needs exactly one annotation"
            )
        out[image_id] = annotation
    return out


def _field(annotation: Mapping, key: str, source: Path):
    """``annotation[key]``; a missing field is an InputError naming ``source``."""
    try:
        return annotation[key]
    except (KeyError, TypeError):
        raise InputError(f"{source}: an annotation lacks the field {key!r}") from None


def _segments(annotation: Mapping, index: Mapping[int, int], source: Path, *, gt: bool) -> Segments:
    """:class:`Segments` of one annotation; a missing field is an InputError naming ``source``."""
    try:
        return Segments.from_json(annotation["segments_info"], index, gt=gt)
    except KeyError as exc:
        raise InputError(
            f"{source}: image id {annotation.get('image_id')!r}: a segment lacks the field {exc}"
        ) from None


def _image_stats(
    tasks: Sequence[ImageTask], n_categories: int, threads: int, decoder: str
) -> Iterator[ImageStats]:
    """Per-image stats in task order, from ``threads`` worker processes at most.

    Workers are *spawned* (they start clean, whatever threads or state the caller
    has), so a calling script must be importable, i.e. guard its top level with
    ``if __name__ == "__main__":``. If workers cannot start, this raises instead
    of waiting forever.
    """
    work = functools.partial(evaluate_image, n_categories=n_categories, decoder=decoder)
    processes = min(threads, len(tasks))
    if processes <= 1:
        yield from map(work, tasks)
        return
    context = multiprocessing.get_context("spawn")
    chunksize = max(1, len(tasks) // (8 * processes))
    pool = ProcessPoolExecutor(max_workers=processes, mp_context=context)
    try:
        yield from pool.map(work, tasks, chunksize=chunksize)
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "panoptic evaluation workers died; with threads > 1 the main module of the "
            "calling program must be importable (guard it with if __name__ == '__main__')"
        ) from exc
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error: skip pending images


def accumulate(
    tasks: Sequence[ImageTask],
    n_categories: int,
    *,
    threads: int = 1,
    decoder: str = "auto",
    per_image: list[ImageStats] | None = None,
) -> ImageStats:
    """Sum the per-image stats of ``tasks`` (in task order, whatever ``threads``);
    each image's own stats are appended to ``per_image`` when it is a list."""
    total = ImageStats.zeros(n_categories)
    for stats in _image_stats(tasks, n_categories, threads, decoder):
        total += stats
        if per_image is not None:
            per_image.append(stats)
    return total


# --------------------------------------------------------------------------- averages


def _class_metrics(iou: float, tp: int, fp: int, fn: int) -> dict[str, float]:
    """PQ, SQ, RQ of one class, with the reference's formulas and operation order."""
    if tp + fp + fn == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    denominator = tp + 0.5 * fp + 0.5 * fn
    return {"pq": iou / denominator, "sq": iou / tp if tp != 0 else 0.0, "rq": tp / denominator}


def _group_average(
    per_class: Mapping[int, dict], present: Mapping[int, bool], members: Iterable[int]
) -> dict:
    """Mean pq, sq, rq over the ``members`` classes that are ``present``; None if n = 0."""
    chosen = [per_class[c] for c in members if present[c]]
    n = len(chosen)
    if n == 0:
        return {"pq": None, "sq": None, "rq": None, "n": 0}
    sums = {key: 0 for key in ("pq", "sq", "rq")}
    for metrics in chosen:
        for key in sums:
            sums[key] += metrics[key]
    return {"pq": sums["pq"] / n, "sq": sums["sq"] / n, "rq": sums["rq"] / n, "n": n}


def _split_members(split: Mapping, key: str, categories: Categories) -> list[int]:
    """GT category ids (GT order) listed under ``split[key]``."""
    if key not in split:
        raise InputError(f"split has no {key!r} list")
    wanted = {int(i) for i in split[key]}
    return [c for c in categories.ids if c in wanted]


def group_members(categories: Categories, split: Mapping | None = None) -> dict[str, list[int]]:
    """Category ids (GT order) of each group: All, Things, Stuff, and In / Out of a split."""
    groups = {
        "All": list(categories.ids),
        "Things": [c for c, t in zip(categories.ids, categories.isthing) if t],
        "Stuff": [c for c, t in zip(categories.ids, categories.isthing) if not t],
    }
    if split is not None:
        groups["In"] = _split_members(split, "in_ids", categories)
        groups["Out"] = _split_members(split, "out_ids", categories)
    return groups


def group_metrics(
    per_class: Mapping[int, dict],
    present: Mapping[int, bool],
    categories: Categories,
    split: Mapping | None = None,
) -> dict:
    """Groups ``All``, ``Things``, ``Stuff`` (and ``In``, ``Out`` with a ``split``) of
    per-class results: each the mean pq, sq, rq over its classes that are ``present``
    (TP + FP + FN > 0), in ``categories`` order."""
    return {
        group: _group_average(per_class, present, members)
        for group, members in group_members(categories, split).items()
    }


def summarize(total: ImageStats, categories: Categories, split: Mapping | None = None) -> dict:
    """The results dict (see the module docstring) from accumulated stats."""
    per_class, present, counts = {}, {}, {}
    for k, cat_id in enumerate(categories.ids):
        iou, tp, fp, fn = float(total.iou[k]), int(total.tp[k]), int(total.fp[k]), int(total.fn[k])
        per_class[cat_id] = _class_metrics(iou, tp, fp, fn)
        present[cat_id] = tp + fp + fn > 0
        counts[str(cat_id)] = {"tp": tp, "fp": fp, "fn": fn}
    return {
        **group_metrics(per_class, present, categories, split),
        "per_class": {str(c): per_class[c] for c in categories.ids},
        "counts": counts,
        "semantic": semantic_metrics(total.confusion, categories.ids),
    }


def evaluate_panoptic(gt_json: Path, gt_folder: Path, pred_json: Path, pred_folder: Path, **options) -> dict:
    """Evaluate COCO-panoptic predictions against GT; returns the results dict.

    ``options`` (``split``, ``threads``, ``decoder``) as :func:`evaluate_panoptic_images`.
    """
    return evaluate_panoptic_images(gt_json, gt_folder, pred_json, pred_folder, **options)[0]


def evaluate_panoptic_images(
    gt_json: Path,
    gt_folder: Path,
    pred_json: Path,
    pred_folder: Path,
    *,
    split: Mapping | None = None,
    threads: int = 1,
    decoder: str = "auto",
) -> tuple[dict, PerImageStats]:
    """Evaluate COCO-panoptic predictions against GT: the results dict and the
    :class:`PerImageStats` its sums come from.

    ``split`` is the content of a ``split.json`` (adds the ``In`` and ``Out`` groups);
    ``threads`` is the maximum number of worker processes (1: no pool); ``decoder``
    picks the PNG decoder (see :mod:`vocabseg.data.panoptic_png`; all give the same ids).
    """
    if not isinstance(threads, int) or threads < 1:
        raise InputError(f"threads must be a positive integer, got {threads!r}")
    if decoder not in DECODERS:
        raise ValueError(f"unknown PNG decoder {decoder!r}; choose one of {DECODERS}")
    gt_json, gt_folder, pred_json, pred_folder = map(
        Path, (gt_json, gt_folder, pred_json, pred_folder)
    )
    for folder in (gt_folder, pred_folder):
        if not folder.is_dir():
            raise InputError(f"panoptic PNG folder {folder} does not exist")
    gt, pred = read_json(gt_json), read_json(pred_json)
    _require_lists(gt, ("categories", "annotations"), gt_json)
    _require_lists(pred, ("annotations",), pred_json)
    try:
        categories = Categories.from_gt_json(gt)
    except (KeyError, TypeError) as exc:
        raise InputError(f"{gt_json}: malformed 'categories' entry (missing {exc})") from None
    tasks = build_tasks(gt, gt_json, gt_folder, pred, pred_json, pred_folder)
    images: list[ImageStats] = []
    total = accumulate(tasks, len(categories.ids), threads=threads, decoder=decoder, per_image=images)
    per_image = PerImageStats.of_images(
        [t.image_id for t in tasks], categories, group_members(categories, split), images
    )
    return summarize(total, categories, split), per_image


def _require_lists(data: object, keys: Sequence[str], source: Path) -> None:
    """InputError naming ``source`` unless ``data`` maps every key to a list."""
    for key in keys:
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise InputError(f"{source}: expected a COCO-panoptic JSON with a {key!r} list")


def write_metrics(results: dict, out: Path) -> None:
    """Write ``results`` as sorted, indented JSON to ``out`` (atomically)."""
    write_json_atomic(results, out)
