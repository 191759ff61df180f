"""The panoptic training dataset: COCO-panoptic ground truth to mask-classification targets.

A sample is one photo with one binary mask and one class index per kept segment,
as Mask2Former's ``MaskFormerPanopticDatasetMapper`` builds them:

* crowd segments (``iscrowd`` 1) are dropped, and so are segments whose category is
  not in the training vocabulary; their pixels carry no mask (they are neither
  foreground of any target nor matched);
* after augmentation, segments left without any pixel (cropped away) are dropped.

Photos are found by :func:`vocabseg.data.photos.photo_path` (Cityscapes layout, or a
COCO-panoptic dataset's own paths); the panoptic PNG is
``panoptic_folder/<annotation file_name>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from vocabseg.data.panoptic_png import read_panoptic_png, segment_index
from vocabseg.data.photos import photo_path
from vocabseg.errors import InputError
from vocabseg.fileio import read_rgb

__all__ = ["PanopticTrainDataset"]

Transform = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


class PanopticTrainDataset:
    """Cityscapes-layout panoptic training data.

    Args:
        panoptic_json: COCO-panoptic JSON; ``category_id`` values are label ids.
        panoptic_folder: folder of the panoptic PNGs named in ``annotations``.
        image_root: ``leftImg8bit/<split>`` folder holding ``<city>/`` subfolders.
        class_ids: label ids of the training vocabulary; their order defines the
            contiguous class indices 0..K-1 of the targets.
        transform: ``transform(image, seg, generator) -> (image, seg)``, e.g.
            :class:`vocabseg.data.transforms.TrainAugment`; ``None`` keeps the full
            image.

    ``get(index, seed)`` returns ``(image, target)``:

    * ``image``: float32 [3, H, W], RGB 0..255;
    * ``target``: ``{"labels": int64 [N], "masks": bool [N, H, W], "seed": seed}``,
      segments in ``segments_info`` order; masks are disjoint.
    """

    def __init__(
        self,
        panoptic_json: Path,
        panoptic_folder: Path,
        image_root: Path,
        class_ids: Sequence[int],
        transform: Transform | None = None,
    ):
        self.class_ids = tuple(int(c) for c in class_ids)
        if len(set(self.class_ids)) != len(self.class_ids):
            raise InputError(f"class_ids: repeated label ids in {list(self.class_ids)}")
        self.transform = transform
        self._class_index = {cid: k for k, cid in enumerate(self.class_ids)}
        panoptic_json, panoptic_folder, image_root = (
            Path(panoptic_json),
            Path(panoptic_folder),
            Path(image_root),
        )
        try:
            gt = json.loads(panoptic_json.read_text())
            annotations = gt["annotations"]
            images = {str(im["id"]): im for im in gt.get("images", [])}
            self._records = []
            for ann in annotations:
                image_id = str(ann["image_id"])
                segments = [
                    (int(s["id"]), self._class_index[int(s["category_id"])])
                    for s in ann["segments_info"]
                    if not s.get("iscrowd", 0) and int(s["category_id"]) in self._class_index
                ]
                self._records.append(
                    (
                        image_id,
                        photo_path(image_root, image_id, images.get(image_id)),
                        panoptic_folder / ann["file_name"],
                        segments,
                    )
                )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise InputError(
                f"{panoptic_json}: unreadable panoptic JSON ({type(err).__name__}: {err})"
            ) from None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_classes(self) -> int:
        """K, the size of the training vocabulary."""
        return len(self.class_ids)

    @property
    def image_ids(self) -> list[str]:
        """Image ids in dataset order."""
        return [r[0] for r in self._records]

    def segment_map(self, index: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """Un-augmented sample ``index``.

        Returns:
            image: (H, W, 3) uint8 RGB;
            seg: (H, W) int32, ``k + 1`` on the pixels of the k-th kept segment, 0 elsewhere;
            labels: class index of each kept segment.
        """
        _, image_path, png_path, segments = self._records[index]
        image = read_rgb(image_path)
        ids = read_panoptic_png(png_path)
        if ids.shape != image.shape[:2]:
            raise InputError(
                f"{png_path}: size {ids.shape[::-1]} differs from {image_path} ({image.shape[1::-1]})"
            )
        seg_ids = np.array([s[0] for s in segments], dtype=np.uint32)
        seg = (segment_index(ids, seg_ids) + 1).astype(np.int32)
        return image, seg, [s[1] for s in segments]

    def get(self, index: int, seed: int) -> tuple[torch.Tensor, dict]:
        """Sample ``index``, augmented with randomness drawn only from ``seed``."""
        image_np, seg_np, labels = self.segment_map(index)
        image = torch.from_numpy(np.ascontiguousarray(image_np.transpose(2, 0, 1))).float()
        seg = torch.from_numpy(seg_np)
        if self.transform is not None:
            generator = torch.Generator().manual_seed(int(seed))
            image, seg = self.transform(image, seg, generator)
        masks = seg[None] == torch.arange(1, len(labels) + 1, dtype=seg.dtype)[:, None, None]
        keep = masks.flatten(1).any(1)
        target = {
            "labels": torch.tensor(labels, dtype=torch.int64)[keep],
            "masks": masks[keep],
            "seed": int(seed),
        }
        return image, target
