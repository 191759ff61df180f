"""Hungarian matching of predicted masks to ground-truth segments (Mask2Former).

The cost of assigning query ``q`` to target ``t`` is::

    C[q, t] = cost_class * (-p_q[label_t])
            + cost_mask  * mean over points of BCE(sigmoid(m_q), g_t)
            + cost_dice  * dice(sigmoid(m_q), g_t)

where the mask terms are evaluated on ``num_points`` uniformly random points shared
by all predictions and targets of one image. Matching is done image by image (the
memory-efficient variant), in float32 with autocast off, and solved exactly with
``scipy.optimize.linear_sum_assignment``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from .point_sampling import point_sample, random_points, seeded_generator

__all__ = ["HungarianMatcher", "batch_dice_cost", "batch_sigmoid_ce_cost", "MATCHER_STREAM"]

#: Salt that separates the matcher's random points from the loss's (see ``derive_seed``).
MATCHER_STREAM = 0x4D41_5443  # "MATC"


def batch_dice_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise dice loss between every prediction and every target.

    Args:
        inputs: [Q, P] mask logits at P points.
        targets: [N, P] binary (0/1 float) target values at the same points.

    Returns:
        [Q, N] ``1 - (2 |s * g| + 1) / (|s| + |g| + 1)`` with ``s = sigmoid(inputs)``.
    """
    probs = inputs.sigmoid()
    numerator = 2.0 * probs @ targets.t()
    denominator = probs.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1.0 - (numerator + 1.0) / (denominator + 1.0)


def batch_sigmoid_ce_cost(inputs: Tensor, targets: Tensor) -> Tensor:
    """Pairwise sigmoid binary cross-entropy, averaged over points.

    Args:
        inputs: [Q, P] mask logits at P points.
        targets: [N, P] binary (0/1 float) target values at the same points.

    Returns:
        [Q, N] ``mean_p BCE(inputs[q, p], targets[n, p])``.
    """
    num_points = inputs.shape[1]
    pos = F.binary_cross_entropy_with_logits(inputs, torch.ones_like(inputs), reduction="none")
    neg = F.binary_cross_entropy_with_logits(inputs, torch.zeros_like(inputs), reduction="none")
    cost = pos @ targets.t() + neg @ (1.0 - targets).t()
    return cost / num_points


class HungarianMatcher(nn.Module):
    """One-to-one assignment of queries to targets, per image.

    Args:
        cost_class: weight of the classification cost ``-p[target class]``.
        cost_mask: weight of the point-averaged sigmoid BCE cost.
        cost_dice: weight of the dice cost.
        num_points: number of uniformly random points per image for the mask costs.
    """

    def __init__(
        self,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        super().__init__()
        assert cost_class != 0 or cost_mask != 0 or cost_dice != 0, "all costs are 0"
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(
        self,
        pred_logits: Tensor,
        pred_masks: Tensor,
        tgt_labels: Tensor,
        tgt_masks: Tensor,
        point_coords: Tensor,
    ) -> Tensor:
        """Weighted cost matrix of one image on given points.

        Args:
            pred_logits: [Q, K+1] class logits.
            pred_masks: [Q, h, w] mask logits.
            tgt_labels: [N] class indices in ``0..K-1``.
            tgt_masks: [N, H, W] bool or float target masks (any resolution).
            point_coords: [P, 2] normalised ``(x, y)`` points shared by all masks.

        Returns:
            [Q, N] float32 cost matrix.
        """
        with torch.autocast(device_type=pred_masks.device.type, enabled=False):
            prob = pred_logits.float().softmax(-1)  # [Q, K+1]
            cost_class = -prob[:, tgt_labels]  # [Q, N]

            coords = point_coords.float()[None]  # [1, P, 2]
            out = point_sample(pred_masks.float()[:, None],
                               coords.expand(pred_masks.shape[0], -1, -1),
                               align_corners=False)[:, 0]  # [Q, P]
            tgt = point_sample(tgt_masks.float()[:, None],
                               coords.expand(tgt_masks.shape[0], -1, -1),
                               align_corners=False)[:, 0]  # [N, P]
            cost_mask = batch_sigmoid_ce_cost(out, tgt)
            cost_dice = batch_dice_cost(out, tgt)
            return (self.cost_mask * cost_mask + self.cost_class * cost_class
                    + self.cost_dice * cost_dice)

    @torch.no_grad()
    def forward(
        self,
        outputs: dict[str, Any],
        targets: Sequence[dict[str, Any]],
        stream: int = 0,
    ) -> list[tuple[Tensor, Tensor]]:
        """Match the queries of every image to its targets.

        Args:
            outputs: ``"pred_logits"`` [B, Q, K+1] and ``"pred_masks"`` [B, Q, h, w].
            targets: B dicts with ``"labels"`` [N_b] long, ``"masks"`` [N_b, H, W] bool
                and ``"seed"`` int; the random points of image b come from a generator
                seeded with ``(seed, MATCHER_STREAM, stream)`` (global RNG if no seed).
            stream: extra salt, e.g. the decoder layer, so that layers draw different
                points.

        Returns:
            B pairs ``(pred_idx, tgt_idx)`` of int64 CPU tensors of equal length
            ``min(Q, N_b)``: query ``pred_idx[i]`` is matched to target ``tgt_idx[i]``.
        """
        pred_logits, pred_masks = outputs["pred_logits"], outputs["pred_masks"]
        assert len(targets) == pred_logits.shape[0], (len(targets), pred_logits.shape)
        indices = []
        for b, target in enumerate(targets):
            labels = target["labels"]
            if labels.numel() == 0:
                empty = torch.empty(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            gen = seeded_generator(target.get("seed"), MATCHER_STREAM, stream)
            coords = random_points(1, self.num_points, generator=gen, device=pred_masks.device)[0]
            cost = self.cost_matrix(pred_logits[b], pred_masks[b], labels.to(pred_logits.device),
                                    target["masks"].to(pred_masks.device), coords)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64),
                            torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def extra_repr(self) -> str:
        return (f"cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
                f"cost_dice={self.cost_dice}, num_points={self.num_points}")
