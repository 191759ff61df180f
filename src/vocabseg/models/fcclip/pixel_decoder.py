"""Mask2Former's multi-scale deformable-attention pixel decoder (as used by FC-CLIP).

The 1/8, 1/16 and 1/32 backbone maps (res3..res5) are projected to ``conv_dim``
channels (1x1 conv + GroupNorm), flattened into one token sequence and refined by a
post-norm deformable-attention transformer encoder (every pixel of every level is
a query, sampling all three levels). The refined 1/8 map is then upsampled and
added to a lateral projection of res2 (1/4) in one FPN step, and a 1x1 conv gives
the mask features.

State-dict keys (relative to ``sem_seg_head.pixel_decoder.``) equal upstream's:
``input_proj.{i}.{0,1}`` (i = 0, 1, 2 for res5, res4, res3), ``transformer.level_embed``,
``transformer.encoder.layers.{j}.{self_attn.*, norm1, linear1, linear2, norm2}``,
``mask_features``, ``adapter_1(.norm)`` and ``layer_1(.norm)``.
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine

__all__ = [
    "Conv2d",
    "MSDeformAttnEncoderLayer",
    "MSDeformAttnEncoder",
    "MSDeformAttnTransformerEncoderOnly",
    "MSDeformAttnPixelDecoder",
    "c2_xavier_fill",
]


def c2_xavier_fill(module: nn.Module) -> None:
    """Caffe2's "XavierFill": kaiming-uniform with a=1 on the weight, zero bias."""
    nn.init.kaiming_uniform_(module.weight, a=1)
    if module.bias is not None:
        nn.init.zeros_(module.bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` followed by an optional ``norm`` submodule and ``activation``
    (detectron2's layout: the norm's parameters live under ``<name>.norm``)."""

    def __init__(
        self,
        *args,
        norm: nn.Module | None = None,
        activation: Callable[[Tensor], Tensor] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


class MSDeformAttnEncoderLayer(nn.Module):
    """Post-norm encoder layer: deformable self-attention, then a ReLU FFN.

    ``forward(src [N, S, C], pos [N, S, C], reference_points [N, S, L, 2],
    spatial_shapes [L, 2], level_start_index [L], padding_mask [N, S] | None) -> [N, S, C]``.
    """

    def __init__(
        self,
        d_model: int = 256,
        d_ffn: int = 1024,
        dropout: float = 0.1,
        n_levels: int = 3,
        n_heads: int = 8,
        n_points: int = 4,
    ):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        src: Tensor,
        pos: Tensor,
        reference_points: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attended))
        hidden = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(hidden))


class MSDeformAttnEncoder(nn.Module):
    """``num_layers`` independent copies of one encoder layer (keys ``layers.{j}``)."""

    def __init__(self, layer: MSDeformAttnEncoderLayer, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    @staticmethod
    def reference_points(shapes: Sequence[tuple[int, int]], num_levels: int, device, dtype=torch.float32) -> Tensor:
        """Normalised pixel centres (x, y) of every token, repeated over the levels: [1, S, L, 2]."""
        points = []
        for h, w in shapes:
            ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=-1))
        points = torch.cat(points, dim=0)  # [S, 2]
        return points[None, :, None, :].expand(1, -1, num_levels, 2)

    def forward(
        self,
        src: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        pos: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """src, pos: [N, S, C] -> [N, S, C]."""
        shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
        reference = self.reference_points(shapes, len(shapes), src.device, src.dtype)
        reference = reference.expand(src.shape[0], -1, -1, -1)
        out = src
        for layer in self.layers:
            out = layer(out, pos, reference, spatial_shapes, level_start_index, padding_mask)
        return out


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds level embeddings to the positions, runs the encoder.

    ``forward(srcs: list of [N, C, H_l, W_l], pos_embeds: same shapes) ->
    (memory [N, S, C], spatial_shapes [L, 2], level_start_index [L])``.
    No padding mask is used (every token is valid, as upstream where the masks
    are all False).
    """

    def __init__(
        self,
        d_model: int = 256,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        dim_feedforward: int = 1024,
        dropout: float = 0.1,
        num_feature_levels: int = 3,
        enc_n_points: int = 4,
    ):
        super().__init__()
        layer = MSDeformAttnEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points)
        self.encoder = MSDeformAttnEncoder(layer, num_encoder_layers)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: Sequence[Tensor], pos_embeds: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        tokens, positions, shapes = [], [], []
        for level, (src, pos) in enumerate(zip(srcs, pos_embeds)):
            shapes.append(src.shape[-2:])
            tokens.append(src.flatten(2).transpose(1, 2))
            positions.append(pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1))
        tokens = torch.cat(tokens, dim=1)
        positions = torch.cat(positions, dim=1)
        spatial_shapes = torch.as_tensor([tuple(s) for s in shapes], dtype=torch.long, device=tokens.device)
        sizes = spatial_shapes.prod(1)
        level_start_index = torch.cat((sizes.new_zeros(1), sizes.cumsum(0)[:-1]))
        memory = self.encoder(tokens, spatial_shapes, level_start_index, positions)
        return memory, spatial_shapes, level_start_index


class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention pixel decoder of Mask2Former / FC-CLIP.

    Args:
        in_channels: channels of the backbone maps, e.g. ``{"res2": 192, ..., "res5": 1536}``.
        strides: their strides, e.g. ``{"res2": 4, "res3": 8, "res4": 16, "res5": 32}``.
        conv_dim: width of the encoder and the FPN.
        mask_dim: channels of the mask features.
        transformer_in_features: maps fed to the encoder.
        enc_layers, nheads, dim_feedforward, dropout, n_points: encoder settings.
        common_stride: stride of the mask features; one FPN step per octave between
            it and the finest encoder map.
    """

    def __init__(
        self,
        in_channels: Mapping[str, int],
        strides: Mapping[str, int],
        *,
        conv_dim: int = 256,
        mask_dim: int = 256,
        transformer_in_features: Sequence[str] = ("res3", "res4", "res5"),
        enc_layers: int = 6,
        nheads: int = 8,
        dim_feedforward: int = 1024,
        dropout: float = 0.0,
        n_points: int = 4,
        common_stride: int = 4,
    ):
        super().__init__()
        missing = [k for k in transformer_in_features if k not in in_channels or k not in strides]
        if missing or set(in_channels) != set(strides):
            raise ValueError(
                f"in_channels and strides must give the same maps, including {list(transformer_in_features)}"
            )
        # all maps, fine to coarse ("res2" .. "res5")
        self.in_features = sorted(in_channels, key=lambda k: strides[k])
        self.feature_strides = [strides[k] for k in self.in_features]
        self.feature_channels = [in_channels[k] for k in self.in_features]
        # encoder maps, fine to coarse
        self.transformer_in_features = sorted(transformer_in_features, key=lambda k: strides[k])
        self.transformer_feature_strides = [strides[k] for k in self.transformer_in_features]
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # input projections, coarse to fine (res5 first)
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels[k], conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for k in self.transformer_in_features[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.zeros_(proj[0].bias)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            nhead=nheads,
            num_encoder_layers=enc_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        c2_xavier_fill(self.mask_features)

        self.maskformer_num_feature_levels = 3  # the transformer decoder always takes 3 scales
        self.common_stride = common_stride
        finest = min(self.transformer_feature_strides)
        self.num_fpn_levels = int(math.log2(finest) - math.log2(common_stride))

        lateral_convs, output_convs = [], []
        for idx, channels in enumerate(self.feature_channels[: self.num_fpn_levels]):
            lateral = Conv2d(channels, conv_dim, kernel_size=1, bias=False, norm=nn.GroupNorm(32, conv_dim))
            output = Conv2d(
                conv_dim,
                conv_dim,
                kernel_size=3,
                stride=1,
                padding=1,
                bias=False,
                norm=nn.GroupNorm(32, conv_dim),
                activation=F.relu,
            )
            c2_xavier_fill(lateral)
            c2_xavier_fill(output)
            self.add_module(f"adapter_{idx + 1}", lateral)
            self.add_module(f"layer_{idx + 1}", output)
            lateral_convs.append(lateral)
            output_convs.append(output)
        # plain lists (no extra state-dict keys), coarse to fine
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    def forward_features(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Run the decoder in float32 (autocast off).

        Args:
            features: backbone maps by name, ``features[k]`` [B, C_k, H/stride_k, W/stride_k]
                (extra entries are ignored).

        Returns:
            mask_features [B, mask_dim, H/4, W/4]; the encoder's 1/32 map
            [B, conv_dim, H/32, W/32]; multi_scale_features, the three encoder maps
            at 1/32, 1/16, 1/8 (in that order), each [B, conv_dim, ., .].
        """
        device_type = features[self.transformer_in_features[0]].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            srcs, pos = [], []
            for idx, name in enumerate(self.transformer_in_features[::-1]):
                x = features[name].float()
                srcs.append(self.input_proj[idx](x))
                pos.append(self.pe_layer(x))
            memory, spatial_shapes, _ = self.transformer(srcs, pos)
            batch = memory.shape[0]
            shapes = [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
            out = [
                level.transpose(1, 2).reshape(batch, -1, h, w)
                for level, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)
            ]
            for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
                lateral = self.lateral_convs[idx](features[name].float())
                top_down = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
                out.append(self.output_convs[idx](lateral + top_down))
            multi_scale_features = out[: self.maskformer_num_feature_levels]
            return self.mask_features(out[-1]), out[0], multi_scale_features

    def forward(self, features: Mapping[str, Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Same as :meth:`forward_features`."""
        return self.forward_features(features)
