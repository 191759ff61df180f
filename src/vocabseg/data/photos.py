"""Where the photo of an image of a prepared panoptic JSON is.

Two layouts, told apart by the JSON's ``images`` entry, never guessed from names:

* Cityscapes (and the synthetic city): ``<image_root>/<city>/<image id>_leftImg8bit.png``
  with ``<city>`` the id's first ``_`` part. The ``file_name`` that
  ``csCreatePanopticImgs`` writes is not used (it carries a spurious ``_gtFine`` part).
* COCO-panoptic datasets (:mod:`vocabseg.data.coco_panoptic`): the entry's ``"path"``,
  the photo's path relative to the split's image folder (the dataset's own
  ``file_name``), which the preparation adds.

A photo's semantic (train-id) label, as ``vocabseg prepare`` and ``prepare-coco`` write
it and ContMAV reads it, is :func:`train_id_label_path`: the photo's relative folder
below the label root, ``<stem>_gtFine_labelTrainIds.png`` (the stem without
``_leftImg8bit``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

__all__ = ["PATH_KEY", "photo_path", "train_id_label_path"]

#: file-name ending of a train-id label PNG (Cityscapes' name)
TRAIN_ID_SUFFIX = "_gtFine_labelTrainIds.png"

#: key of an ``images`` entry giving the photo relative to the image root
PATH_KEY = "path"


def photo_path(image_root: Path | str, image_id: str, image: Mapping | None = None) -> Path:
    """The photo of ``image_id`` (``image``: its ``images`` entry, if the JSON has one)."""
    if image is not None and PATH_KEY in image:
        return Path(image_root) / str(image[PATH_KEY])
    return Path(image_root) / image_id.split("_")[0] / f"{image_id}_leftImg8bit.png"


def train_id_label_path(label_root: Path | str, photo: Path | str) -> Path:
    """The train-id label of ``photo`` (relative to its split's image folder): e.g.
    ``aachen/x_leftImg8bit.png`` -> ``<label_root>/aachen/x_gtFine_labelTrainIds.png``."""
    photo = Path(photo)
    return Path(label_root) / photo.parent / f"{photo.stem.removesuffix('_leftImg8bit')}{TRAIN_ID_SUFFIX}"
