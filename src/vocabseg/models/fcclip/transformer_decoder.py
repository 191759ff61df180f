"""FC-CLIP's masked-attention transformer decoder (Mask2Former with a CLIP class head).

The decoder refines ``num_queries`` object queries over three feature levels of the
pixel decoder (1/32, 1/16, 1/8, cycled layer by layer). Every layer is
cross-attention (masked by the previous layer's mask prediction) -> self-attention
-> FFN, all post-norm, dropout 0. After the initial queries and after every layer
the prediction heads emit

* mask logits: ``mask_embed(q) . mask_features``;
* class logits: the query plus the projected mask-pooled pixel feature goes through
  ``class_embed`` into CLIP's embedding space and is compared by cosine similarity to
  the text classifier (max over each class's synonyms, plus a void column).

State-dict keys match upstream (``sem_seg_head.predictor.*``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .position_encoding import PositionEmbeddingSine

__all__ = [
    "MultiScaleMaskedTransformerDecoder",
    "MaskPooling",
    "mask_pooling",
    "get_classification_logits",
    "MLP",
]


# --------------------------------------------------------------------- helpers
def mask_pooling(x: Tensor, mask: Tensor) -> Tensor:
    """Average of ``x`` [B, C, H, W] inside each binarised mask ``mask`` [B, Q, h, w].

    Masks are resized bilinearly to (H, W) if needed, binarised with ``> 0`` and
    detached; each is divided by its pixel count + 1e-8 (an empty mask pools to 0).
    The weights are computed in float32 (a pixel count can exceed the float16
    range) and cast to ``x.dtype``. Returns [B, Q, C].
    """
    if mask.shape[-2:] != x.shape[-2:]:
        mask = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=False)
    with torch.no_grad():
        binary = (mask.detach() > 0).float()
        weights = (binary / (binary.sum(dim=(-2, -1), keepdim=True) + 1e-8)).to(x.dtype)
    return torch.einsum("bchw,bqhw->bqc", x, weights)


class MaskPooling(nn.Module):
    """Module form of :func:`mask_pooling` (no parameters)."""

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return mask_pooling(x, mask)


def get_classification_logits(
    x: Tensor, text_classifier: Tensor, logit_scale: Tensor, num_synonyms: Sequence[int]
) -> Tensor:
    """Class logits of embeddings ``x`` [..., D] against ``text_classifier`` [S + 1, D].

    ``text_classifier`` holds the normalised (class, synonym) embeddings in class
    order followed by the void row. ``logits = min(exp(logit_scale), 100) *
    normalize(x) @ T^T``; each class keeps the max over its ``num_synonyms[c]``
    columns and the void column is appended. Returns [..., K + 1].
    """
    num_synonyms = [int(n) for n in num_synonyms]
    total = sum(num_synonyms)
    if text_classifier.shape[0] != total + 1:
        raise ValueError(
            f"text classifier has {text_classifier.shape[0]} rows, expected sum(num_synonyms) + 1 = {total + 1}"
        )
    scale = torch.clamp(logit_scale.exp(), max=100)
    logits = scale * F.normalize(x, dim=-1) @ text_classifier.t()  # [..., S + 1]
    widest = max(num_synonyms)
    # [K, widest] column index per class; short classes repeat their first synonym
    # (a repeated column does not change the max).
    index = []
    start = 0
    for n in num_synonyms:
        cols = list(range(start, start + n))
        index.append(cols + [start] * (widest - n))
        start += n
    index = torch.tensor(index, device=logits.device)
    per_class = logits[..., index].amax(dim=-1)  # [..., K]
    return torch.cat([per_class, logits[..., -1:]], dim=-1)


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them (keys ``layers.{i}``)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x


# ---------------------------------------------------------------------- layers
def _xavier_init(module: nn.Module) -> None:
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class SelfAttentionLayer(nn.Module):
    """Post-norm self-attention over the queries ([Q, B, C] sequence-first)."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: Tensor, query_pos: Tensor | None = None) -> Tensor:
        q = k = _with_pos(tgt, query_pos)
        out = self.self_attn(q, k, value=tgt, need_weights=False)[0]
        return self.norm(tgt + out)


class CrossAttentionLayer(nn.Module):
    """Post-norm (masked) cross-attention from the queries [Q, B, C] to memory [HW, B, C]."""

    def __init__(self, d_model: int, nhead: int):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=0.0)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        memory_mask: Tensor | None = None,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
    ) -> Tensor:
        out = self.multihead_attn(
            query=_with_pos(tgt, query_pos),
            key=_with_pos(memory, pos),
            value=memory,
            attn_mask=memory_mask,
            need_weights=False,
        )[0]
        return self.norm(tgt + out)


