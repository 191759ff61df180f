"""FC-CLIP in plain PyTorch on open_clip: same module tree and state-dict keys as
upstream (bytedance/fc-clip), so official checkpoints load strictly.

Typical use::

    cfg = preset_config("r50")
    model = FCCLIP(cfg)
    load_fcclip_checkpoint(model, "fcclip_cocopan_r50.pth")
    tokenizer = model.backbone.get_tokenizer()
    emb, num_syn = build_text_classifier(model.backbone, tokenizer, CITYSCAPES_CLASS_NAMES)
    outputs = model(images, emb, num_syn)                   # training / eval head outputs
    results = model.inference(images, emb, num_syn, seen_mask=..., thing_mask=..., image_sizes=...)
"""

from .backbone import CLIPBackbone
from .checkpoint import (
    LoadReport,
    backbone_differences,
    check_checkpoint_fits,
    load_fcclip_checkpoint,
    model_fingerprint,
    preset_of,
    save_fcclip_checkpoint,
)
from .config import PRESETS, FCCLIPConfig, preset_config
from .fcclip import FCCLIP, FCCLIPHead, geometric_ensemble, panoptic_inference, semantic_inference
from .text import (
    CITYSCAPES_CLASS_NAMES,
    VILD_TEMPLATES,
    TextClassifier,
    build_text_classifier,
    load_text_classifier,
    overlap_mask,
    parse_class_names,
    save_text_classifier,
)
from .transformer_decoder import MaskPooling, MultiScaleMaskedTransformerDecoder, get_classification_logits

__all__ = [
    "CLIPBackbone",
    "FCCLIP",
    "FCCLIPConfig",
    "FCCLIPHead",
    "PRESETS",
    "preset_config",
    "MultiScaleMaskedTransformerDecoder",
    "MaskPooling",
    "get_classification_logits",
    "geometric_ensemble",
    "panoptic_inference",
    "semantic_inference",
    "VILD_TEMPLATES",
    "CITYSCAPES_CLASS_NAMES",
    "parse_class_names",
    "overlap_mask",
    "build_text_classifier",
    "TextClassifier",
    "save_text_classifier",
    "load_text_classifier",
    "LoadReport",
    "load_fcclip_checkpoint",
    "check_checkpoint_fits",
    "preset_of",
    "save_fcclip_checkpoint",
    "model_fingerprint",
    "backbone_differences",
]
