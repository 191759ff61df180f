"""How a study builds its FC-CLIP models, vocabularies and text classifiers.

The ``model:`` block of a study config (passed to the command line as JSON) is a
:class:`ModelSpec`: an FC-CLIP preset, where its CLIP weights come from, optional
hyper-parameter overrides and the classes the *base* model was trained on (they
decide alpha vs beta in the geometric ensemble). Every model of a study shares that
architecture; their weight files differ:

* the base model: the official FC-CLIP checkpoint (``weights``) on Cityscapes, or the
  tiny model pretrained on the source-style synthetic city;
* trained approaches: ``{"model": state_dict}`` files written by the trainer, in the
  same detectron2 layout as the official files (they load strictly into upstream).

Class order everywhere is the evaluated classes of the study's label set
(:class:`~vocabseg.data.labelset.LabelSet`; Cityscapes: the 19 classes) in train-id
order, restricted to the vocabulary at hand (e.g. the 11 in-classes of configuration
008), so index k of a text classifier, of a dataset's labels and of a prediction's
``category`` is the k-th label id of :func:`vocab_ids`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vocabseg.data.labelset import LabelSet
from vocabseg.errors import InputError
from vocabseg.models.clip_tiny import TINY_CLIP_NAME, register_tiny_clip
from vocabseg.models.fcclip import (
    FCCLIP,
    CLIPBackbone,
    FCCLIPConfig,
    build_text_classifier,
    check_checkpoint_fits,
    load_fcclip_checkpoint,
    preset_config,
)

__all__ = ["ModelSpec", "vocab_ids", "class_names", "build_model", "build_backbone", "text_classifier_for"]

@dataclass
class ModelSpec:
    """The ``model:`` block of a study config.

    Attributes:
        preset: FC-CLIP preset (``tiny``, ``r50``, ``convnext_large``).
        clip_pretrained: open_clip tag or local file of the CLIP weights; ``None`` keeps
            the preset's (for ``tiny`` the workflow passes the pretrain_clip output).
        weights: official FC-CLIP checkpoint of the base model (``None`` in the
            synthetic world, where the base model is pretrained by the workflow).
        seen_ids: label ids the base model was trained on (``None``: every class).
        overrides: FC-CLIP hyper-parameters that differ from the preset.
    """

    preset: str
    clip_pretrained: str | None = None
    weights: str | None = None
    seen_ids: list[int] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        try:
            data = json.loads(text)
            return cls(**data)
        except (json.JSONDecodeError, TypeError) as err:
            raise InputError(f"model spec {text!r}: {err}") from None

    def config(self) -> FCCLIPConfig:
        overrides = dict(self.overrides)
        if self.clip_pretrained is not None:
            overrides["clip_pretrained"] = self.clip_pretrained
        cfg = preset_config(self.preset, **overrides)
        if cfg.clip_model == TINY_CLIP_NAME:
            register_tiny_clip()
        return cfg

    def seen(self, extra_ids: Sequence[int] = (), labels: LabelSet | None = None) -> list[int]:
        """Label ids the ensemble treats as seen: the base model's and ``extra_ids``."""
        labels = labels or LabelSet.cityscapes()
        base = set(self.seen_ids) if self.seen_ids is not None else set(labels.eval_ids)
        return labels.sorted_ids(base | set(extra_ids))


def vocab_ids(split: Mapping | None, labels: LabelSet | None = None) -> list[int]:
    """Label ids of a vocabulary: the ``in_ids`` of a split, or every evaluated class
    of ``labels`` (None: Cityscapes)."""
    labels = labels or LabelSet.cityscapes()
    return labels.sorted_ids(labels.eval_ids if split is None else split["in_ids"])


def class_names(ids: Sequence[int], labels: LabelSet | None = None) -> list[list[str]]:
    """The prompt synonym lists of the given label ids (None: Cityscapes, FC-CLIP's
    prompt-engineered names)."""
    return (labels or LabelSet.cityscapes()).synonyms(ids)


def build_model(spec: ModelSpec, weights: Path | None) -> FCCLIP:
    """An FC-CLIP model of the study with ``weights`` loaded (strictly, as upstream).

    A file that carries the whole CLIP (every model this project trains) is loaded
    into a randomly initialised model; an official file without the text tower gets
    it from ``clip_pretrained`` first, as upstream does. A file of another
    architecture (e.g. an R50 checkpoint for a ConvNeXt-L study) is reported, naming
    both presets, before any model is built or CLIP weights are fetched.
    """
    cfg = spec.config()
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise InputError(
                f"{weights}: FC-CLIP weights not found. Official checkpoints (e.g. fcclip_cocopan_r50.pth) "
                "are linked from the FC-CLIP model zoo (github.com/bytedance/fc-clip); put the file there "
                "or set model.weights in the study config"
            )
        state = check_checkpoint_fits(weights, cfg)
        if "backbone.clip_model.token_embedding.weight" in state:  # ours carry the whole CLIP
            cfg.clip_pretrained = None
    model = FCCLIP(cfg)
    if weights is not None:
        load_fcclip_checkpoint(model, weights)
    return model


def build_backbone(spec: ModelSpec) -> CLIPBackbone:
    """The study's frozen CLIP alone (for text embeddings)."""
    cfg = spec.config()
    return CLIPBackbone(cfg.clip_model, cfg.clip_pretrained, quick_gelu=cfg.clip_quick_gelu)


def text_classifier_for(
    backbone: CLIPBackbone, ids: Sequence[int], labels: LabelSet | None = None
) -> tuple[torch.Tensor, list[int]]:
    """Prompt-ensemble text classifier of the classes ``ids`` (FC-CLIP's recipe)."""
    return build_text_classifier(backbone, backbone.get_tokenizer(), class_names(ids, labels))
