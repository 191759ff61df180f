"""The synthetic city exported as a generic COCO-panoptic dataset (issue 15's second example).

Other category ids and names than Cityscapes' (id 100 + train id, names of another
taxonomy), integer image ids, JPEG photos in per-city subfolders, one PNG per image:
what a user's own dataset, written by panopticapi or a detectron2 converter, looks like.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from PIL import Image

from vocabseg.data.labelset import LabelSet

#: the exported taxonomy: Cityscapes train id -> name (ids are 100 + train id)
NAMES = (
    "roadway", "footpath", "edifice", "partition", "railing", "post", "signal", "signboard",
    "greenery", "ground", "heavens", "pedestrian", "cyclist", "automobile", "lorry", "coach",
    "tram", "motorbike", "pushbike",
)


def coco_id(cityscapes_id: int) -> int:
    """The exported category id of a Cityscapes label id."""
    return 100 + LabelSet.cityscapes().by_id[cityscapes_id].train_id


def export_coco(raw: Path, prepared: Path, out: Path) -> Path:
    """Write the prepared synthetic city (``raw`` photos, ``prepared`` panoptic pairs) to
    ``out`` in the default COCO-panoptic layout; returns ``out``."""
    cityscapes = LabelSet.cityscapes()
    categories = [
        {"id": coco_id(c.id), "name": NAMES[c.train_id], "isthing": int(c.isthing), "color": list(c.color),
         "supercategory": "street"}
        for c in cityscapes.evaluated
    ]
    for split in ("train", "val"):
        gt = json.loads((prepared / f"cityscapes_panoptic_{split}.json").read_text())
        (out / "images" / split).mkdir(parents=True)
        (out / "annotations" / f"panoptic_{split}").mkdir(parents=True)
        images, annotations = [], []
        for number, ann in enumerate(gt["annotations"], start=1):
            stem = str(ann["image_id"])
            city = stem.split("_")[0]
            photo = raw / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            file_name = f"{city}/{stem}.jpg"
            (out / "images" / split / city).mkdir(exist_ok=True)
            with Image.open(photo) as im:
                im.convert("RGB").save(out / "images" / split / file_name, quality=95)
                width, height = im.size
            shutil.copyfile(prepared / f"cityscapes_panoptic_{split}" / ann["file_name"],
                            out / "annotations" / f"panoptic_{split}" / f"{stem}.png")
            images.append({"id": number, "file_name": file_name, "width": width, "height": height})
            segments = [{"id": s["id"], "category_id": coco_id(s["category_id"]), "iscrowd": s["iscrowd"],
                         "bbox": s["bbox"]} for s in ann["segments_info"]]  # no area: computed on load
            annotations.append({"image_id": number, "file_name": f"{stem}.png", "segments_info": segments})
        data = {"images": images, "annotations": annotations, "categories": categories}
        (out / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(data))
    return out
