"""Region-text contrastive pretraining of a (tiny) open_clip model.

FC-CLIP relies on one property of its frozen CLIP: a ConvNeXt res5 feature averaged
over an image *region* and sent through the CLIP image head lands next to the text
embedding of that region's class name (the out-of-vocabulary classifier). This module
trains exactly that property into a small open_clip model on a Cityscapes-layout
folder, so that the default study has a stand-in for the official COCO weights.

Per step, for a batch of training images:

1. Resize to ``image_size``, augment (optional zoom-in crop, flip, colour change:
   the colour change roughly doubles the accuracy on the other visual style of the
   synthetic city) and normalise like FC-CLIP
   (OpenAI CLIP mean/std on 0..255 RGB, zero padding to a multiple of 32).
2. Dense CLIP feature as FC-CLIP extracts it: ``trunk.stem`` -> ``trunk.stages`` ->
   res5 -> ``trunk.norm_pre``: ``[B, C, H/32, W/32]``.
3. Ground-truth segments: one per stuff class present and one per thing instance;
   crowd groups and void pixels are ignored. Each segment is downsampled to the res5
   grid (a cell belongs to the segment covering most of its 32x32 pixels, void
   included); segments left without a cell are skipped.
4. Mask pooling (mean of res5 over the segment's cells) -> ``[R, C]`` ->
   ``[R, C, 1, 1]`` -> ``trunk.head`` -> ``visual.head`` -> ``[R, D]``, the path of
   FC-CLIP's out-of-vocabulary classifier.
5. Text: one prompt per class, a random template with a random synonym, through
   ``encode_text`` and L2-normalised -> ``[19, D]``.
6. Loss = mean of (a) cross-entropy of every region over the 19 classes and (b) the
   symmetric text -> region cross-entropy over the classes present in the batch, one
   randomly chosen region per present class. Logits use the model's learnable
   ``logit_scale`` with ``exp`` clamped at 100, as FC-CLIP does.

The global (whole-image) embedding is **not** trained: FC-CLIP never uses it.

Evaluation (:func:`region_accuracy`) classifies the val segments zero-shot with
FC-CLIP's text classifier (14 templates averaged per synonym, max over synonyms).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from vocabseg.data.labelset import LabelSet
from vocabseg.errors import InputError
from vocabseg.models.clip_tiny import TINY_CLIP_NAME, register_tiny_clip
from vocabseg.models.fcclip.text import VILD_TEMPLATES, build_text_classifier

__all__ = [
    "DEFAULT_STEPS",
    "DEFAULT_BATCH_IMAGES",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_LR",
    "pretrain_clip_regions",
    "region_accuracy",
    "dense_clip_features",
    "region_embeddings",
]

# Defaults: whole 256x512 images (the default study's resolution, the size FC-CLIP
# then sees them at), 2 per step, 300 steps: about 2 CPU-minutes.
DEFAULT_STEPS = 300
DEFAULT_BATCH_IMAGES = 2
DEFAULT_IMAGE_SIZE = (256, 512)
DEFAULT_LR = 2e-3

# FC-CLIP's input normalisation: OpenAI CLIP mean / std on 0..255 RGB.
_PIXEL_MEAN = (122.7709383, 116.7460125, 104.09373615)
_PIXEL_STD = (68.5005327, 66.6321579, 70.32316305)
_STRIDE = 32  # output stride of res5
_IGNORE = -1  # segment index of void / crowd pixels

# The synthetic world is labelled as Cityscapes: its 19 evaluated classes, train-id order.
_LABELS = LabelSet.cityscapes()
_CLASS_NAMES: tuple[tuple[str, ...], ...] = tuple(c.synonyms for c in _LABELS.evaluated)
_NUM_CLASSES = len(_CLASS_NAMES)
_ID_TO_TRAIN_ID = _LABELS.train_id_lut()[:256]


# --------------------------------------------------------------------------------------
# Data: images and ground-truth segments of a Cityscapes-layout folder
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sample:
    """One image with its segments, at the file's resolution.

    ``image``: uint8 ``[3, H, W]`` RGB. ``segments``: int16 ``[H, W]``, index into
    ``classes`` or -1 (void, crowd, ignored class). ``classes``: int64 ``[R]`` trainIds.
    """

    image: Tensor
    segments: Tensor
    classes: Tensor


def _split_files(raw_root: Path, split: str) -> list[tuple[Path, Path, Path]]:
    """(image, labelIds, instanceIds) paths of ``split``, sorted; InputError if none."""
    if not raw_root.is_dir():
        raise InputError(f"{raw_root}: raw dataset folder not found")
    folder = raw_root / "gtFine" / split
    labels = sorted(folder.glob("*/*_gtFine_labelIds.png"))
    if not labels:
        raise InputError(f"{folder}: no *_gtFine_labelIds.png files")
    files = []
    for label in labels:
        stem = label.name[: -len("_gtFine_labelIds.png")]
        image = raw_root / "leftImg8bit" / split / label.parent.name / f"{stem}_leftImg8bit.png"
        instance = label.with_name(f"{stem}_gtFine_instanceIds.png")
        for path in (image, instance):
            if not path.is_file():
                raise InputError(f"{path}: missing (annotation {label} has no matching file)")
        files.append((image, label, instance))
    return files


def _read_png(path: Path, mode: str | None = None) -> np.ndarray:
    """Decode a PNG, converted to ``mode`` if given; InputError naming it if unreadable."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert(mode) if mode else im)
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: not a readable PNG ({err})") from None


