"""Small building blocks shared by the ContMAV encoder, context module and decoders.

* :class:`ConvBNAct`: conv (no bias) -> BatchNorm -> ReLU, the ESANet/ContMAV unit of
  the skip adapters, the pyramid pooling branches and the decoder modules.
* :class:`LearnedUpsample`: ContMAV's ``learned-3x3-zeropad`` x2 upsampling (nearest
  neighbour, then a trainable depth-wise 3x3 conv initialised to a bilinear-like
  kernel).
* :func:`he_init_`: the He (Kaiming) initialisation ContMAV applies to the network,
  with explicit exclusions (the learned upsamplers keep their bilinear kernel, the
  class heads keep PyTorch's default initialisation).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ConvBNAct", "LearnedUpsample", "BILINEAR_KERNEL", "he_init_", "resize_to"]

#: Initial kernel of :class:`LearnedUpsample`: ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16``.
BILINEAR_KERNEL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


class ConvBNAct(nn.Sequential):
    """``Conv2d(bias=False) -> BatchNorm2d -> ReLU`` with "same" padding.

    ``forward(x [B, C_in, H, W]) -> [B, C_out, H / stride, W / stride]``.
    Keys: ``0`` (conv), ``1`` (bn).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class LearnedUpsample(nn.Module):
    """x2 upsampling: nearest neighbour, then a depth-wise 3x3 conv with zero padding 1.

    The conv (``conv``, ``groups=channels``, with bias) starts as :data:`BILINEAR_KERNEL`
    on every channel and bias 0, so at initialisation the output is a smoothed nearest
    upsampling (close to bilinear); it is trained with the rest of the network.

    ``forward(x [B, C, H, W]) -> [B, C, 2H, 2W]``.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(BILINEAR_KERNEL.expand(channels, 1, 3, 3))
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def resize_to(x: Tensor, size: tuple[int, int], mode: str = "nearest") -> Tensor:
    """``x`` [B, C, h, w] resized to ``size`` = (H, W) if it differs, else ``x`` itself.

    Used where an x2 upsampling of an odd-sized map does not land exactly on the skip
    or input size (inputs not divisible by 32).
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def he_init_(module: nn.Module, exclude: Iterable[nn.Module] = ()) -> None:
    """He-initialise every ``nn.Conv2d`` in ``module`` except those in ``exclude``.

    Convs: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``, bias 0.
    BatchNorm: weight 1, bias 0 (running statistics untouched). ``nn.Linear`` layers
    keep PyTorch's default initialisation.
    """
    skip = {id(m) for m in exclude}
    for sub in module.modules():
        if id(sub) in skip:
            continue
        if isinstance(sub, nn.Conv2d):
            nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.BatchNorm2d):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
