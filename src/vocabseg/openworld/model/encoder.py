"""ContMAV's encoder: a ResNet34 whose basic blocks are ERFNet NonBottleneck-1D blocks.

ContMAV (Sodano et al., CVPR 2024, Sec. 3.1) replaces every 3x3 convolution of the
ResNet34 basic block by a 3x1 then a 1x3 convolution with a ReLU in between
(Romera et al., ERFNet). The stage layout is ResNet34's: a 7x7/2 stem and a 3x3/2
max-pool, then 3, 4, 6, 3 blocks at 1/4, 1/8, 1/16 and 1/32 with ``w, 2w, 4w, 8w``
channels (``w = 64`` in the paper; smaller widths are allowed for CPU experiments).
The first block of stages 2-4 has stride 2 and a 1x1 conv + BN on the identity path.

``block="basic"`` builds the plain ResNet34 basic block instead (torchvision's
layout), so that a torchvision ImageNet checkpoint loads completely; it is an
ablation, not the paper's encoder.

Pretrained weights (:func:`load_encoder_weights`) are read from a path, never
downloaded. Which keys map is stated there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor, nn

from vocabseg.errors import InputError
from vocabseg.fileio import torch_load_checked

__all__ = [
    "NonBottleneck1D",
    "BasicBlock",
    "ResNet34Encoder",
    "EncoderLoadReport",
    "load_encoder_weights",
    "torchvision_keys_for",
    "BLOCKS",
]

BLOCKS = ("nbt1d", "basic")


class NonBottleneck1D(nn.Module):
    """ERFNet NonBottleneck-1D residual block (ContMAV / ESANet variant).

    In order (``s`` = stride, ``d`` = dilation)::

        conv3x1_1 (3x1, stride (s, 1), bias)  -> ReLU
        conv1x3_1 (1x3, stride (1, s), bias)  -> bn1 (eps 1e-3) -> ReLU
        conv3x1_2 (3x1, dilation (d, 1), bias) -> ReLU
        conv1x3_2 (1x3, dilation (1, d), bias) -> bn2 (eps 1e-3)
        [Dropout2d(p) if p > 0]
        + identity (or ``downsample(x)``) -> ReLU

    ``forward(x [B, C_in, H, W]) -> [B, C_out, H / s, W / s]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        d = dilation
        self.conv3x1_1 = nn.Conv2d(in_channels, out_channels, (3, 1), stride=(stride, 1), padding=(1, 0), bias=True)
        self.conv1x3_1 = nn.Conv2d(out_channels, out_channels, (1, 3), stride=(1, stride), padding=(0, 1), bias=True)
        self.bn1 = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.conv3x1_2 = nn.Conv2d(out_channels, out_channels, (3, 1), padding=(d, 0), dilation=(d, 1), bias=True)
        self.conv1x3_2 = nn.Conv2d(out_channels, out_channels, (1, 3), padding=(0, d), dilation=(1, d), bias=True)
        self.bn2 = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.conv3x1_1(x))
        out = self.relu(self.bn1(self.conv1x3_1(out)))
        out = self.relu(self.conv3x1_2(out))
        out = self.dropout(self.bn2(self.conv1x3_2(out)))
        return self.relu(out + identity)


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: ``3x3 conv -> bn1 -> ReLU -> 3x3 conv -> bn2``,
    plus identity (or ``downsample(x)``), then ReLU. Keys as torchvision
    (``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample.{0,1}``).

    ``forward(x [B, C_in, H, W]) -> [B, C_out, H / s, W / s]``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _make_stage(block: str, in_channels: int, out_channels: int, num_blocks: int, stride: int) -> nn.Sequential:
    """``num_blocks`` blocks; the first one has ``stride`` and, if the shape changes,
    a ``1x1 conv (no bias) -> BN`` downsample on the identity path."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )
    make = NonBottleneck1D if block == "nbt1d" else BasicBlock
    blocks = [make(in_channels, out_channels, stride=stride, downsample=downsample)]
    blocks += [make(out_channels, out_channels) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNet34Encoder(nn.Module):
    """ResNet34 trunk with NonBottleneck-1D (default) or basic blocks.

    Args:
        block: ``"nbt1d"`` (ContMAV) or ``"basic"`` (torchvision ResNet34).
        layers: blocks per stage, ``(3, 4, 6, 3)`` for ResNet34.
        width: channels of stage 1; stages have ``width * (1, 2, 4, 8)`` (64 -> 64..512).

    ``forward(x [B, 3, H, W])`` returns the four stage outputs
    ``[B, w, H/4, W/4], [B, 2w, H/8, W/8], [B, 4w, H/16, W/16], [B, 8w, H/32, W/32]``
    (sizes rounded up for odd inputs, as for any strided conv).

    Keys: ``conv1``, ``bn1`` (stem), ``layer{1..4}.{j}.*`` (block keys), with
    ``layer{2,3,4}.0.downsample.{0,1}``. No classifier (``fc``).
    """

    def __init__(self, block: str = "nbt1d", layers: Sequence[int] = (3, 4, 6, 3), width: int = 64):
        super().__init__()
        if block not in BLOCKS:
            raise InputError(f"encoder block {block!r}: choose one of {list(BLOCKS)}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise InputError(f"encoder layers {list(layers)}: need 4 positive block counts")
        self.block = block
        self.channels = tuple(width * m for m in (1, 2, 4, 8))
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        c = self.channels
        self.layer1 = _make_stage(block, c[0], c[0], int(layers[0]), stride=1)
        self.layer2 = _make_stage(block, c[0], c[1], int(layers[1]), stride=2)
        self.layer3 = _make_stage(block, c[1], c[2], int(layers[2]), stride=2)
        self.layer4 = _make_stage(block, c[2], c[3], int(layers[3]), stride=2)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s1 = self.layer1(x)
        s2 = self.layer2(s1)
        s3 = self.layer3(s2)
        s4 = self.layer4(s3)
        return [s1, s2, s3, s4]


# ------------------------------------------------------------------ pretrained weights
@dataclass
class EncoderLoadReport:
    """What :func:`load_encoder_weights` did.

    layout: ``"torchvision"`` or ``"own"`` (the file's key layout).
    loaded: encoder keys taken from the file.
    kept: encoder keys not in the mapping or absent from the file (keep their init).
    unused: file keys that were not loaded (e.g. ``fc.*``, or the 3x3 block convs of a
        torchvision file for the NonBottleneck-1D encoder).
    """

    layout: str
    loaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)


def _is_block_key(key: str) -> bool:
    """``layer{i}.{j}.<name>...`` outside the ``downsample`` branch."""
    parts = key.split(".")
    return len(parts) >= 3 and parts[0].startswith("layer") and parts[2] != "downsample"


def torchvision_keys_for(encoder: ResNet34Encoder) -> list[str]:
    """Encoder keys that a torchvision ``resnet34`` state dict provides (same names).

    * ``block="basic"``: every key (stem, all blocks, downsamples).
    * ``block="nbt1d"``: the stem (``conv1.weight``, ``bn1.*``) and the identity
      downsamples ``layer{2,3,4}.0.downsample.{0.weight, 1.*}`` only. The block keys
      are not mapped: torchvision's ``conv1``/``conv2`` are 3x3 kernels with no 3x1/1x3
      counterpart, and although ``bn1``/``bn2`` have matching names and shapes, their
      statistics belong to the outputs of those 3x3 convs.
    """
    keys = list(encoder.state_dict())
    if encoder.block == "basic":
        return keys
    return [k for k in keys if not _is_block_key(k)]


def _strip_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop a common ``module.`` (DDP) and/or ``encoder.`` prefix."""
    for prefix in ("module.", "encoder."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_encoder_weights(encoder: ResNet34Encoder, path: str | os.PathLike) -> EncoderLoadReport:
    """Load ImageNet weights from ``path`` into ``encoder`` (in place).

    The file holds a ``{name: tensor}`` state dict, optionally under ``"state_dict"``
    or ``"model"``, optionally with a ``module.`` and/or ``encoder.`` key prefix (both
    stripped). Two layouts are recognised:

    * **torchvision** (``layer1.0.conv1.weight`` or ``fc.weight`` present, e.g.
      ``resnet34-b627a593.pth``):
      the keys of :func:`torchvision_keys_for` are loaded by identical name; ``fc.*``
      and, for the NonBottleneck-1D encoder, every block key are left unused.
    * **own** (anything else, e.g. an ImageNet-trained NonBottleneck-1D ResNet34 saved
      from this class or ESANet's ``r34_NBt1D.pth``): every encoder key present in
      the file is loaded by identical name.

    :class:`InputError` naming ``path`` if the file is missing or unreadable, is not a
    state dict, has a mapped key with another shape (e.g. ``width != 64``), or
    provides none of the encoder's keys.
    """
    path = os.fspath(path)
    data = torch_load_checked(path, "encoder weights")
    for wrapper in ("state_dict", "model"):
        if isinstance(data, dict) and isinstance(data.get(wrapper), dict):
            data = data[wrapper]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise InputError(f"{path}: not a state dict of encoder weights ({{name: tensor}})")
    state = _strip_prefix(dict(data))
    layout = "torchvision" if ("layer1.0.conv1.weight" in state or "fc.weight" in state) else "own"
    candidates = torchvision_keys_for(encoder) if layout == "torchvision" else list(encoder.state_dict())

    own = encoder.state_dict()
    loaded = [k for k in candidates if k in state]
    misshaped = [f"{k} (file {list(state[k].shape)}, encoder {list(own[k].shape)})"
                 for k in loaded if state[k].shape != own[k].shape]
    if misshaped:
        raise InputError(f"{path}: encoder weights do not fit the encoder: {len(misshaped)} mis-shaped key(s): "
                         + ", ".join(misshaped[:5]))
    if not loaded:
        raise InputError(f"{path}: no key of the ResNet34 encoder found (e.g. 'conv1.weight', 'layer1.0.*')")
    with torch.no_grad():
        for key in loaded:
            own[key].copy_(state[key])
    loaded_set = set(loaded)
    return EncoderLoadReport(
        layout=layout,
        loaded=loaded,
        kept=[k for k in own if k not in loaded_set],
        unused=[k for k in state if k not in loaded_set],
    )
