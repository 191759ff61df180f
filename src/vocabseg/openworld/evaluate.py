"""Evaluation of an exported ContMAV model on a labelled split (open-world metrics).

For every image (batch 1, whole image, optionally resized to ``size`` first: the
paper evaluates at 512x1024, :data:`PAPER_EVAL_SIZE`, the workflow's default), on
``device`` (default: the job's GPU when there is one, as the trainer picks it), the exported network gives the semantic
logits and contrastive features; :func:`~vocabseg.openworld.inference.contmav_scores`
turns them, with the exported MAV statistics, into the closed-world prediction, the
unknown score ``s_unk`` (the anomaly score), the unknown mask (``s_unk > delta``) and
the most similar known class; :func:`discover_classes_strided` clusters the unknown
pixels into new classes (the paper's online rule over the split, in image order, on a
pixel grid of ``cluster_stride``; every unknown pixel then joins its nearest class).
:class:`~vocabseg.openworld.metrics.OpenWorldAccumulator` gives known mIoU,
AUPR / AUROC / FPR95 (positives: pixels of the unknown classes; void pixels are
ignored), open-world mIoU and class similarity, written by
:func:`~vocabseg.openworld.metrics.write_openworld_metrics`. The anomaly curves are
streamed into fixed score histograms (:class:`~vocabseg.openworld.metrics.BinnedScores`,
``score_bins``), so memory does not grow with the number of pixels; their guaranteed
distance to the exact metrics is in ``anomaly.error_bound``.

Label spaces: the export's known train ids are the known classes 0..K-1; the unknown
classes are the other train ids of the label set (default) or ``unknown_train_ids``;
train ids that are neither count as void. Class similarity uses ``similar_targets``, by
default the paper's lookup table (train -> truck, motorcycle -> car, [P] §4.4) on the
Cityscapes label set and none on another dataset's, for the pairs that are unknown /
known here.

The ``run`` block of the JSON holds the given facts plus ``known_train_ids``,
``unknown_train_ids``, ``delta``, ``eta``, ``eval_size``, ``epochs`` (of the export),
``variant``, ``device`` and ``seconds``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from vocabseg.openworld.inference import (
    DELTA,
    ETA,
    ClusterState,
    ContMavScores,
    cluster_unknown,
    contmav_scores,
    open_world_labels,
)
from vocabseg.openworld.train import load_contmav_export
from vocabseg.data.labelset import LabelSet
from vocabseg.openworld.dataset import LabelSpace, SemanticDataset
from vocabseg.errors import InputError
from vocabseg.engine import distributed
from vocabseg.openworld.metrics import SCORE_BINS, OpenWorldAccumulator, write_openworld_metrics
from vocabseg.openworld.model import normalize_image

__all__ = ["PAPER_EVAL_SIZE", "PAPER_SIMILAR_TARGETS", "discover_classes_strided", "evaluate_contmav"]

#: (H, W) the paper evaluates at: images bilinear, labels nearest (facts: validation
#: resizes to 512x1024, ``prepare_data.py``; BDD-Anomaly is laid out as Cityscapes).
PAPER_EVAL_SIZE: tuple[int, int] = (512, 1024)

#: [P] §4.4 lookup table, train ids: train -> truck, motorcycle -> car.
PAPER_SIMILAR_TARGETS: dict[int, int] = {16: 14, 17: 13}


def _resize(image: torch.Tensor, ids: torch.Tensor, size: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Image [3, H, W] bilinear (anti-aliased), train ids [H, W] nearest, to ``size``."""
    if size is None or tuple(size) == tuple(ids.shape):
        return image, ids
    h, w = int(size[0]), int(size[1])
    image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)[0]
    ids = F.interpolate(ids[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0].long()
    return image, ids


def discover_classes_strided(
    features: torch.Tensor,
    scores: ContMavScores,
    state: ClusterState | None,
    *,
    eta: float = ETA,
    stride: int = 1,
    max_classes: int | None = None,
    chunk: int = 8192,
) -> tuple[torch.Tensor, ClusterState]:
    """:func:`~vocabseg.openworld.inference.discover_classes` on a pixel grid.

    The unknown pixels on the grid ``[::stride, ::stride]`` are clustered with the
    online rule of :func:`~vocabseg.openworld.inference.cluster_unknown` (in
    raster order, continuing ``state``); then every unknown pixel (grid or not) joins its
    nearest discovered class (squared Euclidean distance to the running means of the
    final state; ties: lowest class). ``stride = 1`` is ``discover_classes`` exactly
    and no ``max_classes`` (each pixel's online label is its nearest centroid only at the
    time it was seen, so the final nearest-centroid pass is skipped there). The online rule costs a
    Python step per pixel and creates a class for every pixel farther than eta from
    all others, so on whole images with spread-out logits it can take minutes; a
    stride of s divides the pixels by s^2. ``max_classes``: once ``state`` holds that
    many classes (checked every 256 grid pixels, so it may overshoot by up to 255), no
    pixel is clustered online any more (no new class, no centroid update): every
    unknown pixel just joins its nearest class, which bounds the cost of a split whose
    unknown features lie far apart (every pixel farther than eta from the others would
    start a class of its own).

    ``features`` [B, K, H, W] semantic logits -> ``(labels [B, H, W] int64, state)``.
    """

    def frozen() -> bool:
        return state is not None and max_classes is not None and state.n_classes >= max(1, max_classes)

    pixels = features.permute(0, 2, 3, 1)[scores.unknown]  # [N, K], raster order
    if stride == 1 and max_classes is None:
        labels, state = cluster_unknown(pixels, state, eta=eta)
        return open_world_labels(scores.semantic_pred, scores.unknown, labels, features.shape[1]), state
    grid = features[:, :, ::stride, ::stride].permute(0, 2, 3, 1)[scores.unknown[:, ::stride, ::stride]]
    if grid.shape[0] == 0 and (state is None or state.n_classes == 0):
        grid = pixels  # unknown pixels only off the grid and no class yet: they are the grid
    for start in range(0, grid.shape[0], 256):  # the limit is checked every 256 pixels
        if frozen():
            break
        _, state = cluster_unknown(grid[start : start + 256], state, eta=eta)
    if state is None:
        state = ClusterState.empty(features.shape[1])
    nearest = torch.zeros(pixels.shape[0], dtype=torch.int64)
    if pixels.shape[0] == 0:
        return open_world_labels(scores.semantic_pred, scores.unknown, nearest, features.shape[1]), state
    pixels = pixels.to(torch.float64)
    centroids = state.centroids.to(pixels.device)
    for start in range(0, pixels.shape[0], chunk):
        part = pixels[start : start + chunk]
        d2 = (part * part).sum(1, keepdim=True) - 2 * part @ centroids.t() + (centroids * centroids).sum(1)[None]
        nearest[start : start + chunk] = d2.argmin(dim=1).cpu()
    return open_world_labels(scores.semantic_pred, scores.unknown, nearest, features.shape[1]), state


@torch.no_grad()
def evaluate_contmav(
    model_path: Path,
    image_root: Path,
    label_root: Path,
    out: Path | None = None,
    *,
    unknown_train_ids: Sequence[int] | None = None,
    size: Sequence[int] | None = None,
    delta: float = DELTA,
    eta: float = ETA,
    cluster: bool = True,
    cluster_stride: int = 4,
    max_classes: int | None = 256,
    similar_targets: Mapping[int, int] | None = None,
    score_bins: int | None = SCORE_BINS,
    facts: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    images_out: Path | None = None,
    labels: LabelSet | None = None,
) -> dict:
    """Open-world metrics of the exported model ``model_path`` on a split.

    Args:
        image_root, label_root: ``leftImg8bit/<split>`` and ``gtFine/<split>``.
        out: metrics JSON to write (None: only return the results).
        unknown_train_ids: the unknown classes (default: every train id not known).
        size: (H, W) to resize every image to before inference; None = as stored.
        delta, eta: unknown threshold and clustering distance.
        cluster: run the open-world clustering (``open_world`` metrics); False skips it.
        cluster_stride: cluster the unknown pixels of a ``[::s, ::s]`` grid online and
            give every unknown pixel its nearest discovered class
            (:func:`discover_classes_strided`); 1 = the paper's online rule on every pixel.
        max_classes: stop creating classes once this many exist (None: no limit).
        similar_targets: unknown train id -> known train id for class similarity
            (None: :data:`PAPER_SIMILAR_TARGETS` for Cityscapes, none otherwise).
        score_bins: histogram bins of the streamed anomaly curves (memory 16 bytes per
            bin); None keeps every score for the exact curves (9+ bytes per pixel).
        facts: run facts stored under ``"run"`` (e.g. approach, study).
        device: where the network runs; None = ``cuda:LOCAL_RANK`` when CUDA is
            available, else the CPU (:func:`vocabseg.engine.distributed.device`).
        images_out: ``.npz`` for the per-image counts the bootstrap resamples
            (:class:`~vocabseg.openworld.metrics.OpenWorldImageStats`), the unknown
            scores at the resolution of the metrics (``score_bins``, or exact), sparse.
        labels: the dataset's label set: its class count and the names of the train
            ids (None: Cityscapes).

    Returns the results dict (the JSON content).
    """
    started = time.perf_counter()
    device = distributed.device() if device is None else torch.device(device)
    export = load_contmav_export(model_path)
    model = export.model.to(device)
    known = list(export.known_train_ids)
    cityscapes = LabelSet.cityscapes()
    labels = labels or cityscapes
    num_classes = labels.num_classes
    unknown = list(LabelSpace(tuple(known), num_classes=num_classes).unknown) if unknown_train_ids is None else [
        int(t) for t in unknown_train_ids
    ]
    overlap = sorted(set(unknown) & set(known))
    if overlap:
        raise InputError(f"unknown train ids {overlap} are known classes of {model_path}")
    if cluster_stride < 1:
        raise InputError(f"cluster stride must be >= 1, got {cluster_stride}")
    if score_bins is not None and score_bins < 1:
        raise InputError(f"score bins must be >= 1, got {score_bins}")
    if any(not 0 <= t < num_classes for t in known + unknown):
        raise InputError(
            f"known {known} / unknown {unknown} train ids must lie in 0..{num_classes - 1} "
            f"(the {labels.dataset} label set)"
        )
    dataset = SemanticDataset(image_root, label_root, known, num_classes=num_classes)
    names = labels.train_id_names()
    space = LabelSpace(tuple(known), tuple(unknown), num_classes)
    k, u = len(known), len(unknown)
    if similar_targets is None:
        similar_targets = PAPER_SIMILAR_TARGETS if labels == cityscapes else {}
    targets_by_id = dict(similar_targets)
    targets = {k + unknown.index(a): known.index(b) for a, b in targets_by_id.items() if a in unknown and b in known}
    acc = OpenWorldAccumulator(
        k,
        u,
        score_bins=score_bins,
        similar_targets=targets,
        class_names=[names[t] for t in known + unknown],
        per_image=images_out is not None,
    )
    state = None
    for index in range(len(dataset)):
        image, ids = dataset.raw(index)
        image, ids = _resize(image.to(device), ids, size)
        outputs = model(normalize_image(image[None] / 255.0))
        semantic, contrastive = outputs["semantic"].float(), outputs["contrastive"].float()
        scores = contmav_scores(semantic, contrastive, export.stats, delta=delta)
        openworld = None
        if cluster:
            openworld, state = discover_classes_strided(
                semantic, scores, state, eta=eta, stride=cluster_stride, max_classes=max_classes
            )
            openworld = openworld[0]
        acc.update(
            space.eval_labels(ids),
            semantic_pred=scores.semantic_pred[0],
            unknown_score=scores.s_unk[0],
            openworld_pred=openworld,
            similar=scores.similar[0],
        )
    results = acc.summarize()
    run = dict(facts or {})
    run.update(
        known_train_ids=known,
        unknown_train_ids=unknown,
        delta=delta,
        eta=eta,
        cluster_stride=cluster_stride if cluster else None,
        max_classes=max_classes if cluster else None,
        eval_size=None if size is None else [int(s) for s in size],
        epochs=export.info.get("epochs"),
        variant=export.info.get("variant"),
        device=str(device),
        seconds=round(time.perf_counter() - started, 3),
    )
    results["run"] = run
    if images_out is not None:
        acc.image_stats().save(images_out)
    if out is not None:
        write_openworld_metrics(results, out)
    return results
