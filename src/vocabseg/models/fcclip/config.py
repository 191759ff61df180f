"""Hyper-parameters of FC-CLIP and the named presets.

One flat dataclass holds everything the model needs: the CLIP backbone (an open_clip
model name plus a pretrained tag or checkpoint path), the pixel decoder, the
transformer decoder and the inference settings (geometric ensemble, panoptic
thresholds). Defaults are the upstream ConvNeXt-L values; the presets are

* ``"convnext_large"``: open_clip ``convnext_large_d_320`` with the
  ``laion2b_s29b_b131k_ft_soup`` weights (the released FC-CLIP model).
* ``"r50"``: OpenAI ``RN50`` (``ensemble_on_valid_mask`` True, as for every ResNet
  CLIP upstream).
* ``"tiny"``: a few-MB model for tests and CPU smoke runs; its open_clip config
  ``"vocabseg-tiny-convnext"`` (timm ``convnext_atto`` vision tower, 2-layer text
  tower) has to be registered with open_clip before the model is built.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from vocabseg.errors import InputError

__all__ = ["FCCLIPConfig", "PRESETS", "preset_config", "CLIP_PIXEL_MEAN", "CLIP_PIXEL_STD"]

# OpenAI CLIP mean/std, times 255 (the model takes RGB in 0..255).
CLIP_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
CLIP_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)


@dataclass
class FCCLIPConfig:
    """Every hyper-parameter of an FC-CLIP model.

    Backbone:
        clip_model: open_clip model name (``convnext_*`` or ``RN*``).
        clip_pretrained: open_clip pretrained tag, a local open_clip checkpoint path,
            or None for random initialisation.
        clip_quick_gelu: build the text tower with QuickGELU. OpenAI weights need it;
            upstream got it implicitly from open_clip's OpenAI loader. For a known
            pretrained tag open_clip's own tag table also switches it on.
    Pixel decoder (multi-scale deformable attention encoder + FPN):
        conv_dim, mask_dim, enc_layers, enc_ffn (encoder FFN width), n_points.
    Transformer decoder:
        hidden_dim, num_queries, dec_layers (the real number of layers, 9 upstream),
        dim_feedforward. ``nheads`` is shared by the pixel decoder and the decoder.
    Inference:
        ensemble_alpha / ensemble_beta: out-of-vocabulary weight of the geometric
            ensemble for seen / unseen classes; ensemble_on_valid_mask: use the
            out-of-vocabulary branch only for queries whose mask (at the CLIP
            feature size) has a positive pixel; object_mask_threshold,
            overlap_threshold: panoptic merging; topk: detections per image (kept
            for instance inference, which is not implemented here).
    Input:
        size_divisibility: pad to a multiple of this; pixel_mean / pixel_std on
            0..255 RGB.
    """

    clip_model: str = "convnext_large_d_320"
    clip_pretrained: str | None = "laion2b_s29b_b131k_ft_soup"
    clip_quick_gelu: bool = False
    # pixel decoder
    conv_dim: int = 256
    mask_dim: int = 256
    enc_layers: int = 6
    enc_ffn: int = 1024
    n_points: int = 4
    # shared
    nheads: int = 8
    # transformer decoder
    hidden_dim: int = 256
    num_queries: int = 250
    dec_layers: int = 9
    dim_feedforward: int = 2048
    # inference
    ensemble_alpha: float = 0.4
    ensemble_beta: float = 0.8
    ensemble_on_valid_mask: bool = False
    object_mask_threshold: float = 0.0
    overlap_threshold: float = 0.8
    topk: int = 100
    # input
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = field(default=CLIP_PIXEL_MEAN)
    pixel_std: tuple[float, float, float] = field(default=CLIP_PIXEL_STD)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), e.g. for run facts or YAML."""
        out = dataclasses.asdict(self)
        out["pixel_mean"] = list(self.pixel_mean)
        out["pixel_std"] = list(self.pixel_std)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "FC-CLIP config") -> "FCCLIPConfig":
        """Build from a mapping; unknown keys raise :class:`InputError` naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"{source}: unknown FC-CLIP config key(s) {unknown}; known keys: {sorted(known)}")
        kwargs = dict(values)
        for key in ("pixel_mean", "pixel_std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)


PRESETS: dict[str, dict[str, Any]] = {
    "convnext_large": dict(
        clip_model="convnext_large_d_320",
        clip_pretrained="laion2b_s29b_b131k_ft_soup",
        ensemble_on_valid_mask=False,
    ),
    "r50": dict(
        clip_model="RN50",
        clip_pretrained="openai",
        clip_quick_gelu=True,
        ensemble_on_valid_mask=True,
    ),
    "tiny": dict(
        clip_model="vocabseg-tiny-convnext",
        clip_pretrained=None,
        conv_dim=64,
        mask_dim=64,
        enc_layers=1,
        enc_ffn=128,
        nheads=4,
        hidden_dim=64,
        num_queries=50,  # a synthetic-city image has up to ~30 segments
        dec_layers=2,
        dim_feedforward=128,
        ensemble_on_valid_mask=False,
    ),
}


def preset_config(name: str, **overrides: Any) -> FCCLIPConfig:
    """The named preset (``"convnext_large"``, ``"r50"``, ``"tiny"``), with overrides."""
    if name not in PRESETS:
        raise InputError(f"unknown FC-CLIP preset {name!r}; choose one of {sorted(PRESETS)}")
    return FCCLIPConfig.from_dict({**PRESETS[name], **overrides}, source=f"FC-CLIP preset {name!r}")
