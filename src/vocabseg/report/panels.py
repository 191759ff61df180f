"""Qualitative panels: the photo, its ground truth and each approach's prediction.

One PNG per validation image, ``panel_<image_id>.png``: a grid of cells read left to
right, top to bottom: the photo, the ground-truth overlay, then one overlay per
approach in the order given, each cell titled. The numbers of the results table say
*how much* an approach loses on the out-of-vocabulary classes; the panels show
*where* (a car painted as road, a person missing).

Overlay of a panoptic segmentation on its photo (:func:`overlay`):

* every segment gets the colour of its category in the study's label set;
  segments of thing categories (``has_instances``) are shifted in brightness so that
  adjacent instances differ: within each category, the instances are ranked by their
  first pixel in raster order and instance ``k`` gets ``t = JITTER[k % len(JITTER)]``,
  colour ``c + t (255 - c)`` for ``t >= 0`` (towards white) and ``c (1 + t)`` for
  ``t < 0`` (towards black). The rank does not depend on the segment ids, so two
  segmentations with the same segments (whatever their ids) look the same, and a
  prediction equal to the ground truth gives exactly the ground-truth overlay;
* segment pixels are alpha-blended: ``out = round((1 - alpha) photo + alpha colour)``;
  VOID (id 0, or an id the JSON does not list) keeps the photo;
* boundary pixels (a 4-neighbour in the image has another id) are painted
  ``BOUNDARY`` opaque.

The cells are drawn 1:1 (``Figure.figimage``, no resampling) on a matplotlib Agg
figure of exactly the grid's pixel size; photos wider than ``max_width`` are first
downscaled (photo bilinear, ids nearest), so a 2048-pixel Cityscapes image gives a
readable file of moderate size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from vocabseg.data.labelset import LabelSet  # noqa: E402
from vocabseg.data.photos import photo_path  # noqa: E402
from vocabseg.data.panoptic_png import read_panoptic_png  # noqa: E402
from vocabseg.errors import InputError  # noqa: E402
from vocabseg.fileio import atomic_path, read_json  # noqa: E402

__all__ = [
    "Prediction",
    "JITTER",
    "BOUNDARY",
    "GAP",
    "TITLE_PX",
    "segment_colors",
    "overlay",
    "compose_panel",
    "write_panels",
]

JITTER = (0.0, 0.35, -0.35, 0.2, -0.2, 0.5, -0.5, 0.1, -0.1)  # brightness shift of instance k
BOUNDARY = (255, 255, 255)  # segment boundaries, opaque
GAP = 4  # pixels between cells and around the grid
TITLE_PX = 18  # pixel rows above each cell for its title
DPI = 100


@dataclass(frozen=True)
class Prediction:
    """One approach's predictions: its name (the cell title) and COCO-panoptic files."""

    name: str
    json: Path
    folder: Path


# --------------------------------------------------------------------------- overlay


def _shade(color: Sequence[int], t: float) -> tuple[int, int, int]:
    """``c + t (255 - c)`` for ``t >= 0``, ``c (1 + t)`` for ``t < 0``, rounded per channel."""
    c = np.asarray(color, dtype=np.float64)
    shaded = c + t * (255.0 - c) if t >= 0 else c * (1.0 + t)
    return tuple(int(v) for v in np.rint(shaded))


def segment_colors(
    ids: np.ndarray, categories: Mapping[int, int], labels: LabelSet | None = None
) -> dict[int, tuple[int, int, int]]:
    """Colour of every listed segment present in ``ids``.

    Args:
        ids: (H, W) segment ids.
        categories: segment id -> label id (``category_id``).
        labels: the dataset's label set (None: Cityscapes).

    Returns:
        segment id -> RGB; stuff segments get their category's colour, the instances
        of a thing category the shades of :data:`JITTER` by first-pixel rank.
    """
    present, first = np.unique(ids.ravel(), return_index=True)
    labels = labels or LabelSet.cityscapes()
    rank_in_category: dict[int, int] = {}
    colors = {}
    for sid, _ in sorted(zip(present.tolist(), first.tolist()), key=lambda p: p[1]):
        if sid == 0 or sid not in categories:
            continue  # VOID or unlisted
        label = labels.by_id.get(int(categories[sid]))
        if label is None:
            raise InputError(f"segment {sid}: unknown {labels.dataset} category_id {categories[sid]}")
        if label.isthing:
            k = rank_in_category.get(label.id, 0)
            rank_in_category[label.id] = k + 1
            colors[sid] = _shade(label.color, JITTER[k % len(JITTER)])
        else:
            colors[sid] = tuple(label.color)
    return colors


