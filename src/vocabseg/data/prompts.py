"""Prompt names of classes in FC-CLIP's file format (``<id>:<name>,<synonym>,...``).

Upstream ships its class names this way (``cityscapes_panoptic_with_prompt_eng.txt``);
a study's synonyms file (config key ``dataset.coco_panoptic.synonyms``) uses it too.
Free of torch, so that reading a label set stays cheap.
"""

from __future__ import annotations

from typing import Iterable

from vocabseg.errors import InputError

__all__ = ["parse_class_names"]


def parse_class_names(text: str | Iterable[str], *, source: str = "class names") -> dict[int, list[str]]:
    """Parse ``"<id>:<syn1>,<syn2>,..."`` lines into {id: [synonyms]} in line order.

    Synonyms are split like upstream (``", "`` counts as ``","``; names are not
    otherwise stripped); blank lines are skipped, and so are entries named
    ``invalid_class_id``. A malformed line or a repeated id raises
    :class:`InputError` naming ``source`` and the line number.
    """
    lines = text.splitlines() if isinstance(text, str) else list(text)
    out: dict[int, list[str]] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        head, sep, names = line.partition(":")
        synonyms = names.replace(", ", ",").split(",")
        if not sep or not head.strip().lstrip("-").isdigit() or not all(synonyms):
            raise InputError(f"{source}, line {number}: expected '<id>:<name>[,<synonym>...]', got {raw!r}")
        class_id = int(head)
        if class_id in out:
            raise InputError(f"{source}, line {number}: class id {class_id} appears twice")
        if synonyms == ["invalid_class_id"]:
            continue
        out[class_id] = synonyms
    return out
