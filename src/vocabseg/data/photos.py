"""Where the photo of an image of a prepared panoptic JSON is.

Two layouts, told apart by the JSON's ``images`` entry, never guessed from names:

* Cityscapes (and the synthetic city): ``<image_root>/<city>/<image id>_leftImg8bit.png``
  with ``<city>`` the id's first ``_`` part. The ``file_name`` that
  ``csCreatePanopticImgs`` writes is not used (it carries a spurious ``_gtFine`` part).
* COCO-panoptic datasets (:mod:`vocabseg.data.coco_panoptic`): the entry's ``"path"``,
  the photo's path relative to the split's image folder (the dataset's own
  ``file_name``), which the preparation adds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

__all__ = ["PATH_KEY", "photo_path"]

#: key of an ``images`` entry giving the photo relative to the image root
PATH_KEY = "path"


def photo_path(image_root: Path | str, image_id: str, image: Mapping | None = None) -> Path:
    """The photo of ``image_id`` (``image``: its ``images`` entry, if the JSON has one)."""
    if image is not None and PATH_KEY in image:
        return Path(image_root) / str(image[PATH_KEY])
    return Path(image_root) / image_id.split("_")[0] / f"{image_id}_leftImg8bit.png"
