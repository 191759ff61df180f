"""Semantic-segmentation data in the Cityscapes layout, for ContMAV training and evaluation.

Files (what :mod:`vocabseg.data.prepare` produces for Cityscapes and the synthetic
city, and :mod:`vocabseg.data.coco_panoptic` for a user's COCO-panoptic dataset;
BDD-Anomaly is laid out the same way, issue #6 of the public ContMAV code)::

    image_root = <raw>/leftImg8bit/<split>:       <city>/<stem>_leftImg8bit.{png,jpg,jpeg}
    label_root = <prepared>/gtFine/<split>:      <city>/<stem>_gtFine_labelTrainIds.png

An image named without the ``_leftImg8bit`` part (``<city>/<stem>.jpg``) also works;
its label is ``<city>/<stem>_gtFine_labelTrainIds.png`` all the same. Images may lie
at any depth below ``image_root`` (a COCO dataset's photos often lie directly in it):
the label is at the same relative folder below ``label_root``. Label PNGs hold train
ids of the dataset's label set (:class:`~vocabseg.data.labelset.LabelSet`):
``0 .. C-1`` classes (``num_classes`` C; Cityscapes' 19 by default), 255 void; any
other value (a ``*_labelIds.png`` by mistake) raises :class:`InputError` naming the file.

Label spaces. ``known_train_ids`` (e.g. the 19 train ids minus train / motorcycle /
bicycle for BDD-Anomaly's "1+16") are the K known classes; their order gives the
contiguous indices ``0 .. K-1``. The other train ids are the *unknown* classes.

* Training labels (:meth:`SemanticDataset.get`, ContMAV's "1 + K"): known classes
  ``0 .. K-1``, void 255 (:data:`VOID`: the "unknown" of the objectosphere loss, as in
  the paper, where the unknown pixels at training time are the void areas), and the
  pixels of the unknown classes either ``UNKNOWN_CLASS`` 254 (``unknown_as="ignore"``,
  the default: no loss sees them, the classes stay truly unseen) or 255
  (``unknown_as="void"``: they join void, i.e. the objectosphere loss is told they
  are unknown, which the public code's commented-out ``cw_target[cw_target > 16] =
  255`` would do; that is outlier exposure with the test classes, for ablations).
  BDD-Anomaly's training split holds no unknown-class pixel, so both agree there.
* Evaluation (:meth:`SemanticDataset.raw`): the image and the raw train-id map;
  :meth:`LabelSpace.eval_labels` turns it into the open-world evaluator's space
  (known ``0 .. K-1``, unknown ``K .. K+U-1`` in train-id order, void 255).

Augmentation (ContMAV / ESANet recipe, facts §4): random rescale by a factor
``U(0.5, 2.0)`` of both sides, random crop (``crop_size``), ``RandomHSV`` (hue and
saturation times ``U(0.9, 1.1)``, value plus ``U(-25, 25)``), horizontal flip with
p = 0.5: :class:`vocabseg.data.transforms.TrainAugment` for the geometry and the flip
(its SSD colour jitter off) and :func:`~vocabseg.data.transforms.color_jitter_hsv`.
A crop larger than the rescaled image is padded with void (the public code rescales
instead). Every random draw comes from ``torch.Generator().manual_seed(seed)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from vocabseg.data.photos import train_id_label_path
from vocabseg.data.transforms import AugmentConfig, TrainAugment, color_jitter_hsv
from vocabseg.errors import InputError
from vocabseg.fileio import read_rgb

__all__ = [
    "NUM_TRAIN_IDS",
    "VOID",
    "UNKNOWN_CLASS",
    "IMAGE_SUFFIXES",
    "LabelSpace",
    "SemanticDataset",
    "list_semantic_pairs",
    "read_train_ids",
    "contmav_augment",
]

#: Cityscapes' evaluated classes: train ids 0 .. 18 (the default class count C; a
#: study's label set gives its own).
NUM_TRAIN_IDS = 19
#: Void (and the unknown label of the objectosphere loss).
VOID = 255
#: Training label of unknown-class pixels with ``unknown_as="ignore"``: no loss uses it.
UNKNOWN_CLASS = 254
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class LabelSpace:
    """Known and unknown train ids and the lookup tables between the label spaces.

    ``known`` the K known train ids (their order = indices 0..K-1); ``unknown`` the
    unknown classes (their order = ``K + j``): by default every other train id among
    ``0 .. num_classes-1`` (the dataset's C classes), ascending; a train id in neither
    counts as void.
    """

    known: tuple[int, ...]
    only_unknown: tuple[int, ...] | None = None
    num_classes: int = NUM_TRAIN_IDS

    def __post_init__(self) -> None:
        known = tuple(int(t) for t in self.known)
        if not known:
            raise InputError("known train ids: the list is empty")
        bad = [t for t in known if not 0 <= t < self.num_classes]
        if bad:
            raise InputError(f"known train ids: {bad} outside 0..{self.num_classes - 1}")
        if len(set(known)) != len(known):
            raise InputError(f"known train ids: repeated ids in {list(known)}")
        object.__setattr__(self, "known", known)

    @property
    def unknown(self) -> tuple[int, ...]:
        if self.only_unknown is not None:
            return tuple(int(t) for t in self.only_unknown)
        return tuple(t for t in range(self.num_classes) if t not in self.known)

    @property
    def num_known(self) -> int:
        return len(self.known)

    def _table(self, unknown_value: int | None) -> torch.Tensor:
        table = torch.full((256,), VOID, dtype=torch.int64)
        for k, t in enumerate(self.known):
            table[t] = k
        for j, t in enumerate(self.unknown):
            table[t] = self.num_known + j if unknown_value is None else unknown_value
        return table

    def train_labels(self, train_ids: torch.Tensor, unknown_as: str = "ignore") -> torch.Tensor:
        """Train-id map [..., H, W] -> training labels (known 0..K-1, void 255, unknown
        classes :data:`UNKNOWN_CLASS` or 255, see the module docstring)."""
        value = {"ignore": UNKNOWN_CLASS, "void": VOID}[unknown_as]
        return self._table(value)[train_ids.long()]

    def eval_labels(self, train_ids: torch.Tensor) -> torch.Tensor:
        """Train-id map -> evaluation labels: known 0..K-1, unknown ``K + j`` (j-th
        of :attr:`unknown`), void 255."""
        return self._table(None)[train_ids.long()]


def _stem(image: Path) -> str:
    name = image.name[: -len(image.suffix)]
    return name.removesuffix("_leftImg8bit")


def list_semantic_pairs(image_root: Path, label_root: Path) -> list[tuple[Path, Path]]:
    """Sorted ``(image, label)`` paths of a split: every image below ``image_root`` (at
    any depth: ``<city>/`` subfolders in Cityscapes) and its label at the same relative
    folder below ``label_root``.

    :class:`InputError` naming the folder if ``image_root`` is missing or holds no
    image, or naming the label file an image lacks.
    """
    image_root, label_root = Path(image_root), Path(label_root)
    if not image_root.is_dir():
        raise InputError(f"{image_root}: image folder not found (expected leftImg8bit/<split>)")
    images = sorted(
        p for p in image_root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not images:
        raise InputError(
            f"{image_root}: no images (<city>/*_leftImg8bit.png or .jpg); is the dataset there?"
        )
    if not label_root.is_dir():
        raise InputError(f"{label_root}: label folder not found (expected gtFine/<split>)")
    pairs = []
    for image in images:
        label = train_id_label_path(label_root, image.relative_to(image_root))
        if not label.is_file():
            raise InputError(
                f"{label}: missing train-id label of {image}; run `vocabseg prepare` (a COCO-panoptic "
                "dataset: `vocabseg prepare-coco`, which writes one per annotated photo)"
            )
        pairs.append((image, label))
    return pairs


def read_train_ids(path: Path, num_classes: int = NUM_TRAIN_IDS) -> np.ndarray:
    """(H, W) uint8 train-id map of a label PNG; :class:`InputError` naming the file if it
    is unreadable, not single-channel, or holds a value outside ``0..num_classes-1`` and
    255."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I;16", "I"):
                raise InputError(f"{path}: expected a single-channel train-id PNG, got mode {im.mode}")
            ids = np.asarray(im)
    except (OSError, SyntaxError, ValueError) as err:
        if isinstance(err, InputError):
            raise
        raise InputError(f"{path}: unreadable label image ({err})") from None
    bad = (ids >= num_classes) & (ids != VOID)
    if bad.any():
        raise InputError(
            f"{path}: value {int(ids[bad][0])} is not a train id (0..{num_classes - 1}) or {VOID}; "
            "is this a *_labelIds.png instead of *_labelTrainIds.png?"
        )
    return ids.astype(np.uint8, copy=False)