class FFNLayer(nn.Module):
    """Post-norm feed-forward block: Linear -> ReLU -> Linear, residual, LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier_init(self)

    def forward(self, tgt: Tensor) -> Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


# --------------------------------------------------------------------- decoder
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """Mask2Former's multi-scale masked-attention decoder with FC-CLIP's class head.

    Args:
        in_channels: channels of the multi-scale features (the pixel decoder's conv_dim).
        hidden_dim: query width. num_queries: number of object queries.
        nheads: attention heads. dim_feedforward: FFN width.
        dec_layers: number of decoder layers (9 upstream).
        mask_dim: channels of the mask features.
        embed_dim: CLIP embedding width (class head output).
        enforce_input_project: 1x1 input projections even when channels match.
        num_feature_levels: levels cycled by the layers (3).
    """

    def __init__(
        self,
        in_channels: int,
        *,
        hidden_dim: int = 256,
        num_queries: int = 250,
        nheads: int = 8,
        dim_feedforward: int = 2048,
        dec_layers: int = 9,
        mask_dim: int = 256,
        embed_dim: int = 768,
        enforce_input_project: bool = False,
        num_feature_levels: int = 3,
    ):
        super().__init__()
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.num_queries = num_queries
        self.num_feature_levels = num_feature_levels

        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)

        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                conv = nn.Conv2d(in_channels, hidden_dim, kernel_size=1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Sequential())

        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        self.mask_pooling = MaskPooling()
        self._mask_pooling_proj = nn.Sequential(nn.LayerNorm(mask_dim), nn.Linear(mask_dim, hidden_dim))
        self.class_embed = MLP(hidden_dim, hidden_dim, embed_dim, 3)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(
        self,
        x: Sequence[Tensor],
        mask_features: Tensor,
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
    ) -> dict:
        """Decode.

        Args:
            x: ``num_feature_levels`` tensors [B, in_channels, H_l, W_l] (1/32, 1/16, 1/8).
            mask_features: [B, mask_dim, H/4, W/4].
            text_classifier: [S + 1, embed_dim], normalised, void row last.
            num_synonyms: K ints summing to S.

        Returns:
            ``pred_logits`` [B, Q, K + 1], ``pred_masks`` [B, Q, H/4, W/4] and
            ``aux_outputs``: ``dec_layers`` dicts with the same keys (the initial
            queries and all layers but the last).
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        src, pos, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append(feat.shape[-2:])
            pos.append(self.pe_layer(feat).to(feat.dtype).flatten(2).permute(2, 0, 1))  # [HW, B, C]
            proj = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            src.append(proj.permute(2, 0, 1))  # [HW, B, C]

        batch = src[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)  # [Q, B, C]
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        classes, masks = [], []
        cls, msk, attn_mask = self._predict(output, mask_features, sizes[0], text_classifier, num_synonyms)
        classes.append(cls)
        masks.append(msk)
        for i in range(self.num_layers):
            level = i % self.num_feature_levels
            # a query whose mask is empty at this level attends everywhere
            attn_mask = attn_mask & ~attn_mask.all(dim=-1, keepdim=True)
            output = self.transformer_cross_attention_layers[i](
                output, src[level], memory_mask=attn_mask, pos=pos[level], query_pos=query_pos
            )
            output = self.transformer_self_attention_layers[i](output, query_pos=query_pos)
            output = self.transformer_ffn_layers[i](output)
            next_size = sizes[(i + 1) % self.num_feature_levels]
            cls, msk, attn_mask = self._predict(output, mask_features, next_size, text_classifier, num_synonyms)
            classes.append(cls)
            masks.append(msk)

        return {
            "pred_logits": classes[-1],
            "pred_masks": masks[-1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in zip(classes[:-1], masks[:-1])],
        }

    def _predict(
        self,
        output: Tensor,
        mask_features: Tensor,
        attn_size: Sequence[int],
        text_classifier: Tensor,
        num_synonyms: Sequence[int],
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Heads on queries [Q, B, C]: class logits [B, Q, K+1], mask logits [B, Q, H/4, W/4]
        and the next layer's attention mask [B * heads, Q, h * w] (True = blocked)."""
        decoded = self.decoder_norm(output).transpose(0, 1)  # [B, Q, C]
        mask_embed = self.mask_embed(decoded)
        pred_masks = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)

        pooled = self.mask_pooling(mask_features, pred_masks)  # [B, Q, mask_dim]
        class_embed = self.class_embed(self._mask_pooling_proj(pooled) + decoded)
        pred_logits = get_classification_logits(class_embed, text_classifier, self.logit_scale, num_synonyms)

        attn = F.interpolate(pred_masks, size=tuple(attn_size), mode="bilinear", align_corners=False)
        blocked = attn.sigmoid().flatten(2) < 0.5  # [B, Q, hw]
        blocked = blocked.unsqueeze(1).repeat(1, self.num_heads, 1, 1).flatten(0, 1)
        return pred_logits, pred_masks, blocked.detach()
