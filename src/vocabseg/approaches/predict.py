"""Panoptic predictions of an FC-CLIP model on a split (photos: :mod:`vocabseg.data.photos`).

Writes the COCO-panoptic pair that :mod:`vocabseg.evaluation` (and
cityscapesscripts) read: ``<out_folder>/<image_id>_panoptic.png`` (segment ids as
``R + 256 G + 256² B``, 0 = void) and ``out_json`` with one annotation per image
whose ``segments_info`` carry the dataset's label ids and each segment's confidence
``"score"`` (its query's class probability, see
:func:`vocabseg.models.fcclip.panoptic_inference`; the pseudo-label builder reads it).

Batched, under ``torch.no_grad``, with float16 autocast on GPU. The test vocabulary
is the text classifier's classes: every evaluated class of the label set, or (the
seed's lower bound, ``predict_classes: vocab``) only the in-classes it was trained on;
the ensemble's "seen" classes are the base model's training classes plus the
approach's own training vocabulary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from tqdm import tqdm

from vocabseg.data.labelset import LabelSet
from vocabseg.data.panoptic_png import write_panoptic_png
from vocabseg.data.photos import photo_path
from vocabseg.errors import InputError
from vocabseg.fileio import read_json, read_rgb, write_json_atomic
from vocabseg.models.fcclip import FCCLIP, TextClassifier

__all__ = ["predict_panoptic", "image_list"]


def image_list(gt_json: Path, image_root: Path) -> list[tuple[str, Path]]:
    """(image id, photo path) of every image of a prepared panoptic JSON."""
    images = read_json(gt_json).get("images")
    if not isinstance(images, list):
        raise InputError(f"{gt_json}: panoptic JSON without an 'images' list")
    return [(str(im["id"]), photo_path(image_root, str(im["id"]), im)) for im in images]


@torch.no_grad()
def predict_panoptic(
    model: FCCLIP | nn.Module,
    text: TextClassifier,
    class_ids: Sequence[int],
    seen_ids: Sequence[int],
    images: Sequence[tuple[str, Path]],
    out_json: Path,
    out_folder: Path,
    *,
    batch_size: int = 1,
    device: torch.device | None = None,
    labels: LabelSet | None = None,
) -> int:
    """Predict every image and write the panoptic PNGs and JSON; return the count.

    Args:
        model: FC-CLIP with weights loaded, or any module with the same
            ``inference(images, text, num_synonyms, *, seen_mask=, thing_mask=,
            image_sizes=)`` contract, e.g. a
            :class:`~vocabseg.approaches.combined.CombinedFCCLIP` (its
            ``predict_with`` selects the fused pair, M1 or M2).
        text: test-vocabulary text classifier, classes in the order of ``class_ids``.
        class_ids: label id of each text-classifier class.
        seen_ids: label ids that get the ensemble weight for seen classes.
        images: (image id, photo path) pairs, e.g. from :func:`image_list`.
        labels: the dataset's label set: which classes are things (None: Cityscapes).
    """
    thing_ids = set((labels or LabelSet.cityscapes()).thing_ids)
    if len(class_ids) != len(text.num_synonyms):
        raise InputError(f"text classifier has {len(text.num_synonyms)} classes, expected {len(class_ids)}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.eval().to(device)
    embeddings = text.embeddings.to(device)
    seen = torch.tensor([c in set(seen_ids) for c in class_ids])
    things = torch.tensor([c in thing_ids for c in class_ids])
    out_folder = Path(out_folder)
    out_folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for start in tqdm(range(0, len(images), batch_size), desc="predict", unit="batch", mininterval=5):
        chunk = images[start : start + batch_size]
        arrays = [read_rgb(path) for _, path in chunk]
        sizes = [a.shape[:2] for a in arrays]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)
        batch = torch.zeros(len(arrays), 3, height, width)
        for i, a in enumerate(arrays):
            batch[i, :, : a.shape[0], : a.shape[1]] = torch.from_numpy(a.copy()).permute(2, 0, 1)
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            results = model.inference(
                batch.to(device), embeddings, text.num_synonyms, seen_mask=seen, thing_mask=things, image_sizes=sizes
            )
        for (image_id, _), res in zip(chunk, results):
            file_name = f"{image_id}_panoptic.png"
            write_panoptic_png(out_folder / file_name, res["panoptic_seg"].cpu().numpy())
            segments = [_json_segment(s, class_ids) for s in res["segments_info"]]
            annotations.append({"image_id": image_id, "file_name": file_name, "segments_info": segments})
    write_json_atomic({"annotations": annotations}, out_json, indent=1)
    return len(annotations)


def _json_segment(segment: dict, class_ids: Sequence[int]) -> dict:
    """One ``segments_info`` entry of the JSON: id, label id and, when the model gives
    one (FC-CLIP always does), the segment's confidence ``"score"`` (float)."""
    out = {"id": int(segment["id"]), "category_id": int(class_ids[segment["category"]])}
    if "score" in segment:
        out["score"] = float(segment["score"])
    return out
