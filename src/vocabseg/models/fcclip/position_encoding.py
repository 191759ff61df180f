"""Sine positional encoding of DETR / Mask2Former for 2-D feature maps."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["PositionEmbeddingSine"]


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of the (y, x) position of every pixel.

    ``forward(x [B, C, H, W], mask [B, H, W] bool or None) -> [B, 2 * num_pos_feats, H, W]``;
    the first ``num_pos_feats`` channels encode y, the rest x; within each half the
    channels alternate sin, cos with frequencies ``temperature ** (-2 * (i // 2) /
    num_pos_feats)``. Positions are cumulative counts of unmasked pixels (1-based);
    with ``normalize`` they are divided by the row / column total (+1e-6) and scaled
    by ``scale`` (None = 2 pi). Only the shape, device and mask of ``x`` are used;
    the result is float32. The defaults are the pixel decoder's settings (DETR's
    class defaults were ``num_pos_feats=64, normalize=False``).
    """

    def __init__(
        self,
        num_pos_feats: int = 128,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("scale is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        batch, _, height, width = x.shape
        if mask is None:
            not_mask = torch.ones((batch, height, width), dtype=torch.bool, device=x.device)
        else:
            not_mask = ~mask
        y_pos = not_mask.cumsum(1, dtype=torch.float32)
        x_pos = not_mask.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_pos = y_pos / (y_pos[:, -1:, :] + eps) * self.scale
            x_pos = x_pos / (x_pos[:, :, -1:] + eps) * self.scale
        index = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        freq = self.temperature ** (2 * torch.div(index, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_pos[..., None] / freq  # [B, H, W, F]
        pos_y = y_pos[..., None] / freq
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"normalize={self.normalize}, scale={self.scale}"
        )
