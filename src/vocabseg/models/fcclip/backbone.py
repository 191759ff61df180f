"""The frozen open_clip backbone of FC-CLIP.

:class:`CLIPBackbone` owns one open_clip model as ``clip_model`` (so its state-dict
keys are ``backbone.clip_model.*`` inside FC-CLIP) and offers:

* ``forward(images)``: the dense multi-scale features of the vision tower,
  ``{"stem", "res2", "res3", "res4", "res5", "clip_vis_dense"}``;
* ``encode_text(tokens)``: un-normalised text embeddings;
* ``visual_prediction_forward``: turns mask-pooled dense features into CLIP image
  embeddings (the out-of-vocabulary branch).

Two vision-tower families are supported, as upstream: timm ConvNeXt (open_clip
``TimmModel``) and OpenAI's ``ModifiedResNet``. Every parameter is frozen and the
whole CLIP model stays in eval mode under ``torch.no_grad`` whatever the parent's
mode (ConvNeXt has stochastic depth, the ResNets have BatchNorm).
"""

from __future__ import annotations

import math

import open_clip
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.timm_model import TimmModel
from torch import Tensor, nn

from vocabseg.errors import InputError

from .clip_weights import resolve_clip_pretrained

__all__ = ["CLIPBackbone", "FEATURE_NAMES"]

