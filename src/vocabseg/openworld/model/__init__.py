"""ContMAV (Sodano et al., CVPR 2024, "Open-World Semantic Segmentation Including Class
Similarity") in plain PyTorch, with the TruFor-style head variant.

Typical use::

    cfg = preset_config("paper", num_classes=19, pretrained="r34_NBt1D.pth")
    model = ContMAV(cfg)
    out = model(normalize_image(images))        # {"semantic": [B,K,H,W], "contrastive": [B,K,H,W]}

Losses live in :mod:`vocabseg.openworld.losses`.
"""

from .config import ContMAVConfig, PRESETS, parse_bool, preset_config
from .context import AdaptivePyramidPooling
from .decoder import Decoder, DecoderModule, SkipAdapters
from .encoder import (
    BasicBlock,
    EncoderLoadReport,
    NonBottleneck1D,
    ResNet34Encoder,
    load_encoder_weights,
    torchvision_keys_for,
)
from .layers import ConvBNAct, LearnedUpsample, he_init_
from .model import IMAGENET_MEAN, IMAGENET_STD, ContMAV, normalize_image
from .trufor import LearnedWeightFusion, MLPDecoderHead, NormalizedSumFusion, build_fusion

__all__ = [
    "ContMAV",
    "ContMAVConfig",
    "PRESETS",
    "preset_config",
    "parse_bool",
    "normalize_image",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ResNet34Encoder",
    "NonBottleneck1D",
    "BasicBlock",
    "EncoderLoadReport",
    "load_encoder_weights",
    "torchvision_keys_for",
    "AdaptivePyramidPooling",
    "SkipAdapters",
    "DecoderModule",
    "Decoder",
    "MLPDecoderHead",
    "NormalizedSumFusion",
    "LearnedWeightFusion",
    "build_fusion",
    "ConvBNAct",
    "LearnedUpsample",
    "he_init_",
]
