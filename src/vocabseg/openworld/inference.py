"""ContMAV inference: unknown scores, the unknown mask and the discovery of new classes.

What: given the two outputs of a ContMAV network (semantic logits and contrastive
features) and the class statistics gathered in training (mean activation vectors,
MAVs, and their element-wise variances), compute the per-pixel unknown score of
Sodano et al., CVPR 2024 ([P] §3.2–3.3), threshold it, tell each pixel its most
similar known class, and cluster the unknown pixels into new classes.

Why a module of its own: it depends only on tensors, not on the network, so every
formula is checked against hand computations, and the same code scores every
variant (ContMAV, +TruFor, +focal, +InfoNCE, +SynCo).

Notation (K known classes, f_p the K-vector of semantic logits at pixel p, f^d_p
the D-vector of the contrastive decoder, μ_k and σ²_k the MAV and variance of class
k over its true positives, [P] Eq. 3–4):

    d²_k(p)   = Σ_j (f_pj − μ_kj)² / (σ²_kj + ε),   ε = VAR_EPS = 1e-8
    s_k(p)    = exp(−½ d²_k(p))                        [P] Eq. 11 (diagonal Σ_k)
    s(p)      = max_k s_k(p),   s_sem(p) = 1 − s(p)   [P] Eq. 12
    s_cont(p) = max(0, 1 − ‖f^d_p‖² / ξ),   ξ = 1     [P] Eq. 13
    s_unk(p)  = ½ (s_sem(p) + s_cont(p))              [P] Eq. 14
    unknown   ⇔ s_unk(p) > δ,   δ = 0.6 (strict, like the public code's relu(s − δ) > 0)
    k̃(p)      = argmax_k s_k(p) = argmin_k d²_k(p)    [P] §3.3, class similarity

Choices where the paper and the public code ([C], facts file §3, §11) differ:

* The norm score squares the norm, as [P] Eq. 13; [C] uses ``1 − ‖f‖`` (facts §11.8).
  ``squared=False`` gives the code's form for ablations only.
* ``k̃`` and ``s`` come from ``min_k d²_k``: the same as ``max_k s_k`` but immune to
  ``exp`` underflowing to 0 for every class (then ``argmax s_k`` would be class 0).
* A class with no true-positive pixel in training (``counts[k] == 0``) has no MAV:
  it is left out (``d²_k = +∞``, ``s_k = 0``); if no class is left, ``s_sem = 1``.
* New classes: [C]'s ``test_ow`` sketch (agglomerative clustering, never called and
  selecting the known pixels, facts §3) is not followed; the paper's rule is, see
  :func:`cluster_unknown`.

Storage: the statistics are a dict of plain tensors ``{"mavs": [C, K] float32,
"variances": [C, K] float32, "counts": [C] int64}`` written with ``torch.save`` and
read back with ``weights_only=True`` (:func:`save_mav_stats`, :func:`load_mav_stats`);
never a pickle of arbitrary objects ([C] pickles Python dicts, facts §2.2).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Mapping

import numpy as np
import torch
from torch import Tensor

from vocabseg.errors import InputError
from vocabseg.fileio import torch_load_checked, torch_save_atomic

__all__ = [
    "DELTA",
    "ETA",
    "XI",
    "VAR_EPS",
    "MavStats",
    "save_mav_stats",
    "load_mav_stats",
    "mahalanobis_sq",
    "semantic_unknown_score",
    "norm_unknown_score",
    "fuse_unknown_scores",
    "unknown_mask",
    "ContMavScores",
    "contmav_scores",
    "ClusterState",
    "cluster_unknown",
    "open_world_labels",
    "discover_classes",
]

#: Threshold on the fused unknown score ([P] §4.1, [C] ``test_ow``).
DELTA = 0.6
#: Distance below which an unknown pixel joins a discovered class ([P] §4.1).
ETA = 0.5
#: Objectosphere radius² ξ of the known features ([P] Eq. 9, 13).
XI = 1.0
#: Added to every variance before dividing ([C] ``semantic_inference`` uses the same).
VAR_EPS = 1e-8

_STAT_KEYS = ("mavs", "variances", "counts")


# ---------------------------------------------------------------- statistics
@dataclass(frozen=True)
class MavStats:
    """Class statistics of the semantic decoder over the training true positives.

    ``mavs`` [C, K] (row k = μ_k), ``variances`` [C, K] (row k = σ²_k, element-wise,
    *variances*, not standard deviations), ``counts`` [C] int64 true-positive pixel
    counts (0 = class never predicted correctly: excluded from scoring). C is the
    number of known classes, K the feature width (C = K in ContMAV).
    """

    mavs: Tensor
    variances: Tensor
    counts: Tensor

    def __post_init__(self) -> None:
        _check_stats(self.mavs, self.variances, self.counts, "MavStats")

    @classmethod
    def from_tensors(cls, mavs: Tensor, variances: Tensor, counts: Tensor | None = None) -> MavStats:
        """Stats from [C, K] MAVs and variances; ``counts`` None means every class seen once."""
        if counts is None:
            counts = torch.ones(mavs.shape[0], dtype=torch.int64)
        return cls(
            mavs.detach().to("cpu", torch.float32),
            variances.detach().to("cpu", torch.float32),
            counts.detach().to("cpu", torch.int64),
        )

    @classmethod
    def from_descriptors(cls, descriptors: object) -> MavStats:
        """Stats from an object with ``means`` [C, K], ``variances`` [C, K] and ``valid``
        [C] bool (the training code's ``vocabseg.openworld.losses.MAVs``); counts = valid."""
        d = descriptors
        return cls.from_tensors(d.means, d.variances, d.valid.to(torch.int64))  # type: ignore[attr-defined]

    def as_dict(self) -> dict[str, Tensor]:
        """``{"mavs", "variances", "counts"}`` plain tensors (what :func:`save_mav_stats` writes)."""
        return {"mavs": self.mavs, "variances": self.variances, "counts": self.counts}

    @property
    def seen(self) -> Tensor:
        """[C] bool: classes with at least one true positive (those that are scored)."""
        return self.counts > 0


def _check_stats(mavs: object, variances: object, counts: object, source: str) -> None:
    """InputError naming ``source`` unless the three tensors have consistent shapes/values."""
    for key, value in zip(_STAT_KEYS, (mavs, variances, counts)):
        if not isinstance(value, Tensor):
            raise InputError(f"{source}: {key!r} must be a tensor, got {type(value).__name__}")
    if mavs.dim() != 2 or variances.shape != mavs.shape:
        raise InputError(
            f"{source}: 'mavs' and 'variances' must both be [C, K], got {tuple(mavs.shape)} and "
            f"{tuple(variances.shape)}"
        )
    if counts.shape != (mavs.shape[0],):
        raise InputError(f"{source}: 'counts' must be [C] = [{mavs.shape[0]}], got {tuple(counts.shape)}")
    if not torch.isfinite(mavs).all() or not torch.isfinite(variances).all():
        raise InputError(f"{source}: 'mavs' and 'variances' must be finite")
    if (variances < 0).any():
        raise InputError(f"{source}: 'variances' must be >= 0")
    if (counts < 0).any():
        raise InputError(f"{source}: 'counts' must be >= 0")


def save_mav_stats(stats: MavStats, path: str | os.PathLike) -> None:
    """Write ``stats.as_dict()`` with ``torch.save`` (atomically; plain tensors only)."""
    torch_save_atomic(stats.as_dict(), path)


def load_mav_stats(path: str | os.PathLike) -> MavStats:
    """Read MAVs, variances and counts written by :func:`save_mav_stats` (``weights_only``).

    :class:`InputError` naming the file if it is missing, unreadable, not a dict with
    the three keys, or has inconsistent shapes.
    """
    data = torch_load_checked(path, "MAV statistics")
    if not isinstance(data, Mapping) or any(key not in data for key in _STAT_KEYS):
        raise InputError(f"{path}: MAV statistics must be a dict with keys {list(_STAT_KEYS)}")
    _check_stats(data["mavs"], data["variances"], data["counts"], os.fspath(path))
    return MavStats.from_tensors(data["mavs"], data["variances"], data["counts"])


# ---------------------------------------------------------------- scores
def mahalanobis_sq(features: Tensor, stats: MavStats, eps: float = VAR_EPS) -> Tensor:
    """Squared diagonal Mahalanobis distance of every pixel to every class MAV.

    ``features`` [B, K, H, W] semantic logits -> d² [B, C, H, W],
    ``d²_k = Σ_j (f_j − μ_kj)² / (σ²_kj + eps)``; ``+inf`` for unseen classes.
    Computed one class at a time (memory B·K·H·W, not B·C·K·H·W), in the
    features' floating dtype.
    """
    if features.dim() != 4 or features.shape[1] != stats.mavs.shape[1]:
        raise ValueError(
            f"features must be [B, K, H, W] with K = {stats.mavs.shape[1]}, got {tuple(features.shape)}"
        )
    dtype = features.dtype if features.is_floating_point() else torch.float32
    f = features.to(dtype)
    mavs = stats.mavs.to(f.device, dtype)
    inv_var = 1.0 / (stats.variances.to(f.device, dtype) + eps)
    out = f.new_empty((f.shape[0], mavs.shape[0], f.shape[2], f.shape[3]))
    for k in range(mavs.shape[0]):
        if stats.counts[k] <= 0:
            out[:, k] = float("inf")
            continue
        diff = f - mavs[k].view(1, -1, 1, 1)
        out[:, k] = (diff * diff * inv_var[k].view(1, -1, 1, 1)).sum(dim=1)
    return out


def semantic_unknown_score(
    features: Tensor,
    stats: MavStats,
    *,
    reduce: Literal["max", "predicted"] = "max",
    eps: float = VAR_EPS,
) -> tuple[Tensor, Tensor]:
    """Gaussian unknown score and most similar known class ([P] Eq. 11–12, §3.3).

    ``features`` [B, K, H, W] semantic logits -> ``(s_sem [B, H, W], similar [B, H, W]
    int64)`` with ``s_sem = 1 − exp(−½ d²)`` and ``similar = argmin_k d²_k`` (ties:
    lowest k; all classes unseen: 0). ``reduce`` picks d²:

    * ``"max"`` (default, the paper and [C]): ``d² = min_k d²_k``, i.e. ``s = max_k s_k``;
    * ``"predicted"``: d² of the closed-world prediction ``k̂ = argmax_k f_k``, i.e. the
      distance to the predicted class's MAV (``s_sem = 1`` if that class is unseen).
    """
    d2 = mahalanobis_sq(features, stats, eps)
    best, similar = d2.min(dim=1)
    if reduce == "max":
        chosen = best
    elif reduce == "predicted":
        predicted = features.argmax(dim=1, keepdim=True)
        chosen = d2.gather(1, predicted).squeeze(1)
    else:
        raise ValueError(f"reduce must be 'max' or 'predicted', got {reduce!r}")
    return 1.0 - torch.exp(-0.5 * chosen), similar


def norm_unknown_score(features: Tensor, *, xi: float = XI, squared: bool = True) -> Tensor:
    """Objectosphere norm score ``s_cont = max(0, 1 − ‖f^d‖² / ξ)`` ([P] Eq. 13).

    ``features`` [B, D, H, W] contrastive decoder output -> [B, H, W]. Known pixels
    were trained to ``‖f‖² ≥ ξ`` (score 0), unknown ones to ``‖f‖ = 0`` (score 1).
    ``squared=False`` gives [C]'s ``max(0, 1 − ‖f^d‖ / ξ)`` (facts §11.8), for ablations.
    """
    if features.dim() != 4:
        raise ValueError(f"contrastive features must be [B, D, H, W], got {tuple(features.shape)}")
    f = features if features.is_floating_point() else features.float()
    sq = f.pow(2).sum(dim=1)
    value = sq if squared else sq.sqrt()
    return (1.0 - value / xi).clamp(min=0.0)


def fuse_unknown_scores(s_sem: Tensor, s_cont: Tensor) -> Tensor:
    """``s_unk = ½ (s_sem + s_cont)`` ([P] Eq. 14); [B, H, W] each, result in [0, 1]."""
    if s_sem.shape != s_cont.shape:
        raise ValueError(f"scores must have one shape, got {tuple(s_sem.shape)} and {tuple(s_cont.shape)}")
    return 0.5 * (s_sem + s_cont)


def unknown_mask(s_unk: Tensor, delta: float = DELTA) -> Tensor:
    """``s_unk > δ`` (strict), bool of the same shape."""
    return s_unk > delta


@dataclass(frozen=True)
class ContMavScores:
    """Per-pixel outputs of :func:`contmav_scores`, all [B, H, W]."""

    semantic_pred: Tensor  # int64 closed-world prediction argmax_k f_k
    s_sem: Tensor  # Gaussian unknown score
    s_cont: Tensor  # norm unknown score
    s_unk: Tensor  # fused unknown score (the anomaly score of AUPR / FPR95 / AUROC)
    unknown: Tensor  # bool s_unk > δ
    similar: Tensor  # int64 most similar known class k̃


def contmav_scores(
    semantic_logits: Tensor,
    contrastive_features: Tensor,
    stats: MavStats,
    *,
    delta: float = DELTA,
    xi: float = XI,
    reduce: Literal["max", "predicted"] = "max",
    squared_norm: bool = True,
) -> ContMavScores:
    """All per-pixel scores of one batch: semantic logits [B, K, H, W] and contrastive
    features [B, D, H, W] (same B, H, W) -> :class:`ContMavScores`."""
    if semantic_logits.dim() != 4 or contrastive_features.dim() != 4:
        raise ValueError("semantic logits and contrastive features must be [B, C, H, W]")
    if semantic_logits.shape[0] != contrastive_features.shape[0] or (
        semantic_logits.shape[2:] != contrastive_features.shape[2:]
    ):
        raise ValueError(
            f"semantic logits {tuple(semantic_logits.shape)} and contrastive features "
            f"{tuple(contrastive_features.shape)} must share B, H, W"
        )
    s_sem, similar = semantic_unknown_score(semantic_logits, stats, reduce=reduce)
    s_cont = norm_unknown_score(contrastive_features, xi=xi, squared=squared_norm).to(s_sem.dtype)
    s_unk = fuse_unknown_scores(s_sem, s_cont)
    return ContMavScores(
        semantic_pred=semantic_logits.argmax(dim=1),
        s_sem=s_sem,
        s_cont=s_cont,
        s_unk=s_unk,
        unknown=unknown_mask(s_unk, delta),
        similar=similar,
    )


# ---------------------------------------------------------------- new classes
@dataclass(frozen=True)
class ClusterState:
    """Discovered classes so far: ``centroids`` [G, K] float64 running means,
    ``counts`` [G] int64 pixels assigned. ``as_dict`` gives plain tensors to save."""

    centroids: Tensor
    counts: Tensor

    @classmethod
    def empty(cls, dim: int) -> ClusterState:
        return cls(torch.zeros((0, dim), dtype=torch.float64), torch.zeros(0, dtype=torch.int64))

    @property
    def n_classes(self) -> int:
        return int(self.centroids.shape[0])

    def as_dict(self) -> dict[str, Tensor]:
        return {"centroids": self.centroids, "counts": self.counts}


def cluster_unknown(
    features: Tensor, state: ClusterState | None = None, *, eta: float = ETA
) -> tuple[Tensor, ClusterState]:
    """Assign unknown pixels to discovered classes, creating new ones ([P] §3.3).

    ``features`` [N, K] of the unknown pixels, in a fixed order (the caller's: image
    order, then raster order) -> ``(labels [N] int64 in [0, G'), new state)``.

    Online leader clustering, one pixel at a time, in float64:

        g* = argmin_g ‖x − c_g‖²   (ties: lowest g)
        if G > 0 and ‖x − c_g*‖² < η²:  n_g* += 1,  c_g* += (x − c_g*) / n_g*   (running mean)
        else:                           c_{G+1} = x,  n_{G+1} = 1               (new class)

    The classes already in ``state`` (from earlier images) are matched first, so
    discovered classes persist over a test set; there is no limit on G. The result
    depends only on the features and their order (deterministic). Cost: N·G·K
    operations plus a Python step per pixel (about 5 µs at G = 50, K = 19). G grows
    up to N when the features are spread wider than η (20 000 pixels of 19-d logits
    with unit spread all become singletons: about 6 s on one core).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be [N, K], got {tuple(features.shape)}")
    x = features.detach().to("cpu", torch.float64).numpy()
    n, dim = x.shape
    state = ClusterState.empty(dim) if state is None else state
    if state.centroids.shape[1] != dim:
        raise ValueError(f"cluster state has width {state.centroids.shape[1]}, features {dim}")
    g = state.n_classes
    capacity = max(16, 2 * g)
    cent = np.zeros((capacity, dim))
    count = np.zeros(capacity, dtype=np.int64)
    cent[:g] = state.centroids.numpy()
    count[:g] = state.counts.numpy()
    labels = np.empty(n, dtype=np.int64)
    eta_sq = eta * eta
    for i in range(n):
        xi = x[i]
        if g:
            diff = cent[:g] - xi
            d2 = np.einsum("ij,ij->i", diff, diff)
            j = int(d2.argmin())
            if d2[j] < eta_sq:
                count[j] += 1
                cent[j] += (xi - cent[j]) / count[j]
                labels[i] = j
                continue
        if g == capacity:
            capacity *= 2
            cent = np.concatenate([cent, np.zeros_like(cent)])
            count = np.concatenate([count, np.zeros_like(count)])
        cent[g], count[g], labels[i] = xi, 1, g
        g += 1
    new_state = ClusterState(torch.from_numpy(cent[:g].copy()), torch.from_numpy(count[:g].copy()))
    return torch.from_numpy(labels), new_state


def open_world_labels(semantic_pred: Tensor, unknown: Tensor, cluster_labels: Tensor, n_known: int) -> Tensor:
    """Open-world label map: known pixels keep the closed-world class, unknown pixels
    become ``n_known + g``.

    ``semantic_pred`` [B, H, W] int64, ``unknown`` [B, H, W] bool, ``cluster_labels``
    [N] with N = ``unknown.sum()`` in raster order (``unknown.nonzero()`` order) ->
    [B, H, W] int64.
    """
    if semantic_pred.shape != unknown.shape:
        raise ValueError(f"prediction {tuple(semantic_pred.shape)} and mask {tuple(unknown.shape)} differ")
    if cluster_labels.shape != (int(unknown.sum()),):
        raise ValueError(f"{int(unknown.sum())} unknown pixels but {tuple(cluster_labels.shape)} cluster labels")
    out = semantic_pred.clone().long()
    out[unknown] = cluster_labels.to(out.device).long() + n_known
    return out


def discover_classes(
    features: Tensor, scores: ContMavScores, state: ClusterState | None = None, *, eta: float = ETA
) -> tuple[Tensor, ClusterState]:
    """Cluster one batch's unknown pixels and build its open-world label map.

    ``features`` [B, K, H, W] (the semantic logits, the space of the MAVs, [P] §3.3)
    -> ``(labels [B, H, W] int64, new state)``; labels < K are known classes, K + g
    the discovered class g (g indexes ``state.centroids`` across calls).
    """
    pixels = features.permute(0, 2, 3, 1)[scores.unknown]  # [N, K], raster order
    cluster_labels, state = cluster_unknown(pixels, state, eta=eta)
    return open_world_labels(scores.semantic_pred, scores.unknown, cluster_labels, features.shape[1]), state
