"""Set criterion of Mask2Former / FC-CLIP: Hungarian matching, then CE + mask BCE + dice.

For each decoder output (the final one and every entry of ``"aux_outputs"``):

1. queries are matched to targets one-to-one by :class:`HungarianMatcher`;
2. ``loss_ce``: cross-entropy over K+1 classes for all queries, unmatched queries
   having the void class K, with class weights ``empty_weight`` (1 for real classes,
   ``eos_coef`` for void) and the usual weighted mean (divided by the sum of weights, summed
   over DDP processes and divided by their number, so DDP equals one process);
   an optional per-target ``"ignore_queries"`` (bool [Q]) removes the flagged
   queries that the layer leaves unmatched from this term (weight 0), e.g. the
   queries a distillation loss supervises instead (:mod:`vocabseg.approaches.distill`);
3. ``loss_mask`` / ``loss_dice``: for matched pairs only, sigmoid BCE averaged over
   ``num_points`` importance-sampled points, and dice on the same points, each summed
   over masks and divided by ``num_masks`` (the number of target masks in the batch,
   averaged over processes).

Auxiliary losses get the suffix ``_{i}`` for ``aux_outputs[i]``. ``forward`` returns
unweighted losses; :meth:`SetCriterion.weighted_total` applies ``weight_dict``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vocabseg.engine.distributed import global_normaliser

from .matcher import HungarianMatcher
from .point_sampling import (
    calculate_uncertainty,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    seeded_generator,
)

__all__ = ["SetCriterion", "build_criterion", "dice_loss", "sigmoid_ce_loss", "LOSS_STREAM", "IGNORE_INDEX"]

#: Salt that separates the loss's importance sampling from the matcher's points.
LOSS_STREAM = 0x4C4F_5353  # "LOSS"

#: CE target of queries excluded by ``ignore_queries`` (PyTorch's default ignore_index).
IGNORE_INDEX = -100

Indices = list[tuple[Tensor, Tensor]]


def dice_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Dice loss summed over masks and divided by ``num_masks``.

    Args:
        inputs: [M, P] mask logits at P points.
        targets: [M, P] binary (0/1 float) targets at the same points.
        num_masks: normaliser.

    Returns:
        scalar ``sum_m (1 - (2 |s_m g_m| + 1) / (|s_m| + |g_m| + 1)) / num_masks``.
    """
    probs = inputs.sigmoid()
    numerator = 2.0 * (probs * targets).sum(-1)
    denominator = probs.sum(-1) + targets.sum(-1)
    loss = 1.0 - (numerator + 1.0) / (denominator + 1.0)
    return loss.sum() / num_masks


def sigmoid_ce_loss(inputs: Tensor, targets: Tensor, num_masks: float) -> Tensor:
    """Sigmoid BCE averaged over points, summed over masks, divided by ``num_masks``.

    Args:
        inputs: [M, P] mask logits at P points.
        targets: [M, P] binary (0/1 float) targets at the same points.
        num_masks: normaliser.

    Returns:
        scalar loss.
    """
    loss = F.binary_cross_entropy_with_logits(inputs, targets, reduction="none")
    return loss.mean(1).sum() / num_masks


