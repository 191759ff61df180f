"""TruFor-style all-MLP decoder head on the encoder stages, and its fusion with the
contrastive decoder.

The head follows the SegFormer/TruFor ``DecoderHead`` (Guillaro et al., CVPR 2023):

1. each encoder stage i (C_i channels) is projected to E channels by a per-pixel
   linear layer (``proj.{i}``; flatten -> Linear -> reshape);
2. stages 2-4 are resized bilinearly to the 1/4 size of stage 1;
3. the four maps are concatenated (4E) and fused by ``1x1 conv -> BN -> ReLU`` to E;
4. ``Dropout2d(p) -> 1x1 conv`` gives K channels at 1/4 (``classifier``);
5. two learned x2 upsamplings bring them to full resolution (as the FYP transplant
   did; TruFor itself resizes bilinearly).

Here it reads the ResNet34 stages ``(64, 128, 256, 512)`` channels and outputs K (the
number of known classes), E = 768 and p = 0.1 by default.

Fusion with the contrastive decoder output ``c`` (both [B, K, H, W]):

* :class:`NormalizedSumFusion`: ``c / ||c|| + t / ||t||`` per pixel (L2 over
  channels), the seed project's combination. Its norm lies in [0, 2] and is 0 only
  for antiparallel vectors, so the objectosphere loss (``||f||^2 -> 0`` on unknown
  pixels) and the norm-based unknown score can only be satisfied by making the two
  branches cancel.
* :class:`LearnedWeightFusion`: ``g * c + (1 - g) * t`` with a per-channel gate
  ``g = sigmoid(w)``, ``w`` a learned [K] vector starting at 0 (an equal mix). No
  normalisation, so both branches can drive unknown pixels to norm 0.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import LearnedUpsample, resize_to

__all__ = ["MLPDecoderHead", "NormalizedSumFusion", "LearnedWeightFusion", "build_fusion", "FUSIONS"]

FUSIONS = ("normalized_sum", "learned")


class MLPDecoderHead(nn.Module):
    """All-MLP head (SegFormer / TruFor ``DecoderHead``) with learned x2 upsampling.

    Args:
        in_channels: channels of the encoder stages at 1/4, 1/8, 1/16, 1/32.
        num_outputs: K.
        embed_dim: E (768 default; TruFor's configs use 512).
        dropout: Dropout2d probability before the classifier (0.1).

    ``forward(stages [s1 [B, C1, H/4, W/4], ..., s4 [B, C4, H/32, W/32]], out_size=(H, W))
    -> [B, K, H, W]``. Keys: ``proj.{i}`` (Linear C_i -> E), ``fuse.{0,1}`` (conv, BN),
    ``classifier``, ``upsample1``, ``upsample2``.
    """

    def __init__(self, in_channels: Sequence[int], num_outputs: int, embed_dim: int = 768, dropout: float = 0.1):
        super().__init__()
        self.proj = nn.ModuleList(nn.Linear(int(c), embed_dim) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(len(self.proj) * embed_dim, embed_dim, 1, bias=False),
            nn.BatchNorm2d(embed_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(embed_dim, num_outputs, 1)
        self.upsample1 = LearnedUpsample(num_outputs)
        self.upsample2 = LearnedUpsample(num_outputs)

    @staticmethod
    def _linear_per_pixel(linear: nn.Linear, x: Tensor) -> Tensor:
        """[B, C, h, w] -> [B, E, h, w] by ``linear`` on every pixel."""
        b, _, h, w = x.shape
        y = linear(x.flatten(2).transpose(1, 2))  # [B, h*w, E]
        return y.transpose(1, 2).reshape(b, -1, h, w)

    def forward(self, stages: Sequence[Tensor], out_size: tuple[int, int] | None = None) -> Tensor:
        size = tuple(stages[0].shape[-2:])
        maps = [
            resize_to(self._linear_per_pixel(proj, x), size, mode="bilinear") for proj, x in zip(self.proj, stages)
        ]
        x = self.fuse(torch.cat(maps[::-1], dim=1))  # coarsest first, as SegFormer
        x = self.upsample2(self.upsample1(self.classifier(self.dropout(x))))
        return x if out_size is None else resize_to(x, out_size, mode="bilinear")


class NormalizedSumFusion(nn.Module):
    """``F.normalize(c, dim=1) + F.normalize(t, dim=1)`` (no parameters).

    ``forward(c [B, K, H, W], t [B, K, H, W]) -> [B, K, H, W]``; zero vectors stay zero
    (normalisation eps 1e-12).
    """

    def forward(self, contrastive: Tensor, trufor: Tensor) -> Tensor:
        return F.normalize(contrastive, dim=1) + F.normalize(trufor, dim=1)


class LearnedWeightFusion(nn.Module):
    """``g * c + (1 - g) * t`` with ``g = sigmoid(weight)`` per channel.

    ``weight`` [K] starts at 0 (g = 0.5). ``forward(c [B, K, H, W], t [B, K, H, W])
    -> [B, K, H, W]``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(channels))

    def gate(self) -> Tensor:
        """g [K] in (0, 1): the weight of the contrastive decoder per channel."""
        return torch.sigmoid(self.weight)

    def forward(self, contrastive: Tensor, trufor: Tensor) -> Tensor:
        g = self.gate().view(1, -1, 1, 1)
        return g * contrastive + (1.0 - g) * trufor


def build_fusion(name: str, channels: int) -> nn.Module:
    """``"normalized_sum"`` -> :class:`NormalizedSumFusion`; ``"learned"`` ->
    :class:`LearnedWeightFusion` (``channels`` = K)."""
    if name == "normalized_sum":
        return NormalizedSumFusion()
    if name == "learned":
        return LearnedWeightFusion(channels)
    raise ValueError(f"unknown TruFor fusion {name!r}; choose one of {list(FUSIONS)}")
