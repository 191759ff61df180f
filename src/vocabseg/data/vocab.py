"""Vocabulary configurations and the training ground truth they induce.

A configuration deletes a set of classes (label ids) from the *training* annotations
(the "out-of-vocabulary" classes); the remaining evaluated classes are
"in-vocabulary". Validation ground truth is never changed: every model is always
evaluated on every class, and the In / Out groups of the metrics come from the
configuration's ``split.json``.

A study names its own configurations (config key ``vocab_configs``: name -> deleted
class ids or names of its label set). Without them, a Cityscapes-labelled study
(Cityscapes, the synthetic city) uses the seed's configurations 000-008:

======  ==========================================
conf    deleted label ids
======  ==========================================
000     {}
001     {24}                      person
002     {24, 25}                  + rider
003     {24, 25, 26}              + car
004     {24, 25, 26, 27}          + truck
005     {24, ..., 28}             + bus
006     {24, ..., 28, 31}         + train
007     {24, ..., 28, 31, 32}     + motorcycle
008     {24, ..., 28, 31, 32, 33} + bicycle (all 8 thing classes)
======  ==========================================
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from vocabseg.data.labelset import LabelSet
from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.errors import InputError
from vocabseg.fileio import link_or_copy, read_json, write_json_atomic

__all__ = ["VOCAB_CONFIGS", "make_split", "resolve_deleted", "write_vocab_split"]

_ORDER = (24, 25, 26, 27, 28, 31, 32, 33)
VOCAB_CONFIGS: dict[str, tuple[int, ...]] = {f"{k:03d}": _ORDER[:k] for k in range(9)}


def resolve_deleted(conf: str, classes: Sequence[int | str], labels: LabelSet) -> tuple[int, ...]:
    """Label ids of a configuration's deleted classes, given by id or name (a string of
    digits is an id); InputError naming the config key ``vocab_configs.<conf>``."""
    ids = []
    for ref in classes:
        if isinstance(ref, str) and ref.strip().isdigit():
            ref = int(ref)
        ids.append(labels.class_id(ref, key=f"config key vocab_configs.{conf}"))
    if len(set(ids)) != len(ids):
        raise InputError(f"config key vocab_configs.{conf}: a class is deleted twice ({list(classes)})")
    if len(set(ids)) == labels.num_classes:
        raise InputError(f"config key vocab_configs.{conf}: deletes every class; keep at least one in-vocabulary")
    return tuple(ids)


def make_split(conf: str, labels: LabelSet | None = None, deleted: Sequence[int | str] | None = None) -> dict:
    """Return the ``split.json`` content of configuration ``conf``.

    Args:
        conf: the configuration's name (e.g. ``"008"``).
        labels: the dataset's label set (None: Cityscapes).
        deleted: its deleted classes, ids or names; None: the seed's table
            (:data:`VOCAB_CONFIGS`, Cityscapes label ids).
    """
    labels = labels or LabelSet.cityscapes()
    if deleted is None:
        if conf not in VOCAB_CONFIGS:
            raise InputError(f"vocabulary configuration {conf!r}: expected one of {sorted(VOCAB_CONFIGS)}")
        deleted = VOCAB_CONFIGS[conf]
    deleted = resolve_deleted(conf, deleted, labels)
    in_ids = [i for i in labels.eval_ids if i not in deleted]
    out_ids = [i for i in labels.eval_ids if i in deleted]
    return {
        "vocab": conf,
        "deleted_ids": list(deleted),
        "in_ids": in_ids,
        "out_ids": out_ids,
        "in_names": [labels.name(i) for i in in_ids],
        "out_names": [labels.name(i) for i in out_ids],
    }


def write_vocab_split(
    train_json: Path,
    train_folder: Path,
    conf: str,
    split_out: Path,
    gt_json_out: Path,
    gt_folder_out: Path,
    *,
    labels: LabelSet | None = None,
    deleted: Sequence[int | str] | None = None,
) -> dict:
    """Write ``split.json`` and the training panoptic ground truth of ``conf``.

    Segments whose category is deleted by ``conf`` are removed from ``segments_info``
    and their pixels set to VOID (id 0) in the PNG, so the filtered ground truth is a
    valid COCO-panoptic pair on its own. Images that lose nothing are hard-linked
    (copied where links are impossible).

    ``labels`` and ``deleted`` as :func:`make_split`. Returns the split dictionary.
    """
    split = make_split(conf, labels, deleted)
    deleted = set(split["deleted_ids"])
    gt = read_json(train_json)

    tmp_folder = gt_folder_out.with_name(gt_folder_out.name + ".tmp")
    shutil.rmtree(tmp_folder, ignore_errors=True)
    tmp_folder.mkdir(parents=True)
    annotations = []
    for ann in gt["annotations"]:
        src = Path(train_folder) / ann["file_name"]
        dst = tmp_folder / ann["file_name"]
        drop = [s for s in ann["segments_info"] if s["category_id"] in deleted]
        if not drop:
            link_or_copy(src, dst)
            annotations.append(ann)
            continue
        ids = read_panoptic_png(src)  # InputError naming src if unreadable
        ids[np.isin(ids, [s["id"] for s in drop])] = 0
        write_panoptic_png(dst, ids)
        annotations.append({**ann, "segments_info": [s for s in ann["segments_info"] if s["category_id"] not in deleted]})

    shutil.rmtree(gt_folder_out, ignore_errors=True)
    tmp_folder.rename(gt_folder_out)
    write_json_atomic({**gt, "annotations": annotations}, Path(gt_json_out))
    write_json_atomic(split, Path(split_out))
    return split
