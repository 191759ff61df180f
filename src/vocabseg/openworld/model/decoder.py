"""ContMAV's skip adapters and its two decoders (semantic and contrastive).

Both decoders have the same structure (Sodano et al., Sec. 3.1; SwiftNet-style
modules with NonBottleneck-1D blocks):

* three :class:`DecoderModule` s, each ``3x3 ConvBNAct -> n x NonBottleneck1D ->
  learned x2 upsampling -> + skip``, going 1/32 -> 1/16 -> 1/8 -> 1/4 with channels
  ``(512, 256, 128)`` in the paper;
* a head: a 3x3 conv (with bias) to ``num_outputs`` channels at 1/4, then two
  learned x2 upsamplings on those channels -> full resolution.

The semantic decoder outputs K class logits; the contrastive decoder K-dimensional
features. Both widths are the number of **known** classes (the public code hard-codes
19 for the contrastive decoder, which breaks the 1+16 / 1+17 settings).

The per-module 1x1 "side outputs" of the public code are not built: they are computed
and then discarded there (no deep supervision).

:class:`SkipAdapters` map the encoder stages 1-3 (1/4, 1/8, 1/16) to the decoder
channels with 1x1 ConvBNAct; one set is shared by both decoders, as in ContMAV. Skips
are **added** (``encoder_decoder_fusion add``).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from .encoder import NonBottleneck1D
from .layers import ConvBNAct, LearnedUpsample, resize_to

__all__ = ["SkipAdapters", "DecoderModule", "Decoder"]


class SkipAdapters(nn.Module):
    """1x1 ConvBNAct adapters from encoder stages to decoder channels.

    Args:
        encoder_channels: channels of encoder stages 1, 2, 3 (64, 128, 256).
        decoder_channels: output channels of decoder modules 1, 2, 3 (512, 256, 128).

    ``forward(stages)`` with ``stages = [s1 (1/4), s2 (1/8), s3 (1/16), ...]`` returns
    ``[skip for module 1 (1/16, dec[0] ch), module 2 (1/8, dec[1]), module 3 (1/4, dec[2])]``.
    Keys: ``skip3`` (s3 -> dec[0]), ``skip2`` (s2 -> dec[1]), ``skip1`` (s1 -> dec[2]).
    """

    def __init__(self, encoder_channels: Sequence[int], decoder_channels: Sequence[int]):
        super().__init__()
        self.skip1 = ConvBNAct(encoder_channels[0], decoder_channels[2], 1)
        self.skip2 = ConvBNAct(encoder_channels[1], decoder_channels[1], 1)
        self.skip3 = ConvBNAct(encoder_channels[2], decoder_channels[0], 1)

    def forward(self, stages: Sequence[Tensor]) -> list[Tensor]:
        return [self.skip3(stages[2]), self.skip2(stages[1]), self.skip1(stages[0])]


class DecoderModule(nn.Module):
    """``conv (3x3 ConvBNAct, c_in -> c_out) -> blocks (n NonBottleneck1D) -> upsample
    (learned x2) -> + skip``.

    ``forward(x [B, c_in, h, w], skip [B, c_out, H, W]) -> [B, c_out, H, W]`` with
    ``(H, W) = (2h, 2w)``; if the encoder rounded odd sizes up, the upsampled map is
    resized (nearest) to the skip's size first.
    """

    def __init__(self, in_channels: int, out_channels: int, num_blocks: int = 3):
        super().__init__()
        self.conv = ConvBNAct(in_channels, out_channels, 3)
        self.blocks = nn.Sequential(*(NonBottleneck1D(out_channels, out_channels) for _ in range(num_blocks)))
        self.upsample = LearnedUpsample(out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.upsample(self.blocks(self.conv(x)))
        return resize_to(x, tuple(skip.shape[-2:])) + skip


class Decoder(nn.Module):
    """Three decoder modules and the output head.

    Args:
        in_channels: channels of the context module's output (512).
        channels: output channels of the three modules, ``(512, 256, 128)``.
        num_outputs: K, the number of known classes.
        num_blocks: NonBottleneck-1D blocks per module (3).

    ``forward(x [B, in, H/32, W/32], skips, out_size=(H, W)) -> [B, K, H, W]``, with
    ``skips`` from :class:`SkipAdapters` (1/16, 1/8, 1/4). The head is
    ``head (3x3 conv, bias) -> upsample1 -> upsample2`` (learned x2 each); the result
    is resized bilinearly to ``out_size`` only if it differs (inputs not divisible by 4).
    Keys: ``layers.{0,1,2}`` (modules), ``head``, ``upsample1``, ``upsample2``.
    """

    def __init__(self, in_channels: int, channels: Sequence[int], num_outputs: int, num_blocks: int = 3):
        super().__init__()
        c = [int(v) for v in channels]
        if len(c) != 3:
            raise ValueError(f"decoder channels {c}: need 3 values")
        self.layers = nn.ModuleList([
            DecoderModule(in_channels, c[0], num_blocks),
            DecoderModule(c[0], c[1], num_blocks),
            DecoderModule(c[1], c[2], num_blocks),
        ])
        self.head = nn.Conv2d(c[2], num_outputs, 3, padding=1, bias=True)
        self.upsample1 = LearnedUpsample(num_outputs)
        self.upsample2 = LearnedUpsample(num_outputs)

    def forward(self, x: Tensor, skips: Sequence[Tensor], out_size: tuple[int, int] | None = None) -> Tensor:
        for module, skip in zip(self.layers, skips):
            x = module(x, skip)
        x = self.upsample2(self.upsample1(self.head(x)))
        return x if out_size is None else resize_to(x, out_size, mode="bilinear")
