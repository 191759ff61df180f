"""A user's COCO-panoptic dataset: its layout, its validation and its preparation.

The dataset is a folder with, per split (``train``, ``val``), the files that panopticapi
and detectron2's converters write (paths relative to the folder; ``{split}`` is the
split's name; config key ``dataset.coco_panoptic``)::

    images/{split}/...                   photos, at each images[].file_name
    annotations/panoptic_{split}.json    images, annotations (segments_info), categories
    annotations/panoptic_{split}/        one panoptic PNG per annotation file_name
                                         (segment id = R + 256 G + 256^2 B, 0 = void)

:func:`prepare_coco_panoptic` checks every split and lists each problem on its own
line (a missing or unreadable photo or PNG, a PNG segment id the JSON does not list or
the other way round, a category id not in ``categories``, splits with different
``categories``), then writes what every later stage reads, under the names the
Cityscapes preparation uses:

    <raw>/leftImg8bit/{split}            a link to the split's photo folder
    <prepared>/cityscapes_panoptic_{split}.json   the JSON; each images[] entry gains
                                         "path" (= its file_name, see vocabseg.data.photos)
                                         and each segment its "area" if it had none;
                                         image ids become strings, as predictions'
    <prepared>/cityscapes_panoptic_{split}/       the PNGs (hard links where possible)
    <prepared>/gtFine/{split}/<dir>/<stem>_gtFine_labelTrainIds.png
                                         per photo <dir>/<stem>.<ext> (its file_name), the
                                         semantic labels ContMAV reads
                                         (vocabseg.openworld.dataset): each pixel the
                                         train id of its segment's category in the label
                                         set (LabelSet.from_categories), 255 void
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from vocabseg.data.labelset import IGNORE_TRAIN_ID, LabelSet
from vocabseg.data.panoptic_png import read_panoptic_png, segment_index
from vocabseg.data.photos import PATH_KEY, train_id_label_path
from vocabseg.errors import InputError
from vocabseg.fileio import link_or_copy, read_json, replace_dir, write_json_atomic

__all__ = ["CocoLayout", "check_split", "prepare_coco_panoptic", "prepared_name", "train_id_map"]

#: problems listed in the error before "... and N more"
MAX_LISTED = 20


def prepared_name(split: str) -> str:
    """Stem of a split's prepared JSON and PNG folder (as the Cityscapes preparation's)."""
    return f"cityscapes_panoptic_{split}"


@dataclass(frozen=True)
class CocoLayout:
    """Where a split's files are, relative to ``root`` (``{split}`` is replaced)."""

    root: Path
    images: str = "images/{split}"
    json: str = "annotations/panoptic_{split}.json"
    png: str = "annotations/panoptic_{split}"

    def paths(self, split: str) -> tuple[Path, Path, Path]:
        """(photo folder, panoptic JSON, PNG folder) of ``split``."""
        return tuple(Path(self.root) / p.format(split=split) for p in (self.images, self.json, self.png))


def check_split(layout: CocoLayout, split: str) -> tuple[dict | None, list[str]]:
    """Validate one split; return its JSON with ``path`` and ``area`` filled in (None
    if unreadable) and the list of problems (one line each, naming the file)."""
    image_dir, json_path, png_dir = layout.paths(split)
    try:
        gt = read_json(json_path)
    except InputError as err:
        return None, [str(err)]
    if not isinstance(gt, dict) or not all(isinstance(gt.get(k), list) for k in ("images", "annotations", "categories")):
        return None, [f"{json_path}: a COCO-panoptic JSON has 'images', 'annotations' and 'categories' lists"]
    problems: list[str] = []
    try:
        labels = LabelSet.from_categories("dataset", gt["categories"], source=str(json_path))
    except InputError as err:
        return None, [str(err)]
    images = {}
    for k, image in enumerate(gt["images"]):
        if not isinstance(image, dict) or "id" not in image or not isinstance(image.get("file_name"), str):
            problems.append(f"{json_path}: images[{k}] lacks 'id' or 'file_name'")
            continue
        images[str(image["id"])] = image
    annotated = set()
    annotations = []
    for k, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict) or not {"image_id", "file_name", "segments_info"} <= ann.keys():
            problems.append(f"{json_path}: annotations[{k}] lacks 'image_id', 'file_name' or 'segments_info'")
            continue
        image_id = str(ann["image_id"])
        annotated.add(image_id)
        if image_id not in images:
            problems.append(f"{json_path}: annotation of image {image_id!r}, which 'images' does not list")
            continue
        checked = _check_annotation(ann, images[image_id], image_dir, png_dir, labels, json_path)
        problems.extend(checked[1])
        annotations.append(checked[0])
    problems.extend(
        f"{json_path}: image {image_id!r} has no annotation" for image_id in images if image_id not in annotated
    )
    # image ids as strings, as every later stage (and a prediction's JSON) writes them
    images_out = [{**image, "id": image_id, PATH_KEY: image["file_name"]} for image_id, image in images.items()]
    return {**gt, "images": images_out, "annotations": annotations}, problems