class SetCriterion(nn.Module):
    """Hungarian-matched set loss with deep supervision.

    Args:
        num_classes: K, number of real classes (logits have K+1 columns, last = void).
        matcher: the :class:`HungarianMatcher`.
        weight_dict: loss name -> weight, used by :meth:`weighted_total` only.
        eos_coef: CE weight of the void / no-object class.
        losses: which losses to compute, from ``("labels", "masks")``.
        num_points: P, importance-sampled points per matched mask.
        oversample_ratio: PointRend oversampling factor k.
        importance_sample_ratio: PointRend fraction beta of uncertain points.

    Buffers:
        empty_weight: [K+1] CE class weights, ones with ``eos_coef`` last (persistent,
            as ``criterion.empty_weight`` in the upstream checkpoints).

    Randomness: the points of image b come from a CPU generator seeded with
    ``(targets[b]["seed"], LOSS_STREAM, layer)`` (the matcher uses its own stream), so
    every loss term of an image is independent of which other images share its batch
    or process. Without a ``"seed"`` the global RNG is used.
    """

    def __init__(
        self,
        num_classes: int,
        matcher: HungarianMatcher,
        weight_dict: Mapping[str, float],
        eos_coef: float = 0.1,
        losses: Iterable[str] = ("labels", "masks"),
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.eos_coef = eos_coef
        self.losses = tuple(losses)
        unknown = set(self.losses) - {"labels", "masks"}
        assert not unknown, f"unknown losses {sorted(unknown)}"
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight)

    # ------------------------------------------------------------------ losses

    def loss_labels(self, outputs: Mapping[str, Any], targets: Sequence[dict[str, Any]],
                    indices: Indices, num_masks: float, layer: int = 0) -> dict[str, Tensor]:
        """Weighted CE over K+1 classes; unmatched queries are void (class K).

        ``pred_logits`` [B, Q, K+1] -> ``{"loss_ce": scalar}``.

        Optional ``targets[b]["ignore_queries"]`` (bool [Q]): queries flagged there
        that this layer's matching leaves unmatched get CE weight 0 (they leave the
        numerator and the weight sum of the weighted mean); matched ones are
        unaffected. Without the key the loss is exactly the upstream one. If every
        query of the batch is ignored the loss is 0.
        """
        logits = outputs["pred_logits"].float()
        batch, num_queries, num_logits = logits.shape
        assert num_logits == self.num_classes + 1, (
            f"pred_logits has {num_logits} columns, criterion expects K+1 = {self.num_classes + 1}")
        target_classes = torch.full((batch, num_queries), self.num_classes, dtype=torch.int64,
                                    device=logits.device)
        for b, (src, tgt) in enumerate(indices):
            if src.numel():
                labels = targets[b]["labels"].to(logits.device)
                target_classes[b, src.to(logits.device)] = labels[tgt.to(logits.device)]
        if any(t.get("ignore_queries") is not None for t in targets):
            target_classes = self._ignore_unmatched(target_classes, targets, indices)
        nll = F.cross_entropy(logits.transpose(1, 2), target_classes, reduction="none",
                              ignore_index=IGNORE_INDEX)  # [B, Q], 0 where ignored
        kept = target_classes != IGNORE_INDEX
        weight = self.empty_weight.to(logits.dtype)[target_classes.clamp(min=0)] * kept
        total = (weight * nll).sum()
        # Weighted mean over the global batch: upstream's F.cross_entropy(weight=...) mean
        # with one process; upstream divides by the local weight sum, which under DDP
        # differs whenever shards leave different numbers of queries unmatched.
        norm = global_normaliser(weight.sum())
        if norm <= 0:
            return {"loss_ce": logits.sum() * 0.0}  # every query ignored: zero, graph kept
        return {"loss_ce": total / norm}

    @staticmethod
    def _ignore_unmatched(target_classes: Tensor, targets: Sequence[dict[str, Any]],
                          indices: Indices) -> Tensor:
        """Set ``IGNORE_INDEX`` where ``targets[b]["ignore_queries"]`` [Q] is True and
        the query is unmatched in this layer; [B, Q] -> [B, Q]."""
        batch, num_queries = target_classes.shape
        out = target_classes.clone()
        for b, (src, _) in enumerate(indices):
            ignore = targets[b].get("ignore_queries")
            if ignore is None:
                continue
            ignore = torch.as_tensor(ignore, device=out.device)
            if ignore.dtype != torch.bool or ignore.shape != (num_queries,):
                raise ValueError(f"targets[{b}]['ignore_queries'] must be a bool tensor of shape "
                                 f"[{num_queries}], got {ignore.dtype} {tuple(ignore.shape)}")
            drop = ignore.clone()
            drop[src.to(out.device)] = False  # matched queries keep their class target
            out[b, drop] = IGNORE_INDEX
        return out

    def loss_masks(self, outputs: Mapping[str, Any], targets: Sequence[dict[str, Any]],
                   indices: Indices, num_masks: float, layer: int = 0) -> dict[str, Tensor]:
        """Point-sampled sigmoid BCE and dice of matched masks.

        ``pred_masks`` [B, Q, h, w]; target masks [N_b, H, W] bool (H = 4h, typically)
        -> ``{"loss_mask": scalar, "loss_dice": scalar}``.
        """
        pred_masks = outputs["pred_masks"]
        logits_at_points, labels_at_points = [], []
        for b, (src, tgt) in enumerate(indices):
            if src.numel() == 0:
                continue
            src_masks = pred_masks[b, src.to(pred_masks.device)][:, None]  # [M_b, 1, h, w]
            tgt_masks = targets[b]["masks"][tgt.to(targets[b]["masks"].device)]
            tgt_masks = tgt_masks.to(device=pred_masks.device, dtype=torch.float32)[:, None]
            gen = seeded_generator(targets[b].get("seed"), LOSS_STREAM, layer)
            with torch.no_grad():
                coords = get_uncertain_point_coords_with_randomness(
                    src_masks.detach().float(), calculate_uncertainty, self.num_points,
                    self.oversample_ratio, self.importance_sample_ratio, generator=gen)
                labels_at_points.append(
                    point_sample(tgt_masks, coords, align_corners=False)[:, 0])  # [M_b, P]
            logits_at_points.append(
                point_sample(src_masks, coords, align_corners=False)[:, 0].float())  # [M_b, P]
        if not logits_at_points:
            zero = pred_masks.sum() * 0.0  # keeps the graph: zero gradient, not None
            return {"loss_mask": zero.float(), "loss_dice": zero.float().clone()}
        point_logits = torch.cat(logits_at_points)
        point_labels = torch.cat(labels_at_points)
        return {
            "loss_mask": sigmoid_ce_loss(point_logits, point_labels, num_masks),
            "loss_dice": dice_loss(point_logits, point_labels, num_masks),
        }

    # ----------------------------------------------------------------- forward

    def num_masks(self, targets: Sequence[dict[str, Any]], device: torch.device | str) -> float:
        """Number of target masks per process, averaged over processes, at least 1.

        Each process holds a shard of the global batch and sums its mask losses over
        its own masks. Dividing by the *global* number of masks divided by the world
        size W (``all_reduce`` sum / W) makes the loss of process p equal to
        ``W * (sum of mask losses on p) / (global number of masks)``. DDP averages
        gradients over the W processes, so the effective gradient is
        ``(sum over all processes of mask losses) / (global number of masks)``, i.e.
        exactly that of one process holding the whole global batch (whose W is 1).
        Dividing by the local count instead would weight a mask by how crowded its
        shard is. (Matching and sampling are per image and seeded per sample, so they
        are shard-independent too; the CE term's weight sum is all-reduced the same
        way: :func:`~vocabseg.engine.distributed.global_normaliser`.) The minimum of 1
        only matters for (nearly) empty global batches.
        """
        count = sum(int(t["labels"].numel()) for t in targets)
        return max(global_normaliser(count), 1.0)

    def get_loss(self, name: str, outputs: Mapping[str, Any], targets: Sequence[dict[str, Any]],
                 indices: Indices, num_masks: float, layer: int = 0) -> dict[str, Tensor]:
        fn = {"labels": self.loss_labels, "masks": self.loss_masks}[name]
        return fn(outputs, targets, indices, num_masks, layer=layer)

    def forward(
        self,
        outputs: Mapping[str, Any],
        targets: Sequence[dict[str, Any]],
        num_masks: float | None = None,
    ) -> dict[str, Tensor]:
        """Compute all unweighted losses.

        Args:
            outputs: ``"pred_logits"`` [B, Q, K+1], ``"pred_masks"`` [B, Q, h, w] and
                optionally ``"aux_outputs"``: list of dicts with the same two keys.
            targets: B dicts ``{"labels": [N_b] long, "masks": [N_b, H, W] bool,
                "seed": int}``, optionally ``"ignore_queries"``: bool [Q] (see
                :meth:`loss_labels`, applied with each layer's own matching); N_b may be 0.
            num_masks: override of the normaliser (default: :meth:`num_masks`, which
                all-reduces when torch.distributed is initialised).

        Returns:
            ``{"loss_ce", "loss_mask", "loss_dice"}`` plus ``"{name}_{i}"`` for every
            ``aux_outputs[i]``; scalar tensors, differentiable w.r.t. the predictions.
        """
        if num_masks is None:
            num_masks = self.num_masks(targets, outputs["pred_logits"].device)
        aux = outputs.get("aux_outputs") or []
        losses: dict[str, Tensor] = {}
        # The final layer uses salt 0 and aux_outputs[i] salt i + 1.
        indices = self.matcher(outputs, targets, stream=0)
        for name in self.losses:
            losses.update(self.get_loss(name, outputs, targets, indices, num_masks, layer=0))
        for i, aux_outputs in enumerate(aux):
            indices = self.matcher(aux_outputs, targets, stream=i + 1)
            for name in self.losses:
                layer_losses = self.get_loss(name, aux_outputs, targets, indices, num_masks,
                                             layer=i + 1)
                losses.update({f"{k}_{i}": v for k, v in layer_losses.items()})
        return losses

    def weighted_total(self, losses: Mapping[str, Tensor]) -> Tensor:
        """``sum_k weight_dict[k] * losses[k]`` over the keys present in ``weight_dict``.

        Losses without a weight (e.g. aux losses with deep supervision off) are
        ignored, as upstream.
        """
        terms = [losses[k] * self.weight_dict[k] for k in losses if k in self.weight_dict]
        if not terms:
            raise ValueError(f"no loss in {sorted(losses)} has a weight in weight_dict")
        return torch.stack(terms).sum()

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, eos_coef={self.eos_coef}, "
                f"losses={self.losses}, num_points={self.num_points}, "
                f"oversample_ratio={self.oversample_ratio}, "
                f"importance_sample_ratio={self.importance_sample_ratio}")


def build_criterion(
    num_classes: int,
    *,
    class_weight: float = 2.0,
    mask_weight: float = 5.0,
    dice_weight: float = 5.0,
    no_object_weight: float = 0.1,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    deep_supervision: bool = True,
    num_aux: int = 9,
) -> SetCriterion:
    """The FC-CLIP training criterion (matcher costs = loss weights, as upstream).

    ``num_aux`` is the number of intermediate decoder outputs (dec_layers - 1 = 9 for
    FC-CLIP); with ``deep_supervision`` their losses are weighted like the final ones.
    """
    matcher = HungarianMatcher(cost_class=class_weight, cost_mask=mask_weight,
                               cost_dice=dice_weight, num_points=num_points)
    weight_dict = {"loss_ce": class_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
    if deep_supervision:
        base = dict(weight_dict)
        for i in range(num_aux):
            weight_dict.update({f"{k}_{i}": v for k, v in base.items()})
    return SetCriterion(num_classes, matcher, weight_dict, eos_coef=no_object_weight,
                        losses=("labels", "masks"), num_points=num_points,
                        oversample_ratio=oversample_ratio,
                        importance_sample_ratio=importance_sample_ratio)