def contmav_augment(
    crop_size: tuple[int, int] = (512, 1024), min_scale: float = 0.5, max_scale: float = 2.0, flip: bool = True
) -> AugmentConfig:
    """The geometric part of ContMAV's training augmentation (the colour part is
    :func:`~vocabseg.data.transforms.color_jitter_hsv`, switched by ``hsv_jitter``)."""
    return AugmentConfig(crop_size=tuple(crop_size), min_scale=min_scale, max_scale=max_scale, flip=flip,
                         color_jitter=False)


class SemanticDataset:
    """Images with train-id labels (layout in the module docstring).

    Args:
        image_root: ``leftImg8bit/<split>`` folder.
        label_root: ``gtFine/<split>`` folder with ``*_gtFine_labelTrainIds.png``.
        known_train_ids: the K known classes, see :class:`LabelSpace`.
        augment: geometric augmentation (:func:`contmav_augment`); None = whole images.
        hsv_jitter: the ``RandomHSV`` colour augmentation (only with ``augment``).
        unknown_as: ``"ignore"`` (default) or ``"void"``, training label of the
            unknown classes.
        num_classes: C, the dataset's classes (train ids ``0 .. C-1``; the label set's
            ``num_classes``, Cityscapes' 19 by default).

    ``get(index, seed) -> (image float32 [3, h, w] RGB 0..255, {"labels": int64 [h, w],
    "seed": seed})`` (training labels, deterministic per seed, the
    :class:`~vocabseg.data.panoptic_dataset.PanopticTrainDataset` contract of the
    trainer); ``raw(index) -> (image [3, H, W], train ids int64 [H, W])`` unaugmented.
    """

    def __init__(
        self,
        image_root: Path,
        label_root: Path,
        known_train_ids: Sequence[int],
        *,
        augment: AugmentConfig | None = None,
        hsv_jitter: bool = True,
        unknown_as: str = "ignore",
        num_classes: int = NUM_TRAIN_IDS,
    ):
        if unknown_as not in ("ignore", "void"):
            raise InputError(f"unknown_as: choose 'ignore' or 'void', got {unknown_as!r}")
        self.space = LabelSpace(tuple(known_train_ids), num_classes=num_classes)
        self.pairs = list_semantic_pairs(Path(image_root), Path(label_root))
        self.augment = None if augment is None else TrainAugment(augment)
        self.hsv_jitter = hsv_jitter
        self.unknown_as = unknown_as

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def num_classes(self) -> int:
        """K, the number of known classes."""
        return self.space.num_known

    def name(self, index: int) -> str:
        """``<city>/<stem>`` of sample ``index``."""
        image = self.pairs[index][0]
        return f"{image.parent.name}/{_stem(image)}"

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Unaugmented ``(image float32 [3, H, W] 0..255, train ids int64 [H, W])``."""
        image_path, label_path = self.pairs[index]
        image = read_rgb(image_path)
        ids = read_train_ids(label_path, self.space.num_classes)
        if ids.shape != image.shape[:2]:
            raise InputError(f"{label_path}: size {ids.shape[::-1]} differs from {image_path} ({image.shape[1::-1]})")
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        return image_t, torch.from_numpy(ids.astype(np.int64))

    def get(self, index: int, seed: int) -> tuple[torch.Tensor, dict]:
        """Training sample ``index`` augmented with randomness drawn only from ``seed``."""
        image, ids = self.raw(index)
        labels = self.space.train_labels(ids, self.unknown_as)
        if self.augment is not None:
            generator = torch.Generator().manual_seed(int(seed))
            # shift by one so that the augmentation's zero padding becomes void
            image, shifted = self.augment(image, labels + 1, generator)
            labels = torch.where(shifted == 0, VOID, shifted - 1)
            if self.hsv_jitter:
                image = color_jitter_hsv(image, generator)
        return image.contiguous(), {"labels": labels.contiguous(), "seed": int(seed)}