FEATURE_NAMES = ("res2", "res3", "res4", "res5")
_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class CLIPBackbone(nn.Module):
    """Frozen open_clip model used as a dense feature extractor.

    Args:
        model_name: open_clip model name (ConvNeXt via timm, or ``RN*``).
        pretrained: open_clip pretrained tag, local checkpoint path, or None
            (random initialisation); checked first by
            :func:`~vocabseg.models.fcclip.clip_weights.resolve_clip_pretrained`.
        quick_gelu: force QuickGELU in the text tower (OpenAI weights). Also switched
            on automatically when ``pretrained`` is a tag open_clip marks QuickGELU.

    Attributes:
        clip_model: the open_clip ``CLIP`` model.
        family: ``"convnext"`` or ``"resnet"``.
        output_channels: channels of res2..res5.
        output_strides: strides of res2..res5 (4, 8, 16, 32).
        dim_latent: CLIP embedding width (``text_projection.shape[-1]``).
    """

    def __init__(self, model_name: str, pretrained: str | None = None, *, quick_gelu: bool = False):
        super().__init__()
        if pretrained and not quick_gelu:
            quick_gelu = bool(open_clip.get_pretrained_cfg(model_name, pretrained).get("quick_gelu", False))
        weights = resolve_clip_pretrained(model_name, pretrained)
        try:
            self.clip_model = open_clip.create_model(
                model_name,
                pretrained=weights,
                force_quick_gelu=quick_gelu,
                device=torch.get_default_device(),
            )
        except RuntimeError as err:
            raise InputError(f"open_clip model {model_name!r} (pretrained={pretrained!r}): {err}") from err
        self.model_name = model_name
        for p in self.clip_model.parameters():
            p.requires_grad_(False)
        self.clip_model.eval()

        visual = self.clip_model.visual
        if isinstance(visual, ModifiedResNet):
            self.family = "resnet"
            width = visual.conv3.out_channels
            channels = [width * 4, width * 8, width * 16, width * 32]
        elif isinstance(visual, TimmModel) and hasattr(visual.trunk, "stages") and hasattr(visual.trunk, "stem"):
            self.family = "convnext"
            channels = [int(info["num_chs"]) for info in visual.trunk.feature_info]
        else:
            raise InputError(
                f"open_clip model {model_name!r}: FC-CLIP needs a ConvNeXt (timm) or ModifiedResNet "
                f"vision tower, got {type(visual).__name__}"
            )
        self.output_channels: dict[str, int] = dict(zip(FEATURE_NAMES, channels))
        self.output_strides: dict[str, int] = dict(_STRIDES)
        self.dim_latent: int = int(self.clip_model.text_projection.shape[-1])

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "CLIPBackbone":
        """The backbone is always in eval mode; ``mode`` is ignored."""
        return super().train(False)

    # ------------------------------------------------------------- features
    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Dense features of normalised images ``x`` [B, 3, H, W] (H, W multiples of 32).

        Returns ``stem`` [B, C0, H/2 or H/4, ...], ``res2``..``res5`` [B, C_i, H/s_i, W/s_i]
        and ``clip_vis_dense`` (the features the out-of-vocabulary branch pools,
        [B, C5, H/32, W/32]).
        """
        self.clip_model.eval()
        with torch.no_grad():
            if self.family == "convnext":
                return self._convnext_features(x)
            return self._resnet_features(x)

    def _convnext_features(self, x: Tensor) -> dict[str, Tensor]:
        trunk = self.clip_model.visual.trunk
        out = {}
        x = trunk.stem(x)
        out["stem"] = x.contiguous()
        for i, name in enumerate(FEATURE_NAMES):
            x = trunk.stages[i](x)
            out[name] = x.contiguous()
        # norm_pre is Identity for ConvNeXt's default head_norm_first=False
        out["clip_vis_dense"] = trunk.norm_pre(x).contiguous()
        return out

    def _resnet_features(self, x: Tensor) -> dict[str, Tensor]:
        v = self.clip_model.visual
        out = {}
        x = v.act1(v.bn1(v.conv1(x)))
        x = v.act2(v.bn2(v.conv2(x)))
        x = v.act3(v.bn3(v.conv3(x)))
        out["stem"] = x.contiguous()
        x = v.avgpool(x)
        for name, layer in zip(FEATURE_NAMES, (v.layer1, v.layer2, v.layer3, v.layer4)):
            x = layer(x)
            out[name] = x.contiguous()
        out["clip_vis_dense"] = out["res5"]
        return out

    # ----------------------------------------------------------------- text
    def get_tokenizer(self):
        """open_clip's tokenizer for this CLIP model (list[str] -> LongTensor [N, 77])."""
        return open_clip.get_tokenizer(self.model_name)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """Un-normalised text embeddings [N, dim_latent] of token ids [N, context_length]."""
        self.clip_model.eval()
        with torch.no_grad():
            return self.clip_model.encode_text(tokens, normalize=False)

    # ------------------------------------------------- out-of-vocab branch
    def visual_prediction_forward(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """CLIP image embeddings of mask regions, [B, Q, dim_latent].

        ConvNeXt: ``x`` is the mask-pooled ``clip_vis_dense`` [B, Q, C5]; it goes
        through the trunk head (LayerNorm) and the projection MLP. ``masks`` unused.

        ResNet: ``x`` is ``clip_vis_dense`` [B, C5, h, w] and ``masks`` the mask logits
        at the same size [B, Q, h, w]; each mask drives one attention-pooling query
        of the CLIP ``attnpool`` (see :meth:`_masked_attention_pool`).
        """
        self.clip_model.eval()
        with torch.no_grad():
            if self.family == "convnext":
                batch, queries, channels = x.shape
                y = x.reshape(batch * queries, channels, 1, 1)
                y = self.clip_model.visual.trunk.head(y)
                y = self.clip_model.visual.head(y)
                return y.reshape(batch, queries, -1)
            if masks is None:
                raise ValueError("the ResNet visual prediction needs the masks")
            return self._masked_attention_pool(x, masks)

    def _masked_attention_pool(self, feats: Tensor, masks: Tensor) -> Tensor:
        """Attention pooling of ``feats`` [B, C, h, w] restricted to each mask.

        Uses the weights of CLIP's ``attnpool``: the spatial positional embedding is
        bilinearly resized to (h, w) and added to keys/values; every query is the
        spatial mean of the features plus the class-token positional embedding; a
        query may attend only to pixels where its mask logit is > 0. A query whose
        mask is empty attends to all pixels (upstream yields NaN there; those
        queries are excluded from the ensemble when ``ensemble_on_valid_mask``).
        Returns [B, Q, output_dim].
        """
        pool = self.clip_model.visual.attnpool
        batch, channels, height, width = feats.shape
        if masks.shape[-2:] != feats.shape[-2:]:
            masks = F.interpolate(masks, size=(height, width), mode="bilinear", align_corners=False)
        num_queries = masks.shape[1]
        heads = pool.num_heads
        head_dim = channels // heads

        pos = pool.positional_embedding.to(feats.dtype)  # [1 + s*s, C]
        side = int(round(math.sqrt(pos.shape[0] - 1)))
        spatial = pos[1:].t().reshape(1, channels, side, side)
        spatial = F.interpolate(spatial, size=(height, width), mode="bilinear", align_corners=False)
        spatial = spatial.flatten(2).transpose(1, 2)  # [1, hw, C]

        tokens = feats.flatten(2).transpose(1, 2)  # [B, hw, C]
        key_value = tokens + spatial
        query = tokens.mean(dim=1, keepdim=True) + pos[:1]  # [B, 1, C]

        q = F.linear(query, pool.q_proj.weight, pool.q_proj.bias)
        k = F.linear(key_value, pool.k_proj.weight, pool.k_proj.bias)
        v = F.linear(key_value, pool.v_proj.weight, pool.v_proj.bias)
        q = q.reshape(batch, 1, heads, head_dim).transpose(1, 2)  # [B, heads, 1, d]
        k = k.reshape(batch, -1, heads, head_dim).transpose(1, 2)  # [B, heads, hw, d]
        v = v.reshape(batch, -1, heads, head_dim).transpose(1, 2)

        allowed = masks.flatten(2) > 0  # [B, Q, hw]
        allowed = allowed | ~allowed.any(dim=-1, keepdim=True)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)  # [B, heads, 1, hw]
        scores = scores.expand(batch, heads, num_queries, scores.shape[-1])
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        attn = scores.softmax(dim=-1)
        out = torch.matmul(attn, v)  # [B, heads, Q, d]
        out = out.transpose(1, 2).reshape(batch, num_queries, channels)
        return F.linear(out, pool.c_proj.weight, pool.c_proj.bias)
