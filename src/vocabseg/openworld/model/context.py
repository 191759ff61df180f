"""ContMAV's context module: an adaptive pyramid pooling module (PSPNet style).

It sits between the encoder's 1/32 output and both decoders. Each branch average-pools
the map to a ``bin x bin`` grid (scaled with the input, see below), projects it with a
1x1 ConvBNAct and resizes it back with **nearest** interpolation (the factor is not 2,
so the learned x2 upsampler cannot be used). The input and all branches are
concatenated and fused by another 1x1 ConvBNAct.

Grid scaling ("adaptive"): with ``input_size = (h0, w0)``, the 1/32 size at training
resolution, a map of size (h, w) is pooled to ``(bin * m_h, bin * m_w)`` where
``m = max(1, round(h / h0))``: 1 at training resolution, 2 when testing at twice the
resolution, so every grid cell covers the same image area. Without ``input_size``
``m = 1`` at every resolution.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvBNAct

__all__ = ["AdaptivePyramidPooling"]


class AdaptivePyramidPooling(nn.Module):
    """Adaptive pyramid pooling.

    Args:
        in_channels: C (512 for ResNet34).
        out_channels: output channels (512 in ContMAV).
        bins: pooled grid sizes at training resolution, ``(1, 2, 4, 8)``.
        branch_channels: channels of each branch (128 in ContMAV).
        input_size: (h0, w0) of the map at training resolution, e.g. (16, 32) for
            512x1024 crops; None disables the scaling.

    ``forward(x [B, C, h, w]) -> [B, out_channels, h, w]``:
    ``fuse(cat[x, up(branch_1(pool_1(x))), ..., up(branch_n(pool_n(x)))])`` with
    ``C + n * branch_channels`` channels before ``fuse``.
    Keys: ``branches.{i}.{0,1}`` (conv, bn), ``fuse.{0,1}``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bins: Sequence[int] = (1, 2, 4, 8),
        branch_channels: int = 128,
        input_size: tuple[int, int] | None = None,
    ):
        super().__init__()
        self.bins = tuple(int(b) for b in bins)
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))
        self.branches = nn.ModuleList(ConvBNAct(in_channels, branch_channels, 1) for _ in self.bins)
        self.fuse = ConvBNAct(in_channels + len(self.bins) * branch_channels, out_channels, 1)

    def grid_scale(self, size: tuple[int, int]) -> tuple[int, int]:
        """(m_h, m_w) for a map of ``size`` = (h, w); (1, 1) without ``input_size``."""
        if self.input_size is None:
            return 1, 1
        return (max(1, round(size[0] / self.input_size[0])), max(1, round(size[1] / self.input_size[1])))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        m_h, m_w = self.grid_scale((h, w))
        outs = [x]
        for bin_size, branch in zip(self.bins, self.branches):
            pooled = F.adaptive_avg_pool2d(x, (bin_size * m_h, bin_size * m_w))
            outs.append(F.interpolate(branch(pooled), size=(h, w), mode="nearest"))
        return self.fuse(torch.cat(outs, dim=1))
