"""Synthetic Cityscapes-like panoptic ground truth and predictions.

Used by the tests and the benchmark of :mod:`vocabseg.evaluation.panoptic`; nothing
in the pipeline itself depends on it.

The ground truth mimics what ``csCreatePanopticImgs`` writes (label ids, not train
ids):

* a stuff segment has id = label id (road = 7) and ``iscrowd`` 0;
* a thing instance has id = ``label_id * 1000 + k`` and ``iscrowd`` 0;
* a crowd group (e.g. "cargroup") has id = label id of a thing class and ``iscrowd`` 1;
* pixels of classes ignored in evaluation (ego vehicle, parking, caravan, ...) are 0
  (VOID) and have no segment;
* the JSON lists all 19 evaluated classes as ``categories`` (id, name, color,
  supercategory, isthing) and gives every segment its ``area`` and ``bbox``.

Predictions are derived from the ground truth with the kinds of errors a real model
makes: small shifts, segments that match poorly (cut in two), wrong classes, merged
instances, VOID holes, whole segments predicted as VOID, segments on crowd and on
VOID regions, classes that have no ground truth in the image, and optionally images
predicted entirely as VOID. Predicted segment ids are either small consecutive
integers or random 24-bit integers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vocabseg.data.labelset import LabelSet

__all__ = [
    "SyntheticDataset",
    "make_gt_ids",
    "make_prediction_ids",
    "ids_to_rgb",
    "gt_segments_info",
    "write_dataset",
]

# the evaluator tests' data is labelled as Cityscapes
_CITYSCAPES = LabelSet.cityscapes()
THING_IDS, STUFF_IDS = _CITYSCAPES.thing_ids, _CITYSCAPES.stuff_ids
# label ids that createPanopticImgs leaves as VOID (ignoreInEval), drawn as clutter
_VOID_LABELS = (1, 4, 5, 9, 14, 29, 30)
# rough Cityscapes frequencies of the thing classes (person, rider, car, truck, bus,
# train, motorcycle, bicycle): trains and buses are rare, cars and persons common
_THING_WEIGHTS = np.array([0.30, 0.06, 0.37, 0.04, 0.03, 0.02, 0.05, 0.13])


@dataclass(frozen=True)
class SyntheticDataset:
    """Paths of one written GT/prediction pair of COCO-panoptic datasets."""

    gt_json: Path
    gt_folder: Path
    pred_json: Path
    pred_folder: Path
    image_ids: tuple[str, ...]


def _random_polygon(rng: np.random.Generator, cx: float, cy: float, rx: float, ry: float) -> list:
    """A star-shaped polygon around (cx, cy) with radii about (rx, ry); list of (x, y)."""
    n = int(rng.integers(5, 12))
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    scale = rng.uniform(0.6, 1.0, n)
    return [
        (float(cx + rx * s * np.cos(a)), float(cy + ry * s * np.sin(a)))
        for a, s in zip(angles, scale)
    ]


def _draw_polygon(draw: ImageDraw.ImageDraw, rng, h: int, w: int, value: int, size: float) -> None:
    """Draw one random polygon of relative ``size`` filled with ``value``."""
    cx, cy = rng.uniform(0, w), rng.uniform(0.3 * h, h)
    rx = max(2.0, size * w * rng.uniform(0.5, 1.5))
    ry = max(2.0, size * h * rng.uniform(0.5, 1.5))
    draw.polygon(_random_polygon(rng, cx, cy, rx, ry), fill=value)


def _draw_stuff(draw: ImageDraw.ImageDraw, rng: np.random.Generator, h: int, w: int) -> None:
    """Paint a street-scene layout of stuff label ids (and VOID clutter) into ``draw``."""
    horizon = int(h * rng.uniform(0.35, 0.5))
    draw.rectangle([0, 0, w, h], fill=23)  # sky
    x = 0
    while x < w:  # facade band: buildings, vegetation, walls, fences
        step = int(w * rng.uniform(0.05, 0.25))
        label = int(rng.choice([11, 11, 11, 21, 21, 12, 13]))
        top = int(h * rng.uniform(0.02, 0.3))
        draw.rectangle([x, top, x + step, horizon + int(0.1 * h)], fill=label)
        x += step
    road_top = horizon + int(0.05 * h)
    draw.polygon([(0, h), (w, h), (int(0.6 * w), road_top), (int(0.4 * w), road_top)], fill=7)
    draw.polygon([(0, h), (0, road_top), (int(0.4 * w), road_top), (int(0.1 * w), h)], fill=8)
    draw.polygon([(w, h), (w, road_top), (int(0.6 * w), road_top), (int(0.9 * w), h)], fill=22)
    for _ in range(int(rng.integers(2, 6))):  # poles with signs and lights
        px = int(rng.uniform(0, w))
        pw = max(1, int(w * 0.004))
        draw.rectangle([px, int(h * 0.1), px + pw, horizon + int(0.15 * h)], fill=17)
        sign = int(rng.choice([19, 20]))
        draw.rectangle([px - 3 * pw, int(h * 0.15), px + 4 * pw, int(h * 0.22)], fill=sign)
    for _ in range(int(rng.integers(1, 5))):  # VOID clutter (static, parking, caravan, ...)
        _draw_polygon(draw, rng, h, w, int(rng.choice(_VOID_LABELS)), 0.05)
    draw.rectangle([0, int(h * 0.93), w, h], fill=1)  # ego vehicle


def make_gt_ids(
    rng: np.random.Generator, height: int, width: int, *, things: bool = True, crowd: bool = True
) -> np.ndarray:
    """Random Cityscapes-like panoptic GT. Returns (H, W) uint32 segment ids.

    VOID labels are already mapped to 0; thing instances are ``label*1000+k``, crowd
    groups are the bare thing label id.
    """
    canvas = Image.new("I", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    _draw_stuff(draw, rng, height, width)
    if things:
        counters = {label: 0 for label in THING_IDS}
        for _ in range(int(rng.integers(5, 25))):
            label = int(rng.choice(THING_IDS, p=_THING_WEIGHTS))
            value = label * 1000 + counters[label]
            counters[label] += 1
            _draw_polygon(draw, rng, height, width, value, rng.uniform(0.01, 0.08))
        if crowd:
            for _ in range(int(rng.integers(1, 4))):
                _draw_polygon(draw, rng, height, width, int(rng.choice(THING_IDS)), 0.1)
    ids = np.asarray(canvas, dtype=np.int64)
    void = np.isin(ids, _VOID_LABELS)
    ids[void] = 0
    return ids.astype(np.uint32)


def _category_of(seg_id: int) -> int:
    """Category (label id) of a GT segment id written by createPanopticImgs."""
    return seg_id if seg_id < 1000 else seg_id // 1000


def gt_segments_info(ids: np.ndarray) -> list[dict]:
    """``segments_info`` for a GT id map (H, W) uint32, with area and bbox."""
    counts = np.bincount(ids.ravel())
    segments = []
    for seg_id in np.flatnonzero(counts):
        if seg_id == 0:
            continue
        mask = ids == seg_id
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        category = _category_of(int(seg_id))
        segments.append(
            {
                "id": int(seg_id),
                "category_id": category,
                "area": int(counts[seg_id]),
                "bbox": [
                    int(cols[0]),
                    int(rows[0]),
                    int(cols[-1] - cols[0] + 1),
                    int(rows[-1] - rows[0] + 1),
                ],
                "iscrowd": int(seg_id < 1000 and category in THING_IDS),
            }
        )
    return segments


def _bbox_mask(ids: np.ndarray, seg_id: int) -> tuple[slice, slice] | None:
    """Bounding-box slices (rows, cols) of ``seg_id`` in ``ids``, None if absent."""
    mask = ids == seg_id
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


class _PredictionBuilder:
    """Derives a prediction key map from GT ids; keys map to categories."""

    def __init__(self, rng: np.random.Generator, gt_ids: np.ndarray, segments: list[dict]):
        self.rng = rng
        self.gt_ids = gt_ids
        self.h, self.w = gt_ids.shape
        self.category = {s["id"]: s["category_id"] for s in segments}
        self.crowd = [s["id"] for s in segments if s["iscrowd"]]
        self.next_key = 1 << 20
        shift = max(1, min(self.h, self.w) // 200)
        dy, dx = (int(v) for v in rng.integers(-shift, shift + 1, 2))
        self.keys = np.roll(gt_ids.astype(np.int64), (dy, dx), axis=(0, 1))

    def new_key(self, category: int) -> int:
        """A fresh prediction key of ``category``."""
        self.next_key += 1
        self.category[self.next_key] = category
        return self.next_key

    def segments(self, kind: str) -> list[int]:
        """Non-crowd GT segment ids of ``kind`` ("thing" or "stuff")."""
        wanted = THING_IDS if kind == "thing" else STUFF_IDS
        return [
            k
            for k, c in self.category.items()
            if c in wanted and k < (1 << 20) and k not in self.crowd
        ]

    def wrong_class(self, seg_id: int) -> None:
        """Predict GT segment ``seg_id`` with another class of the same kind."""
        pool = THING_IDS if self.category[seg_id] in THING_IDS else STUFF_IDS
        other = int(self.rng.choice([c for c in pool if c != self.category[seg_id]]))
        self.keys[self.keys == seg_id] = self.new_key(other)

    def cut(self, seg_id: int) -> None:
        """Cut a segment in two halves of the same class (poor matches)."""
        box = _bbox_mask(self.keys, seg_id)
        if box is None:
            return
        rows, cols = box
        half = np.zeros_like(self.keys, dtype=bool)
        half[rows, cols.start + (cols.stop - cols.start) // 2 : cols.stop] = True
        self.keys[half & (self.keys == seg_id)] = self.new_key(self.category[seg_id])

    def merge(self, a: int, b: int) -> None:
        """Predict two instances as one segment."""
        self.keys[self.keys == b] = a

    def to_void(self, seg_id: int) -> None:
        """Predict a whole segment as VOID (a false negative)."""
        self.keys[self.keys == seg_id] = 0

    def draw(self, value_or_category: int, size: float, *, void: bool = False, box=None) -> None:
        """Draw a random polygon: a VOID hole or a new segment of a category."""
        value = 0 if void else self.new_key(value_or_category)
        canvas = Image.new("L", (self.w, self.h), 0)
        d = ImageDraw.Draw(canvas)
        if box is None:
            _draw_polygon(d, self.rng, self.h, self.w, 1, size)
        else:
            rows, cols = box
            cx = self.rng.uniform(cols.start, cols.stop)
            cy = self.rng.uniform(rows.start, rows.stop)
            rx, ry = (cols.stop - cols.start) * size, (rows.stop - rows.start) * size
            d.polygon(_random_polygon(self.rng, cx, cy, rx + 1, ry + 1), fill=1)
        self.keys[np.asarray(canvas, dtype=bool)] = value

    def over_void(self, category: int) -> None:
        """A new segment inside the GT VOID band at the bottom (the ego vehicle)."""
        top = int(self.h * 0.94)
        if top >= self.h - 1:
            return
        x0 = int(self.rng.integers(0, max(1, self.w - 4)))
        x1 = min(self.w, x0 + max(2, int(self.w * self.rng.uniform(0.02, 0.2))))
        self.keys[top:, x0:x1] = self.new_key(category)

    def fill_void(self, seg_id: int) -> None:
        """Let GT segment ``seg_id`` also cover the VOID pixels of the prediction."""
        self.keys[self.keys == 0] = seg_id

    def on_crowd(self, crowd_id: int, same_class: bool) -> None:
        """A predicted segment over a crowd region, of the crowd's class or not."""
        box = _bbox_mask(self.gt_ids, crowd_id)
        if box is None:
            return
        category = self.category[crowd_id]
        if not same_class:
            category = int(self.rng.choice([c for c in THING_IDS if c != category]))
        self.draw(category, 0.4, box=box)


