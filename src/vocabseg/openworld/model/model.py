"""The ContMAV network (Sodano et al., CVPR 2024): one encoder, two decoders.

::

    image [B, 3, H, W] (ImageNet-normalised RGB, see normalize_image)
      -> encoder (ResNet34-NBt1D): s1 1/4, s2 1/8, s3 1/16, s4 1/32
      -> context (adaptive pyramid pooling on s4)
      -> skips = SkipAdapters(s1, s2, s3)              (shared by both decoders)
      -> decoder_semantic(context, skips)    -> "semantic"    [B, K, H, W] class logits
      -> decoder_contrastive(context, skips) -> "contrastive" [B, K, H, W] features
    with trufor=True also
      -> trufor_head(s1..s4)                 -> "trufor"      [B, K, H, W]
      -> "contrastive" = fusion(contrastive decoder, trufor); the unfused decoder
         output stays available as "contrastive_decoder".

K is the number of known classes for both decoders. The semantic logits are the
"activation vectors" whose per-class means (MAVs) and variances the feature loss and
the Gaussian unknown score use; the contrastive features feed the contrastive and
objectosphere losses and the norm-based unknown score.

Initialisation: every conv is He-initialised except the learned upsamplers (bilinear
kernel) and the two decoder heads and the TruFor classifier (PyTorch default); then
``pretrained`` encoder weights, if given, overwrite the encoder. BatchNorm in the
pyramid pooling's 1x1 branch needs a training batch of at least 2.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import ContMAVConfig
from .context import AdaptivePyramidPooling
from .decoder import Decoder, SkipAdapters
from .encoder import EncoderLoadReport, ResNet34Encoder, load_encoder_weights
from .layers import LearnedUpsample, he_init_
from .trufor import MLPDecoderHead, build_fusion

__all__ = ["ContMAV", "IMAGENET_MEAN", "IMAGENET_STD", "normalize_image"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize_image(image: Tensor) -> Tensor:
    """RGB in [0, 1], [B, 3, H, W] (or [3, H, W]) -> ``(image - mean) / std`` with the
    ImageNet statistics, the input the network expects."""
    shape = (-1, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(shape)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(shape)
    return (image - mean) / std


class ContMAV(nn.Module):
    """ContMAV: ResNet34-NBt1D encoder, pyramid pooling, semantic and contrastive
    decoders, optional TruFor-style head fused into the contrastive output.

    ``forward(images [B, 3, H, W]) -> dict``:

    * ``"semantic"``: [B, K, H, W] semantic decoder logits;
    * ``"contrastive"``: [B, K, H, W] contrastive features (fused when ``cfg.trufor``);
    * with ``cfg.trufor``: ``"contrastive_decoder"`` (unfused contrastive decoder
      output) and ``"trufor"`` (MLP head output), both [B, K, H, W].

    Attributes: ``encoder``, ``context``, ``skips``, ``decoder_semantic``,
    ``decoder_contrastive``, and with TruFor ``trufor_head``, ``fusion``;
    ``encoder_load_report`` (None unless ``cfg.pretrained``).
    """

    def __init__(self, cfg: ContMAVConfig):
        super().__init__()
        self.cfg = cfg
        k = cfg.num_classes
        self.encoder = ResNet34Encoder(cfg.encoder_block, cfg.encoder_layers, cfg.width)
        enc = self.encoder.channels
        self.context = AdaptivePyramidPooling(
            enc[3], enc[3], cfg.context_bins, branch_channels=max(1, enc[3] // 4), input_size=cfg.context_input_size
        )
        self.skips = SkipAdapters(enc[:3], cfg.decoder_channels)
        self.decoder_semantic = Decoder(enc[3], cfg.decoder_channels, k, cfg.decoder_blocks)
        self.decoder_contrastive = Decoder(enc[3], cfg.decoder_channels, k, cfg.decoder_blocks)
        self.trufor_head: MLPDecoderHead | None = None
        self.fusion: nn.Module | None = None
        if cfg.trufor:
            self.trufor_head = MLPDecoderHead(enc, k, cfg.trufor_embed_dim, cfg.trufor_dropout)
            self.fusion = build_fusion(cfg.trufor_fusion, k)

        if cfg.he_init:
            he_init_(self, exclude=self._default_init_modules())
        self.encoder_load_report: EncoderLoadReport | None = None
        if cfg.pretrained is not None:
            self.encoder_load_report = load_encoder_weights(self.encoder, cfg.pretrained)

    def _default_init_modules(self) -> list[nn.Module]:
        """Convs that He init must leave alone: the learned upsamplers' convs and the
        class heads (the public code skips convs with K output channels)."""
        keep: list[nn.Module] = [m.conv for m in self.modules() if isinstance(m, LearnedUpsample)]
        keep += [self.decoder_semantic.head, self.decoder_contrastive.head]
        if self.trufor_head is not None:
            keep.append(self.trufor_head.classifier)
        return keep

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        size = tuple(images.shape[-2:])
        stages = self.encoder(images)
        context = self.context(stages[3])
        skips = self.skips(stages)
        out: dict[str, Tensor] = {
            "semantic": self.decoder_semantic(context, skips, size),
            "contrastive": self.decoder_contrastive(context, skips, size),
        }
        if self.trufor_head is not None:
            trufor = self.trufor_head(stages, size)
            out["contrastive_decoder"] = out["contrastive"]
            out["trufor"] = trufor
            out["contrastive"] = self.fusion(out["contrastive_decoder"], trufor)
        return out

    def extra_repr(self) -> str:
        cfg: dict[str, Any] = self.cfg.to_dict()
        return f"num_classes={cfg['num_classes']}, trufor={cfg['trufor']}, fusion={cfg['trufor_fusion']}"
