"""The oracle: ground truth submitted as the prediction.

It checks the whole chain (preparation, prediction format, evaluation, report)
without any model: every class with ground truth must score PQ = 100. Crowd
segments are submitted too; unmatched, they lie entirely on their own crowd region
and are therefore ignored by the evaluator, as any prediction there would be.
"""

from __future__ import annotations

from pathlib import Path

from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.errors import InputError
from vocabseg.fileio import read_json, write_json_atomic

__all__ = ["write_oracle_predictions"]


def write_oracle_predictions(gt_json: Path, gt_folder: Path, out_json: Path, out_folder: Path) -> int:
    """Write the ground truth in the prediction format; return the image count."""
    gt = read_json(gt_json)
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for ann in gt["annotations"]:
        src = Path(gt_folder) / ann["file_name"]
        if not src.is_file():
            raise InputError(f"{src}: missing (listed in {gt_json})")
        write_panoptic_png(out_folder / ann["file_name"], read_panoptic_png(src))
        segments = [{"id": s["id"], "category_id": s["category_id"]} for s in ann["segments_info"]]
        annotations.append({"image_id": ann["image_id"], "file_name": ann["file_name"], "segments_info": segments})
    write_json_atomic({"annotations": annotations}, out_json, indent=1)
    return len(annotations)
