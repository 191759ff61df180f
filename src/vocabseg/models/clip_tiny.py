"""A tiny open_clip model: the laptop-sized stand-in for FC-CLIP's frozen CLIP.

FC-CLIP builds its backbone with ``open_clip.create_model(name, pretrained=...)``. The
official ConvNeXt-L weights are far too large for the default study, so the pipeline
registers one extra open_clip architecture, ``"vocabseg-tiny-convnext"``, whose
structure mirrors ``convnext_large_d_320`` at a tiny scale:

* vision: timm ``convnext_atto`` trunk (channels 40/80/160/320, res5 at stride 32),
  default average pool kept, ``mlp`` projection head 320 -> 128 -> 64, no drop path;
* text: 2-layer, width-64, 2-head transformer over open_clip's BPE vocabulary (49408
  tokens) with a context of 32 tokens (prompts are short);
* joint embedding dimension 64.

The config lives in ``model_configs/vocabseg-tiny-convnext.json`` (package data).
After :func:`register_tiny_clip` the usual open_clip calls work offline::

    register_tiny_clip()
    model = open_clip.create_model("vocabseg-tiny-convnext", pretrained="weights.pt")
    tokenizer = open_clip.get_tokenizer("vocabseg-tiny-convnext")  # context length 32

Weights come from :func:`vocabseg.pretrain.pretrain_clip_regions`, never from a download.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip

__all__ = ["TINY_CLIP_NAME", "TINY_CLIP_CONFIG_PATH", "register_tiny_clip"]

TINY_CLIP_NAME = "vocabseg-tiny-convnext"
TINY_CLIP_CONFIG_PATH = Path(__file__).resolve().parent / "model_configs" / f"{TINY_CLIP_NAME}.json"


def register_tiny_clip() -> str:
    """Add the ``vocabseg-tiny-convnext`` architecture to open_clip's config registry.

    Idempotent: a second call (or a call after another process-wide registration of
    the same file) changes nothing. Needs no network access.

    Returns:
        The registered model name, ``"vocabseg-tiny-convnext"``.
    """
    wanted = json.loads(TINY_CLIP_CONFIG_PATH.read_text(encoding="utf-8"))
    if open_clip.get_model_config(TINY_CLIP_NAME) != wanted:
        open_clip.add_model_config(TINY_CLIP_CONFIG_PATH)
    return TINY_CLIP_NAME