def make_prediction_ids(
    rng: np.random.Generator,
    gt_ids: np.ndarray,
    segments: list[dict],
    *,
    things: bool = True,
    empty: bool = False,
    large_ids: bool = False,
) -> tuple[np.ndarray, list[dict]]:
    """A prediction for GT ``gt_ids`` (H, W) uint32. Returns ((H, W) uint32 ids, segments_info).

    ``things=False`` predicts no thing class at all; ``empty=True`` predicts only VOID;
    ``large_ids`` draws random 24-bit segment ids instead of small consecutive ones.
    """
    if empty:
        return np.zeros_like(gt_ids, dtype=np.uint32), []
    b = _PredictionBuilder(rng, gt_ids, segments)
    things_ids, stuff_ids = b.segments("thing"), b.segments("stuff")
    for seg_id in things_ids + stuff_ids:
        u = rng.uniform()
        if u < 0.12:
            b.wrong_class(seg_id)
        elif u < 0.22:
            b.cut(seg_id)
        elif u < 0.27:
            b.to_void(seg_id)
    if len(things_ids) >= 2 and rng.uniform() < 0.7:
        a, c = rng.choice(things_ids, 2, replace=False)
        b.merge(int(a), int(c))
    for crowd_id in b.crowd:
        b.on_crowd(crowd_id, same_class=bool(rng.uniform() < 0.7))
    extra_pool = list(STUFF_IDS) + (list(THING_IDS) if things else [])
    for _ in range(int(rng.integers(1, 5))):  # spurious segments, often of absent classes
        b.draw(int(rng.choice(extra_pool)), rng.uniform(0.01, 0.06))
    if 7 in b.category and rng.uniform() < 0.3:  # road predicted over the ego vehicle
        b.fill_void(7)
    for _ in range(int(rng.integers(0, 3))):  # segments lying mostly on GT VOID
        b.over_void(int(rng.choice(extra_pool)))
    for _ in range(int(rng.integers(0, 4))):  # VOID holes
        b.draw(0, rng.uniform(0.01, 0.05), void=True)
    if not things:
        thing_keys = [k for k, c in b.category.items() if c in THING_IDS]
        b.keys[np.isin(b.keys, thing_keys)] = 0
    return _relabel(rng, b.keys, b.category, large_ids)


