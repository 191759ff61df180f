"""Text classifiers: prompt templates, class-name synonyms and the cached embeddings.

A class is a list of synonyms. Every synonym is put into the 14 ViLD templates,
encoded by the CLIP text tower, L2-normalised per prompt, averaged over the
templates and normalised again: one embedding per (class, synonym), rows in class
order. ``num_synonyms[c]`` says how many rows belong to class c; the model's class
logit is the max over them (upstream calls this count ``num_templates``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vocabseg.data.labelset import LabelSet
from vocabseg.data.prompts import parse_class_names
from vocabseg.errors import InputError
from vocabseg.fileio import torch_load_checked, torch_save_atomic

__all__ = [
    "VILD_TEMPLATES",
    "CITYSCAPES_CLASS_NAMES",
    "parse_class_names",
    "overlap_mask",
    "build_text_classifier",
    "TextClassifier",
    "save_text_classifier",
    "load_text_classifier",
]

VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

# FC-CLIP's prompt-engineered Cityscapes names (the Cityscapes label set's synonyms).
CITYSCAPES_CLASS_NAMES: list[list[str]] = [list(c.synonyms) for c in LabelSet.cityscapes().evaluated]
"""The 19 Cityscapes synonym lists in trainId order."""


def overlap_mask(test_names: Sequence[Sequence[str]], train_names: Sequence[Sequence[str]]) -> Tensor:
    """Upstream's "seen" rule: BoolTensor [K_test], True where a test class shares a
    synonym with any training class."""
    train = {s for names in train_names for s in names}
    return torch.tensor([not train.isdisjoint(names) for names in test_names], dtype=torch.bool)


@torch.no_grad()
def build_text_classifier(
    backbone,
    tokenizer: Callable[[list[str]], Tensor],
    class_names: Sequence[Sequence[str]],
    batch_size: int = 128,
    templates: Sequence[str] = VILD_TEMPLATES,
) -> tuple[Tensor, list[int]]:
    """Text classifier of ``class_names`` (one synonym list per class).

    Args:
        backbone: a :class:`~vocabseg.models.fcclip.backbone.CLIPBackbone`
            (anything with ``encode_text(tokens)``).
        tokenizer: open_clip tokenizer of the same CLIP model.
        class_names: K lists of synonyms.
        batch_size: prompts per text-encoder call.

    Returns:
        (embeddings [S, D] float32, one normalised row per (class, synonym), and
        num_synonyms: K ints summing to S).
    """
    if not class_names or any(len(names) == 0 for names in class_names):
        raise ValueError("every class needs at least one name")
    num_synonyms = [len(names) for names in class_names]
    prompts = [t.format(name) for names in class_names for name in names for t in templates]
    device = next(backbone.parameters()).device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        chunks.append(backbone.encode_text(tokens).float())
    per_prompt = F.normalize(torch.cat(chunks), dim=-1)
    per_synonym = per_prompt.reshape(-1, len(templates), per_prompt.shape[-1]).mean(dim=1)
    return F.normalize(per_synonym, dim=-1), num_synonyms


@dataclass
class TextClassifier:
    """A cached text classifier (see :func:`load_text_classifier`)."""

    embeddings: Tensor  # [S, D]
    num_synonyms: list[int]  # K
    class_names: list[list[str]]  # K synonym lists
    clip_model: str


def save_text_classifier(
    path: str | os.PathLike,
    embeddings: Tensor,
    num_synonyms: Sequence[int],
    class_names: Sequence[Sequence[str]],
    clip_model: str,
) -> None:
    """Write a text classifier atomically as a torch file of plain tensors/lists/strings."""
    num_synonyms = [int(n) for n in num_synonyms]
    class_names = [[str(s) for s in names] for names in class_names]
    _check(embeddings, num_synonyms, class_names, str(path))
    payload = {
        "embeddings": embeddings.detach().to("cpu", torch.float32).contiguous(),
        "num_synonyms": num_synonyms,
        "class_names": class_names,
        "clip_model": str(clip_model),
        "templates": list(VILD_TEMPLATES),
    }
    torch_save_atomic(payload, path)


def load_text_classifier(path: str | os.PathLike, *, expect_clip_model: str | None = None) -> TextClassifier:
    """Read a file written by :func:`save_text_classifier` (``torch.load(weights_only=True)``).

    Raises :class:`InputError` naming the file if it is missing, unreadable,
    inconsistent, or was made with another CLIP model than ``expect_clip_model``.
    """
    path = os.fspath(path)
    data = torch_load_checked(path, "text classifier file")
    keys = ("embeddings", "num_synonyms", "class_names", "clip_model")
    if not isinstance(data, dict) or any(k not in data for k in keys):
        raise InputError(f"{path}: not a text classifier file (needs keys {list(keys)})")
    result = TextClassifier(
        embeddings=data["embeddings"],
        num_synonyms=[int(n) for n in data["num_synonyms"]],
        class_names=[list(names) for names in data["class_names"]],
        clip_model=str(data["clip_model"]),
    )
    _check(result.embeddings, result.num_synonyms, result.class_names, path)
    if expect_clip_model is not None and result.clip_model != expect_clip_model:
        raise InputError(
            f"{path}: text classifier was built with CLIP model {result.clip_model!r}, expected {expect_clip_model!r}"
        )
    return result


def _check(embeddings: Tensor, num_synonyms: list[int], class_names: list[list[str]], where: str) -> None:
    if not isinstance(embeddings, Tensor) or embeddings.dim() != 2:
        raise InputError(f"{where}: text classifier embeddings must be a 2-D tensor")
    if sum(num_synonyms) != embeddings.shape[0]:
        raise InputError(
            f"{where}: num_synonyms sum to {sum(num_synonyms)} but there are {embeddings.shape[0]} embeddings"
        )
    if [len(names) for names in class_names] != num_synonyms:
        raise InputError(f"{where}: class_names do not match num_synonyms")