def _check_annotation(
    ann: Mapping, image: Mapping, image_dir: Path, png_dir: Path, labels: LabelSet, json_path: Path
) -> tuple[dict, list[str]]:
    """One annotation's problems, and the annotation with every segment's ``area``."""
    image_id, problems = str(ann["image_id"]), []
    photo = image_dir / image["file_name"]
    size = None
    try:
        with Image.open(photo) as im:
            size = (im.height, im.width)
    except FileNotFoundError:
        problems.append(f"{photo}: missing image (images[] file_name of {image_id!r} in {json_path})")
    except (OSError, SyntaxError, ValueError) as err:
        problems.append(f"{photo}: unreadable image ({err})")
    try:
        ids = read_panoptic_png(png_dir / ann["file_name"])
    except InputError as err:
        return dict(ann), [*problems, str(err)]
    if size is not None and ids.shape != size:
        problems.append(f"{png_dir / ann['file_name']}: size {ids.shape[::-1]} differs from its image {photo} ({size[::-1]})")
    present, counts = np.unique(ids, return_counts=True)
    area = dict(zip(present.tolist(), counts.tolist()))
    listed = {}
    for seg in ann["segments_info"]:
        if not isinstance(seg, dict) or not {"id", "category_id"} <= seg.keys():
            problems.append(f"{json_path}: a segment of image {image_id!r} lacks 'id' or 'category_id'")
            continue
        listed[int(seg["id"])] = seg
        if int(seg["category_id"]) not in labels.by_id:
            problems.append(
                f"{json_path}: image {image_id!r}, segment {seg['id']}: category {seg['category_id']} "
                "is not in the 'categories' list"
            )
    for sid in sorted(set(area) - {0} - set(listed)):
        problems.append(f"{png_dir / ann['file_name']}: segment id {sid} is not in the JSON's segments_info of {image_id!r}")
    for sid in sorted(set(listed) - set(area)):
        problems.append(f"{json_path}: image {image_id!r}, segment {sid} is listed but absent from its PNG")
    segments = [{**seg, "area": seg.get("area", area.get(sid, 0))} for sid, seg in listed.items()]
    return {**ann, "image_id": image_id, "segments_info": segments}, problems


def train_id_map(ids: np.ndarray, segments: Sequence[Mapping], labels: LabelSet) -> np.ndarray:
    """Semantic labels of a panoptic segment map: ``ids`` (H, W) segment ids, ``segments``
    the annotation's ``segments_info`` -> (H, W) uint8 train ids of their categories
    (crowd segments too), 255 (void) where no listed segment is."""
    lut = labels.train_id_lut()
    seg_ids = np.array([int(s["id"]) for s in segments], dtype=np.int64)
    train_ids = np.array([lut[int(s["category_id"])] for s in segments], dtype=np.uint8)
    index = segment_index(ids, seg_ids)
    out = np.full(ids.shape, IGNORE_TRAIN_ID, dtype=np.uint8)
    out[index >= 0] = train_ids[index[index >= 0]]
    return out


def _write_train_ids(ann: Mapping, image: Mapping, png: Path, labels: LabelSet, out_dir: Path) -> None:
    """The ContMAV label PNG of one annotation, named after its photo's file_name."""
    path = train_id_label_path(out_dir, image["file_name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(train_id_map(read_panoptic_png(png), ann["segments_info"], labels), mode="L").save(path)


def prepare_coco_panoptic(
    layout: CocoLayout, raw_out: Path, prepared_out: Path, splits: Sequence[str] = ("train", "val")
) -> dict[str, int]:
    """Validate the splits of a COCO-panoptic dataset and write its raw/ and prepared/
    folders (module docstring). Raises one :class:`InputError` listing every problem,
    before writing anything. Returns the number of images per split."""
    checked, problems = {}, []
    for split in splits:
        checked[split], found = check_split(layout, split)
        problems.extend(found)
    first = checked[splits[0]]
    for split in splits[1:]:
        if first is not None and checked[split] is not None and checked[split]["categories"] != first["categories"]:
            problems.append(
                f"{layout.paths(split)[1]}: 'categories' differ from those of {layout.paths(splits[0])[1]}; "
                "every split must list the same classes"
            )
    if problems:
        listed = "\n".join(f"  {p}" for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise InputError(f"COCO-panoptic dataset {layout.root}: {len(problems)} problem(s)\n{listed}{more}")

    raw_tmp, prepared_tmp = (Path(p).with_name(Path(p).name + ".tmp") for p in (raw_out, prepared_out))
    for tmp in (raw_tmp, prepared_tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    (raw_tmp / "leftImg8bit").mkdir(parents=True)
    prepared_tmp.mkdir(parents=True)
    labels = LabelSet.from_categories("dataset", first["categories"], source=str(layout.paths(splits[0])[1]))
    for split in splits:
        image_dir, _, png_dir = layout.paths(split)
        os.symlink(image_dir.resolve(), raw_tmp / "leftImg8bit" / split, target_is_directory=True)
        folder = prepared_tmp / prepared_name(split)
        folder.mkdir()
        images = {image["id"]: image for image in checked[split]["images"]}
        for ann in checked[split]["annotations"]:
            (folder / ann["file_name"]).parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(png_dir / ann["file_name"], folder / ann["file_name"])
            _write_train_ids(ann, images[ann["image_id"]], png_dir / ann["file_name"], labels,
                             prepared_tmp / "gtFine" / split)
        write_json_atomic(checked[split], prepared_tmp / f"{prepared_name(split)}.json")
    replace_dir(raw_tmp, raw_out)
    replace_dir(prepared_tmp, prepared_out)
    return {split: len(checked[split]["images"]) for split in splits}
