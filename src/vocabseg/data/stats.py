"""Per-class pixel share and instance count of a COCO-panoptic ground truth.

Read from the JSON alone (segment ``area`` as written by ``createPanopticImgs``), so
it costs nothing even on the full Cityscapes training set.
"""

from __future__ import annotations

from pathlib import Path

from vocabseg.data.labelset import LabelSet
from vocabseg.fileio import read_json

__all__ = ["class_frequencies"]


def class_frequencies(panoptic_json: Path, labels: LabelSet | None = None) -> dict[int, dict[str, float]]:
    """Return ``{label id: {"pixels", "pixel_share", "instances"}}`` for the evaluated
    classes of ``labels`` (None: Cityscapes, 19 classes).

    ``pixels`` counts every labelled pixel of the class (crowd regions included);
    ``pixel_share`` divides it by all labelled (non-void) pixels; ``instances``
    counts non-crowd segments of thing classes (0 for stuff classes).
    """
    gt = read_json(panoptic_json)
    labels = labels or LabelSet.cityscapes()
    stats = {i: {"pixels": 0, "pixel_share": 0.0, "instances": 0} for i in labels.eval_ids}
    things = set(labels.thing_ids)
    for ann in gt["annotations"]:
        for seg in ann["segments_info"]:
            cat = seg["category_id"]
            if cat not in stats:
                continue
            stats[cat]["pixels"] += int(seg["area"])
            if cat in things and not seg.get("iscrowd", 0):
                stats[cat]["instances"] += 1
    total = sum(s["pixels"] for s in stats.values())
    for s in stats.values():
        s["pixel_share"] = s["pixels"] / total if total else 0.0
    return stats
