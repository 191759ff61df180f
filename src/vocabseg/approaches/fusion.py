"""Fusion of two FC-CLIP heads' outputs, query by query (the "combined" approach).

The combined approach (research seed 000) trains two models M1 (FTZS) and M2 (lower
bound) jointly with ``L = L1 + L2 + Lcombined``, where ``Lcombined`` is the set
criterion applied to a *fusion* of both models' outputs. This module holds the
fusion rules of the seed's results table, one function per rule, all with the same
contract:

    inputs   z1, z2: class logits [B, Q, K + 1] (void last) of M1 and M2;
             m1, m2: mask logits [B, Q, h, w];
    output   (z, m): fused class "logits" [B, Q, K + 1], i.e. ``softmax(z)`` is the
             fused class distribution, and fused mask logits [B, Q, h, w];
             both float32 and differentiable w.r.t. the inputs.

Query i of M1 is fused with query i of M2: both models start from the same weights
(same query embeddings, same decoder), so at step 0 query i of both predicts the
same segment, and the Hungarian matching of ``Lcombined`` keeps pulling the pair to
one segment. Where a rule weights the two models per query, the masks get the same
weights as the classes; otherwise they are the mean of the mask logits.

Notation: ``s_k = softmax(z_k)`` over all K + 1 entries, ``H(s) = -sum_c s_c
log(s_c + 1e-9)`` summed over the K + 1 entries (natural log), ``EPS = 1e-9``;
rules that build a probability vector p return ``z = log(p + EPS)``, whose softmax is
``(p + EPS) / (1 + (K + 1) EPS)``, i.e. p up to 2e-8.

=====================  =================================  ============================
name                   seed table row                     prediction
=====================  =================================  ============================
``mean``               "mean of logits", Pred N°6 / N°9   M1 alone and M2 alone
``weighted``           "weighted of logits 0.6 0.4"       fused model
``softmax_threshold``  "softmax - sum - threshold 0.7"    fused model
``softmax_topk``       "2 softmax - sum - top 10"         fused model
``entropy``            "2 softmax - entropy" (the seed's  fused model
                       literal formula, its best row)
``entropy_norm``       (ours) normalised-entropy weights  fused model
=====================  =================================  ============================

The formulas, with the choices the seed leaves open, are in each function's
docstring.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from torch import Tensor

from vocabseg.errors import InputError

__all__ = [
    "EPS",
    "FUSIONS",
    "check_fusion",
    "entropy",
    "fuse",
    "fuse_outputs",
    "fuse_mean",
    "fuse_weighted",
    "fuse_softmax_threshold",
    "fuse_softmax_topk",
    "fuse_entropy",
    "fuse_entropy_norm",
]

#: Floor inside every log of a probability (the seed's constant).
EPS = 1e-9
#: Smoothing of the ``entropy_norm`` weights: each model gets ``ENTROPY_NORM_EPS / 2``
#: extra weight, so two zero weights give the mean and the ratio stays bounded.
ENTROPY_NORM_EPS = 1e-6

Fusion = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]


# ------------------------------------------------------------------ helpers
def entropy(s: Tensor) -> Tensor:
    """``H(s) = -sum_c s_c log(s_c + 1e-9)`` over the last axis: [..., C] -> [...]."""
    return -(s * torch.log(s + EPS)).sum(dim=-1)


def _check(z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Shape checks; everything as float32 (a float16 ``1e-9`` would be 0)."""
    if z1.dim() != 3 or z1.shape != z2.shape:
        raise ValueError(f"class logits must both be [B, Q, K + 1], got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if m1.dim() != 4 or m1.shape != m2.shape or m1.shape[:2] != z1.shape[:2]:
        raise ValueError(
            f"mask logits must both be [B, Q, h, w] with the logits' B, Q; got {tuple(m1.shape)} and "
            f"{tuple(m2.shape)} for logits {tuple(z1.shape)}"
        )
    return z1.float(), z2.float(), m1.float(), m2.float()


def _weighted_pair(a1: Tensor, a2: Tensor, w1: Tensor, w2: Tensor) -> Tensor:
    """``(w1 a1 + w2 a2) / (w1 + w2)`` with per-query weights [B, Q] broadcast over
    the trailing axes of ``a1``/``a2`` [B, Q, ...]; the weights' sum must be > 0."""
    extra = (1,) * (a1.dim() - 2)
    w1, w2 = w1.view(*w1.shape, *extra), w2.view(*w2.shape, *extra)
    return (w1 * a1 + w2 * a2) / (w1 + w2)


# ------------------------------------------------------------------ fusions
def fuse_mean(z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """Mean of logits: ``z = (z1 + z2) / 2``, ``m = (m1 + m2) / 2``.

    Seed rows "mean of logits of M1 + M2", predicted with M1 alone (Pred N°6) and
    with M2 alone (Pred N°9): one training run gives both rows.
    """
    z1, z2, m1, m2 = _check(z1, z2, m1, m2)
    return (z1 + z2) / 2, (m1 + m2) / 2


def fuse_weighted(
    z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor, weight: float = 0.6
) -> tuple[Tensor, Tensor]:
    """Weighted logits: ``z = a z1 + (1 - a) z2``, ``m = a m1 + (1 - a) m2``, a = 0.6.

    Seed row "weighted of logits 0.6 0.4" (M1 = the FTZS model gets 0.6).
    """
    z1, z2, m1, m2 = _check(z1, z2, m1, m2)
    return weight * z1 + (1 - weight) * z2, weight * m1 + (1 - weight) * m2


def fuse_softmax_threshold(
    z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor, threshold: float = 0.7
) -> tuple[Tensor, Tensor]:
    """Confident-model average of the softmaxes (seed row "softmax - sum - threshold 0.7").

    Per query: model k is *kept* if its most probable real class is confident,
    ``c_k = [max_{c < K} s_k[c] >= threshold]`` (void, index K, does not count); if
    neither is kept both are (``c_1 = c_2 = 1``). Then

        p = (c_1 s_1 + c_2 s_2) / (c_1 + c_2),        z = log(p + 1e-9),
        m = (c_1 m_1 + c_2 m_2) / (c_1 + c_2),

    i.e. the kept model's distribution and masks alone, or the mean of both when both
    or neither are confident. The seed's "sum" is normalised here so that p is a
    distribution whatever the number of kept models. The selection is a hard 0/1
    choice (no gradient through it); gradients flow into the kept model(s).
    """
    z1, z2, m1, m2 = _check(z1, z2, m1, m2)
    s1, s2 = z1.softmax(dim=-1), z2.softmax(dim=-1)
    keep1 = s1[..., :-1].amax(dim=-1) >= threshold
    keep2 = s2[..., :-1].amax(dim=-1) >= threshold
    neither = ~(keep1 | keep2)
    c1 = (keep1 | neither).to(s1.dtype)
    c2 = (keep2 | neither).to(s1.dtype)
    p = _weighted_pair(s1, s2, c1, c2)
    return torch.log(p + EPS), _weighted_pair(m1, m2, c1, c2)


def fuse_softmax_topk(z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor, k: int = 10) -> tuple[Tensor, Tensor]:
    """Top-k of the summed softmaxes (seed row "2 softmax - sum - top 10").

    Per query, with ``q = s_1 + s_2`` [K + 1] and T the indices of the k largest of
    the K real-class entries ``q[:K]`` (all of them if K <= k):

        p_c = q_c / sum_{c' in T u {K}} q_c'   for c in T u {K},   p_c = 0 otherwise,
        z = log(p + 1e-9),                    m = (m_1 + m_2) / 2.

    The void entry K is always kept: the criterion's cross-entropy trains unmatched
    queries towards void, and a void probability of 0 would make that term the
    constant ``-log(1e-9)`` with no gradient. Ties inside the top-k are broken by
    ``torch.topk``.
    """
    z1, z2, m1, m2 = _check(z1, z2, m1, m2)
    q = z1.softmax(dim=-1) + z2.softmax(dim=-1)
    real = q[..., :-1]
    keep = torch.ones_like(q, dtype=torch.bool)
    if k < real.shape[-1]:
        top = real.topk(k, dim=-1).indices
        keep_real = torch.zeros_like(real, dtype=torch.bool).scatter_(-1, top, True)
        keep = torch.cat([keep_real, keep[..., -1:]], dim=-1)
    kept = q * keep.to(q.dtype)
    p = kept / kept.sum(dim=-1, keepdim=True)
    return torch.log(p + EPS), (m1 + m2) / 2


def fuse_entropy(z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """The seed's literal entropy fusion (its best row, "2 softmax - entropy").

        z = s_1 (1 - H(s_1)) + s_2 (1 - H(s_2)),      m = (m_1 + m_2) / 2,

    with H per query over the K + 1 entries, natural log, *not* normalised, so
    ``1 - H`` lies in ``[1 - log(K + 1), 1]`` and is negative for uncertain queries.
    ``z`` is handed to the criterion **as logits** (the seed passes ``new_logit`` to
    the criterion, whose cross-entropy soft-maxes it), so the fused distribution is
    ``softmax(z)``, a soft version of the weighted sum (its entries differ by at most
    2, so it is never sharper than ``e^2`` between two classes).

    Where the seed is silent: it writes ``Entropy(s) = -sum s log(s + 1e-9)`` without
    axes; we sum over the class axis, one entropy per query. Its notation also
    applies the formula to every output key ("pred logits", "pred masks"); mask
    logits have no class axis to soft-max, so the masks are the mean of the mask
    logits. Gradients flow through ``H`` as well (nothing is detached).
    """
    z1, z2, m1, m2 = _check(z1, z2, m1, m2)
    s1, s2 = z1.softmax(dim=-1), z2.softmax(dim=-1)
    w1 = (1.0 - entropy(s1)).unsqueeze(-1)
    w2 = (1.0 - entropy(s2)).unsqueeze(-1)
    return s1 * w1 + s2 * w2, (m1 + m2) / 2


def fuse_entropy_norm(z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """Confidence-weighted mixture with normalised-entropy weights (our variant).

    Per query, with ``w_k = clamp(1 - H(s_k) / log(K + 1), 0, 1)`` (1 = one-hot, 0 =
    uniform) and ``e = 1e-6`` (:data:`ENTROPY_NORM_EPS`):

        p = ((w_1 + e/2) s_1 + (w_2 + e/2) s_2) / (w_1 + w_2 + e),    z = log(p + 1e-9),
        m = ((w_1 + e/2) m_1 + (w_2 + e/2) m_2) / (w_1 + w_2 + e).

    p is a proper mixture of the two distributions (a distribution itself), the more
    certain model dominating; with both weights 0 it is exactly the mean, and
    otherwise it differs from ``(w_1 s_1 + w_2 s_2) / (w_1 + w_2)`` by at most
    ``e / (w_1 + w_2 + e)``. The weights are not detached: gradients flow through
    them (as through the seed's ``1 - H``).
    """
    z1, z2, m1, m2 = _check(z1, z2, m1, m2)
    s1, s2 = z1.softmax(dim=-1), z2.softmax(dim=-1)
    scale = math.log(s1.shape[-1])
    w1 = (1.0 - entropy(s1) / scale).clamp(0.0, 1.0) + ENTROPY_NORM_EPS / 2
    w2 = (1.0 - entropy(s2) / scale).clamp(0.0, 1.0) + ENTROPY_NORM_EPS / 2
    p = _weighted_pair(s1, s2, w1, w2)
    return torch.log(p + EPS), _weighted_pair(m1, m2, w1, w2)


FUSIONS: dict[str, Fusion] = {
    "mean": fuse_mean,
    "weighted": fuse_weighted,
    "softmax_threshold": fuse_softmax_threshold,
    "softmax_topk": fuse_softmax_topk,
    "entropy": fuse_entropy,
    "entropy_norm": fuse_entropy_norm,
}


def check_fusion(name: str) -> str:
    """``name`` if it is a known fusion, else :class:`InputError` naming the key."""
    if name not in FUSIONS:
        raise InputError(f"combined approach key fusion: unknown fusion {name!r}; choose one of {sorted(FUSIONS)}")
    return name


def fuse(name: str, z1: Tensor, z2: Tensor, m1: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the fusion called ``name`` (a key of :data:`FUSIONS`) with its default
    parameters: [B, Q, K + 1] x 2, [B, Q, h, w] x 2 -> (z, m)."""
    return FUSIONS[check_fusion(name)](z1, z2, m1, m2)


def fuse_outputs(out1: Mapping, out2: Mapping, name: str) -> dict:
    """Fuse two head-output dicts layer by layer.

    Args:
        out1, out2: ``{"pred_logits" [B, Q, K + 1], "pred_masks" [B, Q, h, w],
            "aux_outputs": [same keys] * L}`` of M1 and M2 (same L).
        name: the fusion.

    Returns:
        The same structure for the fused model: the final outputs fused, and
        ``aux_outputs[i]`` = fusion of both models' ``aux_outputs[i]`` (deep
        supervision of ``Lcombined``).
    """
    check_fusion(name)
    aux1, aux2 = out1.get("aux_outputs") or [], out2.get("aux_outputs") or []
    if len(aux1) != len(aux2):
        raise ValueError(f"the two models have {len(aux1)} and {len(aux2)} auxiliary outputs")

    def one(a: Mapping, b: Mapping) -> dict:
        z, m = fuse(name, a["pred_logits"], b["pred_logits"], a["pred_masks"], b["pred_masks"])
        return {"pred_logits": z, "pred_masks": m}

    fused = one(out1, out2)
    fused["aux_outputs"] = [one(a, b) for a, b in zip(aux1, aux2)]
    return fused