def boundaries(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another segment id."""
    edge = np.zeros(ids.shape, dtype=bool)
    horizontal = ids[:, 1:] != ids[:, :-1]
    vertical = ids[1:, :] != ids[:-1, :]
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    edge[1:, :] |= vertical
    edge[:-1, :] |= vertical
    return edge


def overlay(
    photo: np.ndarray,
    ids: np.ndarray,
    categories: Mapping[int, int],
    alpha: float = 0.6,
    labels: LabelSet | None = None,
) -> np.ndarray:
    """A panoptic segmentation drawn over its photo (see the module docstring).

    Args:
        photo: (H, W, 3) uint8.
        ids: (H, W) segment ids.
        categories: segment id -> category_id; ids not in it are VOID.
        alpha: opacity of the segment colours, in [0, 1].
        labels: the dataset's label set (None: Cityscapes).

    Returns:
        (H, W, 3) uint8.
    """
    if photo.shape[:2] != ids.shape:
        raise ValueError(f"photo {photo.shape[:2]} and segment ids {ids.shape} differ in size")
    colors = segment_colors(ids, categories, labels)
    present, index = np.unique(ids, return_inverse=True)
    index = index.reshape(ids.shape)
    table = np.zeros((len(present), 3), dtype=np.float64)
    listed = np.zeros(len(present), dtype=bool)
    for k, sid in enumerate(present.tolist()):
        if sid in colors:
            table[k], listed[k] = colors[sid], True
    out = photo.astype(np.float64)
    blend = (1.0 - alpha) * out + alpha * table[index]
    out = np.where(listed[index][..., None], blend, out)
    out = np.rint(out).astype(np.uint8)
    out[boundaries(ids)] = BOUNDARY
    return out


# --------------------------------------------------------------------------- panel


def _grid(count: int, columns: int) -> tuple[int, int]:
    """(rows, columns) of a grid of ``count`` cells, at most ``columns`` wide."""
    cols = max(1, min(columns, count))
    return math.ceil(count / cols), cols


def compose_panel(cells: Sequence[tuple[str, np.ndarray]], out: Path, columns: int = 3) -> tuple[int, int]:
    """Draw titled (H, W, 3) uint8 cells 1:1 in a grid and save it as a PNG.

    The PNG is ``cols W + (cols + 1) GAP`` pixels wide and
    ``rows (H + TITLE_PX) + (rows + 1) GAP`` high, with ``cols = min(columns, n)``
    and ``rows = ceil(n / cols)``. Cell ``i`` sits in row ``i // cols``, column
    ``i % cols``; its image starts at pixel ``(GAP + r (H + TITLE_PX + GAP) + TITLE_PX,
    GAP + c (W + GAP))`` (row, column). Returns the (width, height) in pixels.
    """
    h, w = cells[0][1].shape[:2]
    rows, cols = _grid(len(cells), columns)
    width = cols * w + (cols + 1) * GAP
    height = rows * (h + TITLE_PX) + (rows + 1) * GAP
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    for i, (title, image) in enumerate(cells):
        r, c = divmod(i, cols)
        top = GAP + r * (h + TITLE_PX + GAP) + TITLE_PX  # first image row, from the top
        left = GAP + c * (w + GAP)
        fig.figimage(image, xo=left, yo=height - top - h, origin="upper")
        fig.text(
            (left + w / 2) / width, (height - top + TITLE_PX / 2) / height, title,
            ha="center", va="center", fontsize=9, clip_on=True,
        )
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", facecolor="white")
    plt.close(fig)
    return width, height


# --------------------------------------------------------------------------- files


def _annotations_by_image(data: dict, path: Path) -> dict[str, dict]:
    """image_id -> annotation of a COCO-panoptic JSON; InputError naming ``path``."""
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, list):
        raise InputError(f"{path}: panoptic JSON without an 'annotations' list")
    try:
        return {str(a["image_id"]): a for a in annotations}
    except (KeyError, TypeError):
        raise InputError(f"{path}: an annotation without 'image_id'") from None


def _segmentation(ann: dict, folder: Path, json_path: Path, labels: LabelSet) -> tuple[np.ndarray, dict[int, int]]:
    """(H, W) ids and segment id -> category_id of one annotation."""
    try:
        categories = {int(s["id"]): int(s["category_id"]) for s in ann["segments_info"]}
        png = Path(folder) / ann["file_name"]
    except (KeyError, TypeError, ValueError):
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        raise InputError(f"{json_path}: annotation of {image_id!r} lacks file_name or segments_info") from None
    unknown = sorted(set(categories.values()) - set(labels.by_id))
    if unknown:
        raise InputError(f"{json_path}: image {ann['image_id']!r} has unknown {labels.dataset} category_id {unknown[0]}")
    return read_panoptic_png(png).astype(np.int64), categories


def _photo(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 photo at ``path``."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError as exc:
        raise InputError(f"cannot read photo {path}: {exc}") from None


def _downscale(photo: np.ndarray, segs: list[np.ndarray], max_width: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Shrink the photo (bilinear) and id maps (nearest) to at most ``max_width`` wide."""
    h, w = photo.shape[:2]
    if w <= max_width:
        return photo, segs
    new_w, new_h = max_width, max(1, round(h * max_width / w))
    small = np.asarray(Image.fromarray(photo).resize((new_w, new_h), Image.BILINEAR))
    rows = ((np.arange(new_h) + 0.5) * h / new_h).astype(np.int64)  # pixel centres, nearest
    cols = ((np.arange(new_w) + 0.5) * w / new_w).astype(np.int64)
    return small, [s[rows][:, cols] for s in segs]


def write_panels(
    gt_json: Path,
    gt_folder: Path,
    image_root: Path,
    predictions: Sequence[Prediction],
    out_dir: Path,
    *,
    count: int = 3,
    columns: int = 3,
    max_width: int = 512,
    alpha: float = 0.6,
    labels: LabelSet | None = None,
) -> list[Path]:
    """Write ``panel_<image_id>.png`` for the first ``count`` images of ``gt_json``.

    Args:
        gt_json, gt_folder: prepared validation ground truth (COCO-panoptic JSON with
            an ``images`` list, and its PNG folder).
        image_root: the ``leftImg8bit/<split>`` folder (:func:`~vocabseg.data.photos.photo_path`).
        predictions: the approaches to show, in this order.
        out_dir: created if missing.
        count: number of images, taken in the order of the JSON's ``images`` list.
        columns: cells per grid row.
        max_width: cells wider than this are downscaled to it.
        alpha: opacity of the segment colours.
        labels: the dataset's label set (None: Cityscapes).

    Returns:
        The written PNG paths, in image order.
    """
    labels = labels or LabelSet.cityscapes()
    if count < 1 or columns < 1 or max_width < 1:
        raise InputError(f"panels: --count, --columns and --max-width must be >= 1, got {count}, {columns}, {max_width}")
    gt = read_json(gt_json)
    images = gt.get("images") if isinstance(gt, dict) else None
    if not isinstance(images, list) or not images:
        raise InputError(f"{gt_json}: panoptic JSON without a non-empty 'images' list")
    gt_anns = _annotations_by_image(gt, Path(gt_json))
    pred_anns = [_annotations_by_image(read_json(p.json), Path(p.json)) for p in predictions]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for image in images[:count]:
        image_id = str(image["id"])
        if image_id not in gt_anns:
            raise InputError(f"{gt_json}: no annotation for image {image_id!r}")
        segs = [_segmentation(gt_anns[image_id], gt_folder, Path(gt_json), labels)]
        for pred, anns in zip(predictions, pred_anns):
            if image_id not in anns:
                raise InputError(f"{pred.json}: no prediction for image {image_id!r} ({pred.name})")
            segs.append(_segmentation(anns[image_id], pred.folder, Path(pred.json), labels))
        photo = _photo(photo_path(image_root, image_id, image))
        for (ids, _), name in zip(segs, ["ground truth", *(p.name for p in predictions)]):
            if ids.shape != photo.shape[:2]:
                raise InputError(
                    f"{name} of {image_id}: segmentation {ids.shape[1]}x{ids.shape[0]} but photo "
                    f"{photo.shape[1]}x{photo.shape[0]} (width x height)"
                )
        small, id_maps = _downscale(photo, [ids for ids, _ in segs], max_width)
        cells = [("photo", small), ("ground truth", overlay(small, id_maps[0], segs[0][1], alpha, labels))]
        cells += [
            (p.name, overlay(small, ids, cats, alpha, labels))
            for p, ids, (_, cats) in zip(predictions, id_maps[1:], segs[1:])
        ]
        path = out_dir / f"panel_{image_id}.png"
        compose_panel(cells, path, columns)
        written.append(path)
    return written
