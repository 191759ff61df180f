"""Build BDD-Anomaly from a BDD100K semantic-segmentation download.

BDD-Anomaly (Hendrycks et al., *Scaling Out-of-Distribution Detection for Real-World
Settings*, ICML 2022) is the 10K semantic-segmentation subset of BDD100K with some
classes held out as unknown. Split rule, as their ``create_bdd_dataset.py``: every
BDD train or val image whose label contains an unknown class goes to ``test``; every
other image keeps its BDD split. Images without a label (and labels without an image)
are left out, as they are there. Two variants:

* ``"1+16"``: unknown train (16), motorcycle (17), bicycle (18) (BDD-Anomaly);
* ``"1+17"``: unknown train and motorcycle only (BDDAnomaly* of Besnier et al.,
  ObsNet, ICCV 2021); images with bicycles stay in train/val.

Labels keep their Cityscapes train ids unchanged (the unknown classes included, 255
void): which ids are unknown is decided by whoever trains on the data.

Input (``bdd100k``, the folder holding what the zips unpack, or its parent holding
``bdd100k/``), one of two layouts::

    images/10k/{train,val}/<stem>.jpg                 bdd100k_images_10k.zip
    labels/sem_seg/masks/{train,val}/<stem>.png       bdd100k_sem_seg_labels_trainval.zip

    seg/images/{train,val}/<stem>.jpg                 older bdd100k_seg.zip
    seg/labels/{train,val}/<stem>_train_id.png

Output (``out``), the Cityscapes layout of :mod:`vocabseg.data.prepare`, ``bdd`` as city::

    leftImg8bit/{train,val,test}/bdd/<stem>_leftImg8bit.jpg        (hard links or copies)
    gtFine/{train,val,test}/bdd/<stem>_gtFine_labelTrainIds.png    (hard links or copies)
    bdd_anomaly.json                                               (summary; written last)

The output is assembled in ``<out>.tmp`` and renamed into place, so an interrupted
build leaves nothing under ``out``. A re-run whose ``out`` already holds the summary of
the same source and variant returns that summary without reading anything else.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from vocabseg.errors import InputError
from vocabseg.fileio import link_or_copy, read_json, replace_dir, write_json_atomic

__all__ = [
    "VARIANTS",
    "SUMMARY_NAME",
    "CITY",
    "BddSource",
    "find_bdd100k",
    "list_pairs",
    "build_bdd_anomaly",
]

#: variant name -> the train ids held out as unknown.
VARIANTS: dict[str, tuple[int, ...]] = {"1+16": (16, 17, 18), "1+17": (16, 17)}
#: the summary file; its presence marks a complete output folder.
SUMMARY_NAME = "bdd_anomaly.json"
#: the "city" folder of the Cityscapes layout.
CITY = "bdd"
SOURCE_SPLITS = ("train", "val")
OUT_SPLITS = ("train", "val", "test")
NUM_CLASSES = 19
VOID = 255

_EXPECTED = (
    "expected the BDD100K 10K semantic segmentation: images/10k/{train,val}/*.jpg "
    "(bdd100k_images_10k.zip) and labels/sem_seg/masks/{train,val}/*.png "
    "(bdd100k_sem_seg_labels_trainval.zip), or the older seg/images/{train,val}/*.jpg "
    "and seg/labels/{train,val}/*_train_id.png; download them from "
    "https://bdd-data.berkeley.edu/ (free registration)"
)


@dataclass(frozen=True)
class BddSource:
    """Where the images and labels of a BDD100K download are.

    ``layout`` is ``"10k"`` (current release) or ``"seg"`` (older release); the label of
    image ``<image_dir[split]>/<stem>.jpg`` is ``<label_dir[split]>/<stem><label_suffix>``.
    """

    root: Path
    layout: str
    image_dir: dict[str, Path]
    label_dir: dict[str, Path]
    label_suffix: str


def _layouts(root: Path) -> list[BddSource]:
    return [
        BddSource(
            root, "10k",
            {s: root / "images" / "10k" / s for s in SOURCE_SPLITS},
            {s: root / "labels" / "sem_seg" / "masks" / s for s in SOURCE_SPLITS},
            ".png",
        ),
        BddSource(
            root, "seg",
            {s: root / "seg" / "images" / s for s in SOURCE_SPLITS},
            {s: root / "seg" / "labels" / s for s in SOURCE_SPLITS},
            "_train_id.png",
        ),
    ]


def find_bdd100k(root: Path | str) -> BddSource:
    """Detect the layout of the BDD100K download at ``root``.

    ``root`` may also be the folder the zips were unpacked into (holding ``bdd100k/``).
    The current layout wins when both are present. Raises one :class:`InputError`
    naming the missing folder (or ``root``) and describing the expected layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: BDD100K folder not found; {_EXPECTED}")
    if not (root / "images").is_dir() and not (root / "seg").is_dir() and (root / "bdd100k").is_dir():
        root = root / "bdd100k"
    candidates = _layouts(root)
    # the first layout with any of its folders present is the one the user meant
    for source in candidates:
        folders = [*source.image_dir.values(), *source.label_dir.values()]
        if any(f.is_dir() for f in folders):
            for folder in folders:
                if not folder.is_dir():
                    raise InputError(f"{folder}: folder missing ({source.layout} layout); {_EXPECTED}")
            return source
    raise InputError(f"{root}: no BDD100K semantic segmentation found; {_EXPECTED}")