def _relabel(
    rng, keys: np.ndarray, category: dict, large_ids: bool
) -> tuple[np.ndarray, list[dict]]:
    """Give every key of ``keys`` (H, W) int64 a fresh segment id; returns (ids uint32, info)."""
    present = np.unique(keys)
    present = present[present != 0]
    if large_ids:
        new = rng.choice(np.arange(1, 1 << 24, 997), size=present.size, replace=False)
    else:
        new = rng.permutation(present.size) + 1
    out = np.zeros(keys.shape, dtype=np.uint32)
    if present.size:
        pos = np.searchsorted(present, keys)
        pos = np.minimum(pos, present.size - 1)
        hit = present[pos] == keys
        out[hit] = new[pos[hit]]
    info = [{"id": int(i), "category_id": int(category[int(k)])} for k, i in zip(present, new)]
    order = rng.permutation(len(info))
    return out, [info[i] for i in order]


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO-panoptic encoding, id = R + 256 G + 256² B: (H, W) uint32 -> (H, W, 3) uint8."""
    ids = ids.astype(np.uint32)
    return np.stack([ids & 255, (ids >> 8) & 255, (ids >> 16) & 255], axis=-1).astype(np.uint8)


def _write_png(ids: np.ndarray, path: Path) -> None:
    """Write ids (H, W) uint32 as a COCO-panoptic RGB PNG."""
    Image.fromarray(ids_to_rgb(ids), mode="RGB").save(path)


def write_dataset(
    root: Path,
    *,
    n_images: int = 4,
    height: int = 64,
    width: int = 128,
    seed: int = 0,
    things: bool = True,
    empty_images: int = 0,
    large_ids: bool = False,
) -> SyntheticDataset:
    """Write ``n_images`` GT/prediction pairs under ``root``; returns their paths.

    The first ``empty_images`` predictions are VOID only. With ``things=False`` neither
    GT nor predictions contain any thing segment (the "Things" group is then empty).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    gt_folder, pred_folder = root / "gt", root / "pred"
    gt_folder.mkdir(parents=True, exist_ok=True)
    pred_folder.mkdir(parents=True, exist_ok=True)
    images, gt_anns, pred_anns = [], [], []
    for i in range(n_images):
        image_id = f"synth_{seed:06d}_{i:06d}"
        gt_ids = make_gt_ids(rng, height, width, things=things)
        segments = gt_segments_info(gt_ids)
        pred_ids, pred_segments = make_prediction_ids(
            rng, gt_ids, segments, things=things, empty=i < empty_images, large_ids=large_ids
        )
        gt_name, pred_name = f"{image_id}_gtFine_panoptic.png", f"{image_id}_pred.png"
        _write_png(gt_ids, gt_folder / gt_name)
        _write_png(pred_ids, pred_folder / pred_name)
        images.append(
            {
                "id": image_id,
                "file_name": f"{image_id}_leftImg8bit.png",
                "width": width,
                "height": height,
            }
        )
        gt_anns.append({"image_id": image_id, "file_name": gt_name, "segments_info": segments})
        pred_anns.append(
            {"image_id": image_id, "file_name": pred_name, "segments_info": pred_segments}
        )
    gt_json, pred_json = root / "gt.json", root / "pred.json"
    gt_json.write_text(
        json.dumps({"images": images, "annotations": gt_anns, "categories": _CITYSCAPES.categories()})
    )
    pred_json.write_text(json.dumps({"annotations": pred_anns}))
    return SyntheticDataset(
        gt_json, gt_folder, pred_json, pred_folder, tuple(im["id"] for im in images)
    )