_IS_THING = np.zeros(256, dtype=bool)
for _c in _LABELS.classes:
    _IS_THING[_c.id] = _c.isthing


def _load_sample(image_path: Path, label_path: Path, instance_path: Path) -> _Sample:
    """Read one image and cut its ground truth into segments.

    Stuff: one segment per evaluated class present. Things: one segment per instance
    (instanceIds >= 1000); thing pixels without an instance id are crowd and ignored.
    """
    image = _read_png(image_path, "RGB")
    label_ids = _read_png(label_path).astype(np.int64)
    instance_ids = _read_png(instance_path).astype(np.int64)
    if label_ids.shape != image.shape[:2] or instance_ids.shape != image.shape[:2]:
        raise InputError(f"{label_path}: size {label_ids.shape} differs from its image {image.shape[:2]}")
    train_ids = _ID_TO_TRAIN_ID[np.clip(label_ids, 0, 255)].astype(np.int64)
    valid = train_ids != 255
    things = _IS_THING[np.clip(label_ids, 0, 255)]
    # A key that is unique per segment: the instance id for thing instances, the
    # label id for stuff; crowd and void pixels get -1.
    key = np.where(things, instance_ids, label_ids)
    key[~valid | (things & (instance_ids < 1000))] = -1
    keys, inverse = np.unique(key, return_inverse=True)
    inverse = inverse.reshape(key.shape)
    segments = np.full(key.shape, _IGNORE, dtype=np.int16)
    classes = []
    for k, value in enumerate(keys):
        if value < 0:
            continue
        segments[inverse == k] = len(classes)
        classes.append(int(_ID_TO_TRAIN_ID[value // 1000 if value >= 1000 else value]))
    return _Sample(
        image=torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        segments=torch.from_numpy(segments),
        classes=torch.tensor(classes, dtype=torch.int64),
    )


def _load_split(raw_root: Path, split: str) -> list[_Sample]:
    return [_load_sample(*paths) for paths in _split_files(raw_root, split)]


# --------------------------------------------------------------------------------------
# Augmentation and batching
# --------------------------------------------------------------------------------------


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def _resize(sample: _Sample, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Image (float ``[3, h, w]``, 0..255) and segment map (``[h, w]``) at ``size``."""
    image = sample.image.float()[None]
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    seg = sample.segments.long()
    if tuple(seg.shape) != size:
        seg = F.interpolate(seg[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return image[0].clamp_(0, 255), seg


def _colour_jitter(image: Tensor, gen: torch.Generator, strength: float) -> Tensor:
    """Random hue rotation, saturation, contrast and brightness of a ``[3, H, W]`` image.

    ``strength`` in [0, 1]: 0 leaves the image unchanged, 1 draws the hue rotation from
    the full circle.
    """
    if strength <= 0:
        return image
    angle = math.pi * strength * _uniform(gen, -1.0, 1.0)
    cos, sin = math.cos(angle), math.sin(angle)
    # Rotation by `angle` about the grey axis (1, 1, 1) / sqrt(3) (Rodrigues).
    third, root = (1.0 - cos) / 3.0, sin / math.sqrt(3.0)
    rot = torch.tensor(
        [
            [cos + third, third - root, third + root],
            [third + root, cos + third, third - root],
            [third - root, third + root, cos + third],
        ]
    )
    saturation = _uniform(gen, 1.0 - 0.5 * strength, 1.0 + 0.5 * strength)
    contrast = _uniform(gen, 1.0 - 0.4 * strength, 1.0 + 0.4 * strength)
    brightness = 40.0 * strength * _uniform(gen, -1.0, 1.0)
    grey = image.mean(0, keepdim=True)
    chroma = torch.einsum("ij,jhw->ihw", rot, image - grey) * saturation
    out = (grey + chroma - 127.5) * contrast + 127.5 + brightness
    return out.clamp_(0, 255)


def _augment(
    sample: _Sample,
    size: tuple[int, int],
    gen: torch.Generator,
    scale_range: tuple[float, float],
    colour: float,
) -> tuple[Tensor, Tensor]:
    """Random rescale (``scale_range`` times ``size``), crop to ``size``, flip, colour."""
    scale = _uniform(gen, *scale_range)
    scaled = (max(size[0], round(size[0] * scale)), max(size[1], round(size[1] * scale)))
    image, seg = _resize(sample, scaled)
    top = int(torch.randint(scaled[0] - size[0] + 1, (), generator=gen))
    left = int(torch.randint(scaled[1] - size[1] + 1, (), generator=gen))
    image = image[:, top : top + size[0], left : left + size[1]]
    seg = seg[top : top + size[0], left : left + size[1]]
    if bool(torch.rand((), generator=gen) < 0.5):
        image, seg = image.flip(-1), seg.flip(-1)
    return _colour_jitter(image, gen, colour), seg


def _normalise_and_pad(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` 0..255 -> normalised, zero-padded to a multiple of 32."""
    mean = torch.tensor(_PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_PIXEL_STD).view(1, 3, 1, 1)
    x = (images - mean) / std
    h, w = x.shape[-2:]
    return F.pad(x, (0, -w % _STRIDE, 0, -h % _STRIDE))


def _grid_masks(seg: Tensor, num_segments: int) -> Tensor:
    """Segment map ``[H, W]`` -> boolean masks ``[R, H/32, W/32]`` on the res5 grid.

    Each 32x32 cell goes to the label covering most of it (void counts as a label, so a
    mostly-void cell belongs to no segment). ``H`` and ``W`` are padded with void to a
    multiple of 32 first.
    """
    h, w = seg.shape
    seg = F.pad(seg, (0, -w % _STRIDE, 0, -h % _STRIDE), value=_IGNORE)
    onehot = F.one_hot(seg + 1, num_segments + 1).permute(2, 0, 1).float()  # [R+1, H, W]
    share = F.avg_pool2d(onehot[None], _STRIDE)[0]
    owner = share.argmax(0) - 1  # [h5, w5], -1 = void
    return owner[None] == torch.arange(num_segments)[:, None, None]


@dataclass
class _Batch:
    """Network input and its regions.

    ``images``: ``[B, 3, Hp, Wp]`` normalised. ``masks``: ``[R, Hp/32, Wp/32]`` bool.
    ``image_index``: ``[R]`` image of each region. ``classes``: ``[R]`` trainIds.
    """

    images: Tensor
    masks: Tensor
    image_index: Tensor
    classes: Tensor


def _make_batch(views: Sequence[tuple[Tensor, Tensor, Tensor]]) -> _Batch:
    """Stack (image, segment map, segment classes) triples; drop vanished segments."""
    masks, index, classes = [], [], []
    for b, (_, seg, seg_classes) in enumerate(views):
        grid = _grid_masks(seg, len(seg_classes))
        keep = grid.flatten(1).any(1)
        masks.append(grid[keep])
        classes.append(seg_classes[keep])
        index.append(torch.full((int(keep.sum()),), b, dtype=torch.int64))
    return _Batch(
        images=_normalise_and_pad(torch.stack([v[0] for v in views])),
        masks=torch.cat(masks),
        image_index=torch.cat(index),
        classes=torch.cat(classes),
    )


# --------------------------------------------------------------------------------------
# The FC-CLIP region path through the CLIP image tower
# --------------------------------------------------------------------------------------


def dense_clip_features(visual: nn.Module, images: Tensor) -> Tensor:
    """FC-CLIP's dense CLIP feature of a timm ConvNeXt tower.

    Args:
        visual: open_clip ``TimmModel`` (``model.visual``) with a ConvNeXt trunk.
        images: ``[B, 3, H, W]`` normalised, H and W multiples of 32.

    Returns:
        ``[B, C, H/32, W/32]``: ``norm_pre(res5)``.
    """
    trunk = visual.trunk
    x = trunk.stem(images)
    for stage in trunk.stages:
        x = stage(x)
    return trunk.norm_pre(x)


def region_embeddings(visual: nn.Module, dense: Tensor, masks: Tensor, image_index: Tensor) -> Tensor:
    """Mask-pool the dense feature per region, then the CLIP image head.

    Args:
        visual: open_clip ``TimmModel``.
        dense: ``[B, C, h, w]`` from :func:`dense_clip_features`.
        masks: ``[R, h, w]`` bool, one per region.
        image_index: ``[R]`` image of each region.

    Returns:
        ``[R, D]`` region embeddings (not normalised).
    """
    weights = masks.flatten(1).float()
    weights = weights / (weights.sum(1, keepdim=True) + 1e-8)
    feats = dense.flatten(2)[image_index]  # [R, C, h*w]
    pooled = torch.einsum("rcn,rn->rc", feats, weights)
    return visual.head(visual.trunk.head(pooled[:, :, None, None]))


# --------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------


def _prompt_tokens(tokenizer: Callable) -> tuple[Tensor, list[list[tuple[int, int]]]]:
    """Tokens of every (template, synonym) prompt ``[P, L]`` and, per class, the rows
    of its prompts as (synonym index within the class, row)."""
    texts, rows = [], []
    for synonyms in _CLASS_NAMES:
        class_rows = []
        for s, name in enumerate(synonyms):
            for template in VILD_TEMPLATES:
                class_rows.append((s, len(texts)))
                texts.append(template.format(name))
        rows.append(class_rows)
    return tokenizer(texts), rows


def _ensemble_classifier(model: nn.Module, tokenizer: Callable) -> tuple[Tensor, Tensor]:
    """FC-CLIP's text classifier of the 19 classes: ``[S, D]`` normalised rows (one per
    class synonym, 14 templates averaged) and the class of every row ``[S]``."""
    emb, num_synonyms = build_text_classifier(model, tokenizer, _CLASS_NAMES)
    owner = torch.repeat_interleave(torch.arange(_NUM_CLASSES), torch.tensor(num_synonyms))
    return emb, owner


def _max_over_synonyms(logits: Tensor, owner: Tensor) -> Tensor:
    """``[R, S]`` synonym logits -> ``[R, K]`` class logits (max per class)."""
    out = logits.new_full((logits.shape[0], _NUM_CLASSES), float("-inf"))
    return out.scatter_reduce(1, owner.expand_as(logits), logits, reduce="amax")


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


@torch.no_grad()
def _classify_regions(
    model: nn.Module,
    tokenizer: Callable,
    samples: Sequence[_Sample],
    image_size: tuple[int, int],
    batch_images: int,
) -> tuple[Tensor, Tensor]:
    """Predicted and true trainIds ``([R], [R])`` of every surviving segment."""
    was_training = model.training
    model.eval()
    classifier, owner = _ensemble_classifier(model, tokenizer)
    preds, truth = [], []
    for start in range(0, len(samples), batch_images):
        chunk = samples[start : start + batch_images]
        batch = _make_batch([(*_resize(s, image_size), s.classes) for s in chunk])
        dense = dense_clip_features(model.visual, batch.images)
        emb = F.normalize(region_embeddings(model.visual, dense, batch.masks, batch.image_index), dim=-1)
        preds.append(_max_over_synonyms(emb @ classifier.T, owner).argmax(1))
        truth.append(batch.classes)
    model.train(was_training)
    return torch.cat(preds), torch.cat(truth)


def _accuracy_summary(pred: Tensor, truth: Tensor) -> dict:
    correct = pred == truth
    per_class = {}
    for c in range(_NUM_CLASSES):
        sel = truth == c
        if sel.any():
            per_class[_CLASS_NAMES[c][0]] = round(float(correct[sel].float().mean()), 4)
    return {
        "accuracy": round(float(correct.float().mean()), 4) if len(truth) else float("nan"),
        "mean_class_accuracy": (
            round(float(np.mean(list(per_class.values()))), 4) if per_class else float("nan")
        ),
        "regions": int(len(truth)),
        "per_class": per_class,
    }


def region_accuracy(
    model: nn.Module,
    raw_root: Path,
    *,
    split: str = "val",
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    model_name: str = TINY_CLIP_NAME,
    batch_images: int = 8,
) -> dict:
    """Zero-shot region classification accuracy of an open_clip ConvNeXt model.

    Every ground-truth segment of ``split`` (stuff class regions and thing instances,
    images resized to ``image_size``, segments vanishing on the res5 grid skipped) is
    mask-pooled and classified against FC-CLIP's prompt-ensemble text classifier of
    the 19 Cityscapes classes (14 templates averaged per synonym, max over synonyms).

    Returns:
        ``{"accuracy", "mean_class_accuracy", "regions", "images", "per_class"}``:
        accuracy over regions, mean over classes present of the per-class accuracy,
        number of regions and images, and accuracy per class (first synonym as key).
    """
    samples = _load_split(Path(raw_root), split)
    if model_name == TINY_CLIP_NAME:
        register_tiny_clip()
    tokenizer = open_clip.get_tokenizer(model_name)
    pred, truth = _classify_regions(model, tokenizer, samples, tuple(image_size), batch_images)
    return {**_accuracy_summary(pred, truth), "images": len(samples)}


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` intra-op threads inside the block (restored after); None: as is."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _region_text_loss(
    region_emb: Tensor,
    region_classes: Tensor,
    text_emb: Tensor,
    logit_scale: Tensor,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Symmetric region-text cross-entropy.

    Args:
        region_emb: ``[R, D]`` region embeddings. region_classes: ``[R]`` trainIds.
        text_emb: ``[K, D]`` one text embedding per class. logit_scale: scalar (log).
        gen: picks the region that stands for each present class in the text term.

    Returns:
        (loss, region logits ``[R, K]``).
    """
    z = F.normalize(region_emb, dim=-1)
    t = F.normalize(text_emb, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * z @ t.T
    loss_region = F.cross_entropy(logits, region_classes)
    present = torch.unique(region_classes)  # sorted
    order = torch.randperm(len(region_classes), generator=gen)
    # The first region (in a random order) of every present class.
    shuffled = region_classes[order]
    first = torch.full((_NUM_CLASSES,), len(order), dtype=torch.int64)
    first = first.scatter_reduce(0, shuffled, torch.arange(len(order)), reduce="amin")
    chosen = order[first[present]]
    text_logits = scale * t[present] @ z[chosen].T
    loss_text = F.cross_entropy(text_logits, torch.arange(len(present)))
    return 0.5 * (loss_region + loss_text), logits


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices and conv kernels only (not norms, biases, embeddings,
    layer scales or the logit scale)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name in ("token_embedding.weight", "positional_embedding")
        (decay if p.ndim >= 2 and not is_embedding else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _adamw(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """AdamW, fused when this torch build supports it (same maths, less overhead)."""
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def _lr_factor(step: int, steps: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def pretrain_clip_regions(
    raw_root: Path | Sequence[Path],
    out: Path,
    *,
    steps: int = DEFAULT_STEPS,
    batch_images: int = DEFAULT_BATCH_IMAGES,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    lr: float = DEFAULT_LR,
    weight_decay: float = 0.05,
    warmup_steps: int | None = None,
    schedule: str = "cosine",
    scale_range: tuple[float, float] = (1.0, 1.0),
    colour_jitter: float = 0.5,
    model_name: str = TINY_CLIP_NAME,
    seed: int = 0,
    threads: int | None = None,
    log: Callable[[str], None] | None = print,
    log_every: int = 50,
) -> dict:
    """Pretrain an open_clip ConvNeXt model so that image regions match class names.

    Trains every parameter of ``model_name`` (random init) on the ``train`` split of
    the Cityscapes-layout folder ``raw_root`` with the region-text contrastive loss
    described in the module docstring. Only the region path (res5 mask pooling ->
    ``trunk.head`` -> ``visual.head``) and the text tower are trained; the global image
    embedding is not, because FC-CLIP never uses it.

    Args:
        raw_root: folder with ``leftImg8bit/train`` and ``gtFine/train`` (labelIds and
            instanceIds PNGs); ``val`` is used for the final metrics when present. A
            sequence of such folders trains (and validates) on all of them together.
        out: weights file to write (a plain state dict, written atomically) that
            ``open_clip.create_model(model_name, pretrained=str(out))`` loads. Metrics
            go to ``out.with_suffix(".json")``.
        steps: optimiser steps.
        batch_images: images per step (sampled without replacement, epoch by epoch).
        image_size: (height, width) the images are resized to, for training and for
            the val metrics. Use the size FC-CLIP will later see whole images at: the
            region classifier does not carry over well between fields of view (a
            model trained on 128x256 images is far worse on 256x512 ones and the
            reverse), so the default is the default study's 256x512.
        lr: peak AdamW learning rate. weight_decay: AdamW decay of weight matrices.
        warmup_steps: linear warm-up length; default ``min(25, steps // 10)``.
        schedule: ``"cosine"`` (decay to 0 after warm-up) or ``"constant"``.
        scale_range: each training image is resized to ``image_size`` times a factor
            drawn from this range and randomly cropped back to ``image_size`` (zooming
            in keeps small objects alive on the res5 grid); (1, 1) = no zoom.
        colour_jitter: strength in [0, 1] of the random hue / saturation / contrast /
            brightness change (0 = none).
        model_name: a registered open_clip config with a timm ConvNeXt vision tower.
        seed: seeds the initial weights and every random choice (the global torch
            RNG is left untouched); the same seed, data and thread count give
            identical weights.
        threads: torch intra-op threads during the call (restored afterwards); None
            leaves the current setting alone.
        log: progress callback (None: silent). log_every: steps between progress lines.

    Returns:
        The metrics also written to the JSON file: ``train_loss`` (mean of the last
        10% of steps), ``train_region_accuracy`` (same window, against the training
        text embeddings), ``val_region_accuracy`` / ``val_region_mean_class_accuracy``
        / ``val_regions`` (zero-shot, prompt ensemble, val split resized to
        ``image_size``; None without a val split), ``seconds`` / ``cpu_seconds``
        (wall and process CPU time of the whole call) and the settings.

    Raises:
        InputError: ``raw_root`` or its train split is missing or unreadable.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f"schedule must be 'cosine' or 'constant'; got {schedule!r}")
    roots = [Path(raw_root)] if isinstance(raw_root, (str, os.PathLike)) else [Path(r) for r in raw_root]
    out = Path(out)
    image_size = (int(image_size[0]), int(image_size[1]))
    say = log or (lambda _msg: None)
    started, cpu_started = time.perf_counter(), time.process_time()
    train = [sample for root in roots for sample in _load_split(root, "train")]
    val = [sample for root in roots if (root / "gtFine" / "val").is_dir() for sample in _load_split(root, "val")]
    if model_name == TINY_CLIP_NAME:
        register_tiny_clip()
    warmup = min(25, steps // 10) if warmup_steps is None else int(warmup_steps)

    with _torch_threads(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(model_name)
        model.train()
        tokenizer = open_clip.get_tokenizer(model_name)
        tokens, rows = _prompt_tokens(tokenizer)
        gen = torch.Generator().manual_seed(seed)
        optimiser = _adamw(_param_groups(model, weight_decay), lr)
        say(
            f"pretrain {model_name}: {len(train)} train / {len(val)} val images, {steps} steps, "
            f"batch {batch_images}, size {image_size[0]}x{image_size[1]}"
        )

        order: list[int] = []
        window = max(1, steps // 10)
        losses, hits, counts = [], [], []
        for step in range(steps):
            for group in optimiser.param_groups:
                group["lr"] = lr * _lr_factor(step, steps, warmup, schedule)
            picked = []
            while len(picked) < batch_images:
                if not order:
                    order = torch.randperm(len(train), generator=gen).tolist()
                picked.append(order.pop())
            views = [
                (*_augment(train[i], image_size, gen, scale_range, colour_jitter), train[i].classes)
                for i in picked
            ]
            batch = _make_batch(views)
            # One random template and one random synonym per class.
            prompt_rows = [
                class_rows[int(torch.randint(len(class_rows), (), generator=gen))][1] for class_rows in rows
            ]
            text_emb = model.encode_text(tokens[prompt_rows])
            dense = dense_clip_features(model.visual, batch.images)
            region_emb = region_embeddings(model.visual, dense, batch.masks, batch.image_index)
            loss, logits = _region_text_loss(region_emb, batch.classes, text_emb, model.logit_scale, gen)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()

            losses.append(float(loss.detach()))
            hits.append(int((logits.argmax(1) == batch.classes).sum()))
            counts.append(len(batch.classes))
            if log and (step + 1) % log_every == 0 or step + 1 == steps:
                recent = slice(max(0, step + 1 - log_every), step + 1)
                say(
                    f"step {step + 1}/{steps}: loss {np.mean(losses[recent]):.3f}, "
                    f"region acc {sum(hits[recent]) / max(1, sum(counts[recent])):.3f}, "
                    f"scale {float(model.logit_scale.detach().exp()):.1f}, "
                    f"{time.perf_counter() - started:.0f} s"
                )
        train_seconds = time.perf_counter() - started

        metrics: dict = {
            "model_name": model_name,
            "steps": steps,
            "batch_images": batch_images,
            "image_size": list(image_size),
            "lr": lr,
            "schedule": schedule,
            "scale_range": list(scale_range),
            "colour_jitter": colour_jitter,
            "seed": seed,
            "train_images": len(train),
            "train_loss_first": round(float(np.mean(losses[:window])), 4),
            "train_loss": round(float(np.mean(losses[-window:])), 4),
            "train_region_accuracy": round(sum(hits[-window:]) / max(1, sum(counts[-window:])), 4),
            "train_seconds": round(train_seconds, 1),
            "val_images": len(val),
            "val_region_accuracy": None,
            "val_region_mean_class_accuracy": None,
            "val_regions": 0,
        }
        if val:
            pred, truth = _classify_regions(model, tokenizer, val, image_size, batch_images)
            summary = _accuracy_summary(pred, truth)
            metrics.update(
                val_region_accuracy=summary["accuracy"],
                val_region_mean_class_accuracy=summary["mean_class_accuracy"],
                val_regions=summary["regions"],
            )
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        metrics["cpu_seconds"] = round(time.process_time() - cpu_started, 1)

    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(out, lambda tmp: torch.save(state, tmp))
    text = json.dumps(metrics, indent=2) + "\n"
    _atomic_write(out.with_suffix(".json"), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    say(
        f"wrote {out}: train loss {metrics['train_loss']}, val region acc "
        f"{metrics['val_region_accuracy']} ({metrics['seconds']} s)"
    )
    return metrics