def list_pairs(source: BddSource, split: str) -> tuple[list[tuple[str, Path, Path]], list[Path], list[Path]]:
    """The (stem, image, label) pairs of ``split``, sorted by stem, and the leftovers.

    Returns ``(pairs, images_without_label, labels_without_image)``. Raises
    :class:`InputError` naming the folders if no image has a label.
    """
    images = {p.stem: p for p in source.image_dir[split].iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")}
    suffix = source.label_suffix
    labels = {p.name[: -len(suffix)]: p for p in source.label_dir[split].iterdir() if p.name.endswith(suffix)}
    pairs = [(stem, images[stem], labels[stem]) for stem in sorted(images.keys() & labels.keys())]
    if not pairs:
        raise InputError(
            f"{source.label_dir[split]}: no label matches an image of {source.image_dir[split]} "
            f"(<stem>{suffix} for <stem>.jpg); {_EXPECTED}"
        )
    lone_images = [images[s] for s in sorted(images.keys() - labels.keys())]
    lone_labels = [labels[s] for s in sorted(labels.keys() - images.keys())]
    return pairs, lone_images, lone_labels


def _pixel_counts(pair: tuple[str, Path, Path]) -> np.ndarray:
    """(256,) int64 histogram of the label of ``pair``; checks it and the image size."""
    _, image_path, label_path = pair
    try:
        with Image.open(label_path) as im:
            mode = im.mode
            label = np.asarray(im)
        with Image.open(image_path) as im:
            width, height = im.size
    except (OSError, SyntaxError) as err:
        raise InputError(f"{label_path} or {image_path}: unreadable ({err}); re-download it") from None
    if mode not in ("L", "P"):
        raise InputError(
            f"{label_path}: mode {mode}, expected a one-channel train-id mask (masks, not colormaps)"
        )
    if label.shape != (height, width):
        raise InputError(
            f"{label_path}: size {label.shape[1]}x{label.shape[0]} differs from {image_path} ({width}x{height})"
        )
    counts = np.bincount(label.ravel(), minlength=256)
    bad = [int(v) for v in np.flatnonzero(counts) if NUM_CLASSES <= v < VOID]
    if bad:
        raise InputError(f"{label_path}: values {bad} are no Cityscapes train ids (0-18, 255 void)")
    return counts


def _class_names() -> list[str]:
    from vocabseg.data.labelset import LabelSet

    names = LabelSet.cityscapes().train_id_names()  # BDD100K uses the Cityscapes train ids
    return [names[t] for t in range(NUM_CLASSES)]


def _complete_summary(out: Path, source_root: Path, variant: str) -> dict | None:
    """The summary of ``out`` if it is a finished build of the same source and variant."""
    summary_path = out / SUMMARY_NAME
    if not summary_path.is_file():
        return None
    summary = read_json(summary_path)
    if summary.get("variant") == variant and summary.get("source") == str(source_root):
        return summary
    return None


def build_bdd_anomaly(bdd100k: Path | str, out: Path | str, variant: str = "1+16", threads: int = 1) -> dict:
    """Write BDD-Anomaly ``variant`` from the BDD100K download ``bdd100k`` to ``out``.

    Args:
        bdd100k: the BDD100K download (either layout of the module docstring).
        out: output folder; replaced atomically unless it already holds this build.
        variant: ``"1+16"`` or ``"1+17"`` (:data:`VARIANTS`).
        threads: threads reading the label masks.

    Returns:
        The summary written to ``out/bdd_anomaly.json``: ``variant``, ``unknown_train_ids``,
        ``unknown_classes``, ``source``, ``layout``, ``images`` (count per output split),
        ``moved_to_test`` (per BDD split), ``left_out`` (unpaired files per BDD split),
        ``class_names`` (train-id order) and ``pixels`` (per output split: ``per_train_id``,
        19 counts, and ``void``).
    """
    if variant not in VARIANTS:
        raise InputError(f"variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    unknown = VARIANTS[variant]
    out = Path(out)
    source = find_bdd100k(bdd100k)
    source_root = source.root.resolve()
    done = _complete_summary(out, source_root, variant)
    if done is not None:
        return done

    listed = {split: list_pairs(source, split) for split in SOURCE_SPLITS}
    jobs = [(split, pair) for split in SOURCE_SPLITS for pair in listed[split][0]]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        counts = list(pool.map(lambda job: _pixel_counts(job[1]), jobs))

    assigned: dict[str, dict[str, tuple[Path, Path]]] = {s: {} for s in OUT_SPLITS}
    pixels = {s: np.zeros(256, dtype=np.int64) for s in OUT_SPLITS}
    moved = {s: 0 for s in SOURCE_SPLITS}
    for (split, (stem, image, label)), hist in zip(jobs, counts):
        target = "test" if hist[list(unknown)].any() else split
        moved[split] += int(target == "test")
        if stem in assigned[target]:
            raise InputError(f"{label}: image {stem} also appears as {assigned[target][stem][1]}; remove one")
        assigned[target][stem] = (image, label)
        pixels[target] += hist

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, members in assigned.items():
            image_dir = tmp / "leftImg8bit" / split / CITY
            label_dir = tmp / "gtFine" / split / CITY
            image_dir.mkdir(parents=True)
            label_dir.mkdir(parents=True)
            for stem, (image, label) in members.items():
                link_or_copy(image, image_dir / f"{stem}_leftImg8bit{image.suffix}")
                link_or_copy(label, label_dir / f"{stem}_gtFine_labelTrainIds.png")
        names = _class_names()
        summary = {
            "dataset": "BDD-Anomaly",
            "variant": variant,
            "unknown_train_ids": list(unknown),
            "unknown_classes": [names[t] for t in unknown],
            "source": str(source_root),
            "layout": source.layout,
            "images": {s: len(assigned[s]) for s in OUT_SPLITS},
            "moved_to_test": moved,
            "left_out": {
                s: {
                    "images_without_label": [p.name for p in listed[s][1]],
                    "labels_without_image": [p.name for p in listed[s][2]],
                }
                for s in SOURCE_SPLITS
            },
            "class_names": names,
            "pixels": {
                s: {"per_train_id": pixels[s][:NUM_CLASSES].tolist(), "void": int(pixels[s][VOID])}
                for s in OUT_SPLITS
            },
        }
        write_json_atomic(summary, tmp / SUMMARY_NAME)  # last: marks the build complete
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
