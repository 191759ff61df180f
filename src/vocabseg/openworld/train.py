"""ContMAV training on the shared trainer: the task, its variants, class weights, export.

One task, :class:`ContMAVTask`, trains every variant of seed 003; a
:class:`ContMAVVariant` chooses the options (no copies of the task):

* ``semantic``: ``"ce"`` (median-frequency weighted CE, the paper), ``"focal"`` or
  ``"focal_dice"`` (the focal term takes the class weights as alpha);
* ``extra``: ``"none"``, ``"infonce"`` (InfoNCE between known-class and unknown region
  embeddings) or ``"synco"`` (the same with SynCo synthetic hard negatives);
* the TruFor-style head is a *model* option (``{"trufor": true}`` in the model JSON).

Losses per iteration (:class:`~vocabseg.openworld.losses.ContMAVCriterion`, weights
0.9 / 0.1 / 0.5 / 0.5): L_sem on the semantic logits, L_feat and L_cont against the
MAVs of the previous epoch, L_obj on the contrastive features. The MAVs are
accumulated over the true-positive pixels of every training batch
(:class:`~vocabseg.openworld.losses.MAVAccumulator`) and finalised by the trainer's
``end_epoch`` hook (summed over DDP processes), so in epoch 0 L_feat and L_cont are
inactive (reported as 0) as in the paper. ``mav_start_epoch`` delays them further:
an "epoch" of the synthetic city is 3 iterations, and MAVs of a network that has
barely trained are all alike, so L_feat (divided by tiny standard deviations) pins
every class to the same logits and CE stalls at ln K; there ``mav_start_epoch`` 10
and ``variance_eps`` 1 (a floor of 1 on sigma^2 in L_feat) train stably (measured,
see the issue note). The accumulator travels in the trainer's
checkpoints (``state_dict`` / ``load_state_dict``): a resumed run continues with the
same MAVs and partial sums.

Extra InfoNCE term (``w_extra`` times): the training crop is cut into a
``extra_grid`` of regions; in each region every known class with at least
``extra_min_pixels`` pixels gives a *known* embedding (mean of the per-pixel
L2-normalised features of its pixels, labelled with the class) and the void pixels
(the training-time unknowns, label 255) give an *unknown* embedding;
:func:`~vocabseg.openworld.losses.known_unknown_infonce` (tau ``extra_tau``) pulls
same-class known regions together, unknown regions together, and pushes the two
groups apart. The features are the ``extra_features`` output (``"semantic"`` logits,
the space of the MAVs and the Gaussian score, or ``"contrastive"``). These region
means stand in for the seed's offline per-class bounding-box crops (one forward
pass, no extra images). ``"synco"`` appends synthetic hard negatives
(:class:`~vocabseg.openworld.losses.SynCoConfig`, direction ``known_to_unknown`` by
default) from epoch ``synco_warmup_epochs`` on, drawn from a generator seeded once
per iteration by rank 0.

Under DDP the term does not depend on the number of processes: the region embeddings
of every process are gathered (:func:`~vocabseg.engine.distributed.all_gather_rows`,
differentiable, in the one-process order), every process computes the same InfoNCE
over the global batch (same SynCo draws) and DDP's averaged gradient is that of one
process holding the whole batch.

Files:

* class weights (:func:`write_class_weights`): JSON ``{"method": "median_frequency",
  "known_train_ids": [...], "weights": [K], "pixel_counts": [K], "image_pixels": [K],
  "n_images": N, "image_root": ..., "label_root": ...}``, computed once from the
  un-augmented training labels (known classes only);
* the exported model (:func:`save_contmav_export`, read by :func:`load_contmav_export`):
  one ``torch.save`` dict of plain values, ``weights_only``-loadable::

      {"format": "vocabseg.contmav", "version": 1,
       "model": state_dict, "config": ContMAVConfig dict ("pretrained" None),
       "known_train_ids": [K ints], "mav_stats": {"mavs" [K, K], "variances" [K, K],
       "counts" [K] int64}, "class_weights": [K], "variant": dict, "epochs": int}

  ``counts`` are the true-positive pixels of the epoch that last updated each class
  (0 = never correctly predicted: left out of the unknown score).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vocabseg.openworld.inference import MavStats
from vocabseg.openworld.dataset import NUM_TRAIN_IDS, VOID, SemanticDataset, contmav_augment
from vocabseg.engine.distributed import all_gather_rows, broadcast_int
from vocabseg.engine.trainer import TrainConfig, seeded_construction, stable_int, train
from vocabseg.errors import InputError
from vocabseg.fileio import (
    file_digest,
    folder_digest,
    read_json,
    torch_load_checked,
    torch_save_atomic,
    write_json_atomic,
)
from vocabseg.openworld.losses import (
    ContMAVCriterion,
    ContMAVLossConfig,
    MAVAccumulator,
    SynCoConfig,
    known_unknown_infonce,
    label_histogram,
    median_frequency_weights,
)
from vocabseg.openworld.model import ContMAV, ContMAVConfig, normalize_image, preset_config
from vocabseg.openworld.model.config import choice, convert_fields, to_float, to_int, to_int_tuple

__all__ = [
    "EXPORT_FORMAT",
    "CONTMAV_RECIPE",
    "ContMAVVariant",
    "ContMAVTask",
    "region_embeddings",
    "class_weight_stats",
    "write_class_weights",
    "read_class_weights",
    "build_contmav_model",
    "save_contmav_export",
    "load_contmav_export",
    "ContMAVExport",
    "train_contmav",
    "known_from_unknown",
    "model_keys",
    "variant_keys",
    "recipe_keys",
]

EXPORT_FORMAT = "vocabseg.contmav"
_EXPORT_VERSION = 1

#: The paper's training recipe (facts §6) in trainer terms; ``epochs`` becomes
#: ``iters = epochs * ceil(len(dataset) / batch_size)``. The public code applies
#: Adam's weight decay to every parameter, normalisation layers included.
CONTMAV_RECIPE: dict[str, Any] = {
    "epochs": 500,
    "batch_size": 8,
    "optimizer": "adam",
    "lr": 0.004,
    "weight_decay": 1e-4,
    "weight_decay_norm": 1e-4,
    "weight_decay_embed": 1e-4,
    "schedule": "onecycle",
    "clip_grad": 0.0,
    "checkpoint_every": 500,
    "log_every": 20,
    "augment": {"crop_size": [512, 1024], "min_scale": 0.5, "max_scale": 2.0, "flip": True, "hsv_jitter": True},
    "unknown_as": "ignore",
}


# ---------------------------------------------------------------------- variant
@dataclass(frozen=True)
class ContMAVVariant:
    """Loss options of one ContMAV variant (see the module docstring).

    ``loss``: the criterion's settings; ``extra``: ``"none"`` | ``"infonce"`` |
    ``"synco"``; ``w_extra`` (0.1), ``extra_tau`` (0.1), ``extra_grid`` (rows, cols)
    of regions (2, 4), ``extra_min_pixels`` (16), ``extra_features`` (``"semantic"`` |
    ``"contrastive"``), ``extra_anchors`` (``"both"`` | ``"known"`` | ``"unknown"``),
    ``synco`` (:class:`SynCoConfig`), ``synco_warmup_epochs`` (0);
    ``mav_start_epoch`` (1, the paper): the first epoch in which L_feat and L_cont
    are active (they use the MAVs finalised at the end of the previous epoch).
    """

    loss: ContMAVLossConfig = field(default_factory=ContMAVLossConfig)
    extra: str = "none"
    w_extra: float = 0.1
    extra_tau: float = 0.1
    extra_grid: tuple[int, int] = (2, 4)
    extra_min_pixels: int = 16
    extra_features: str = "semantic"
    extra_anchors: str = "both"
    synco: SynCoConfig = field(default_factory=SynCoConfig)
    synco_warmup_epochs: int = 0
    mav_start_epoch: int = 1

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "ContMAV variant") -> ContMAVVariant:
        """One flat mapping: the keys of :class:`ContMAVLossConfig` (e.g. ``semantic``,
        ``w_feature``), the extra-term keys above, and ``synco`` as a mapping of
        :class:`SynCoConfig` keys. Unknown keys raise :class:`InputError` listing
        :func:`variant_keys`."""
        if not isinstance(values, Mapping):
            raise InputError(f"{source}: expected a mapping, got {type(values).__name__}")
        if "loss" in values:
            raise InputError(f"{source}: give the loss keys (e.g. 'semantic') directly, not under 'loss'")
        _reject_unknown(values, variant_keys(), source)
        loss_keys = {f.name for f in dataclasses.fields(ContMAVLossConfig)}
        own = {k: v for k, v in values.items() if k not in loss_keys}
        loss = ContMAVLossConfig.from_dict({k: v for k, v in values.items() if k in loss_keys}, source=source)
        synco = SynCoConfig.from_dict(own.pop("synco", {}) or {}, source=f"{source}: synco")
        variant = convert_fields(cls, _VARIANT_CONVERTERS, own, source)
        return dataclasses.replace(variant, loss=loss, synco=synco)

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping :meth:`from_dict` reads (JSON-compatible)."""
        out = dataclasses.asdict(self.loss)
        for f in dataclasses.fields(self):
            if f.name not in ("loss", "synco"):
                value = getattr(self, f.name)
                out[f.name] = list(value) if isinstance(value, tuple) else value
        out["synco"] = dataclasses.asdict(self.synco)
        return out


_VARIANT_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "loss": lambda v, k: v,
    "synco": lambda v, k: v,
    "extra": choice("none", "infonce", "synco"),
    "w_extra": lambda v, k: to_float(v, k, 0.0),
    "extra_tau": lambda v, k: to_float(v, k, 1e-6),
    "extra_grid": lambda v, k: to_int_tuple(v, k, 2),
    "extra_min_pixels": lambda v, k: to_int(v, k, 1),
    "extra_features": choice("semantic", "contrastive"),
    "extra_anchors": choice("both", "known", "unknown"),
    "synco_warmup_epochs": lambda v, k: to_int(v, k, 0),
    "mav_start_epoch": lambda v, k: to_int(v, k, 1),
}


def _reject_unknown(values: Mapping[str, Any], known: Sequence[str], source: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise InputError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")


def variant_keys() -> list[str]:
    """Every key of a variant's flat loss mapping (:meth:`ContMAVVariant.from_dict`):
    the :class:`ContMAVLossConfig` fields and the variant's own fields (``synco``
    included, whose value is a mapping of :class:`SynCoConfig` fields)."""
    own = [f.name for f in dataclasses.fields(ContMAVVariant) if f.name != "loss"]
    return sorted({f.name for f in dataclasses.fields(ContMAVLossConfig)} | set(own))


def model_keys() -> list[str]:
    """Every key of a ContMAV model mapping (:func:`build_contmav_model`): ``preset``
    and the :class:`ContMAVConfig` fields."""
    return sorted({"preset"} | {f.name for f in dataclasses.fields(ContMAVConfig)})


def recipe_keys() -> list[str]:
    """Every key of a ContMAV recipe (:func:`train_contmav`): the :data:`CONTMAV_RECIPE`
    keys (``epochs``, ``augment``, ``unknown_as``, ...), ``iters`` and every
    :class:`~vocabseg.engine.trainer.TrainConfig` field."""
    return sorted(set(CONTMAV_RECIPE) | {f.name for f in dataclasses.fields(TrainConfig)})


def region_embeddings(
    features: Tensor, labels: Tensor, num_known: int, grid: Sequence[int], min_pixels: int, unknown_label: int = VOID
) -> tuple[Tensor, Tensor, Tensor]:
    """Known-class and unknown region embeddings of a batch.

    Each image is cut into ``grid = (rows, cols)`` regions (the last row/column takes
    the remainder). In each region, every known class ``0 <= y < K`` and the
    ``unknown_label`` pixels with at least ``min_pixels`` pixels give one embedding:
    the mean of the per-pixel L2-normalised features of those pixels.

    Args:
        features: [B, D, H, W]; labels: [B, H, W].

    Returns:
        ``known`` [N_k, D], ``known_labels`` [N_k] int64, ``unknown`` [N_u, D]
        (differentiable; rows ordered by image, region, class).
    """
    b, d, h, w = features.shape
    rows, cols = int(grid[0]), int(grid[1])
    ry = torch.clamp(torch.arange(h, device=labels.device) * rows // h, max=rows - 1)
    rx = torch.clamp(torch.arange(w, device=labels.device) * cols // w, max=cols - 1)
    region = (ry[:, None] * cols + rx[None, :]).expand(b, h, w)
    image = torch.arange(b, device=labels.device)[:, None, None].expand(b, h, w)
    group = torch.where((labels >= 0) & (labels < num_known), labels, torch.full_like(labels, num_known))
    keep = ((labels >= 0) & (labels < num_known)) | (labels == unknown_label)
    slots = ((image * rows * cols + region) * (num_known + 1) + group)[keep]
    f = F.normalize(features.permute(0, 2, 3, 1)[keep], dim=1)
    total = b * rows * cols * (num_known + 1)
    sums = torch.zeros(total, d, dtype=f.dtype, device=f.device).index_add(0, slots, f)
    counts = torch.bincount(slots, minlength=total)
    chosen = torch.nonzero(counts >= min_pixels).squeeze(1)
    means = sums[chosen] / counts[chosen][:, None].to(f.dtype)
    cls = chosen % (num_known + 1)
    is_known = cls < num_known
    return means[is_known], cls[is_known], means[~is_known]


# ---------------------------------------------------------------------- task
class ContMAVTask:
    """Trainer task (see :class:`vocabseg.engine.trainer.TrainTask`) of one ContMAV variant.

    Args:
        model: the network (K known classes).
        class_weights: [K] CE weights / focal alpha (None = ones).
        variant: the loss options.
        known_train_ids: written into the export.

    ``losses`` returns the weighted terms ``loss_ce`` | ``loss_focal`` (+ ``loss_dice``),
    ``loss_feat``, ``loss_cont``, ``loss_obj`` (as switched on) and ``loss_extra`` (with
    an extra term); every term is present from the first iteration on (0 while inactive).
    """

    def __init__(
        self,
        model: ContMAV,
        class_weights: Tensor | None,
        variant: ContMAVVariant,
        known_train_ids: Sequence[int],
    ):
        self.model = model
        self.num_classes = int(model.cfg.num_classes)
        if len(known_train_ids) != self.num_classes:
            raise InputError(f"{len(known_train_ids)} known train ids but the model has {self.num_classes} classes")
        self.known_train_ids = [int(t) for t in known_train_ids]
        self.variant = variant
        self.criterion = ContMAVCriterion(self.num_classes, variant.loss, class_weights)
        self.accumulator = MAVAccumulator(self.num_classes)
        self.tp_counts = torch.zeros(self.num_classes, dtype=torch.float64)
        self.fingerprint = _fingerprint(model.cfg, variant, self.known_train_ids, self.criterion.class_weights)

    # -- loss --------------------------------------------------------------------------
    @property
    def mavs(self):
        """The MAVs the losses use now (the last finalised epoch), or None before
        epoch ``variant.mav_start_epoch`` (epoch 0 by default)."""
        if int(self.accumulator.epochs) < self.variant.mav_start_epoch:
            return None
        current = self.accumulator.current
        return current if bool(current.valid.any()) else None

    def losses(self, model: nn.Module, images: Tensor, targets: list[dict]) -> dict[str, Tensor]:
        labels = torch.stack([t["labels"] for t in targets])
        if self.accumulator.count.device != images.device:
            self.accumulator.to(images.device)
        self.criterion.to(images.device)
        v = self.variant
        # SynCo's draws: one seed per iteration, rank 0's (its RNG is seeded as a single
        # process's), taken before the forward pass can consume random numbers
        synco_seed = broadcast_int(int(torch.randint(0, 2**62, (1,)))) if v.extra == "synco" else None
        outputs = model(normalize_image(images / 255.0))
        self.accumulator.update(outputs["semantic"].detach().float(), labels)
        raw = self.criterion(outputs, labels, self.mavs)
        weights = self.criterion.weight_dict
        zero = outputs["semantic"].sum() * 0.0
        terms = {k: raw.get(k, zero) * w for k, w in weights.items()}
        if v.extra != "none":
            known, known_labels, unknown = region_embeddings(
                outputs[v.extra_features].float(), labels, self.num_classes, v.extra_grid, v.extra_min_pixels,
                v.loss.unknown_index,
            )
            # the global batch's regions on every process (see the module docstring)
            known, known_labels, unknown = (all_gather_rows(t) for t in (known, known_labels, unknown))
            synco = v.synco if v.extra == "synco" and int(self.accumulator.epochs) >= v.synco_warmup_epochs else None
            generator = None if synco_seed is None else torch.Generator().manual_seed(synco_seed)
            loss = known_unknown_infonce(
                known, unknown, known_labels, v.extra_tau, v.extra_anchors, synco, generator=generator
            )
            terms["loss_extra"] = v.w_extra * (loss + zero)
        return terms

    # -- trainer hooks -------------------------------------------------------------------
    def end_epoch(self, iteration: int) -> None:
        """Sum the epoch's true-positive statistics over processes and finalise the MAVs."""
        acc = self.accumulator
        acc.all_reduce_()
        seen = acc.count > 0
        self.tp_counts = self.tp_counts.to(acc.count.device)
        self.tp_counts[seen] = acc.count[seen]
        acc.finalize()

    def state_dict(self) -> dict[str, Tensor]:
        """Accumulator state (running sums summed over processes) and ``tp_counts``.

        Called on every process (the sums are all-reduced copies)."""
        state = self.accumulator.state_dict()
        if dist.is_available() and dist.is_initialized():
            for key in ("count", "sum", "sumsq"):
                dist.all_reduce(state[key])
        state = {f"mav.{k}": v.cpu() for k, v in state.items()}
        state["tp_counts"] = self.tp_counts.detach().cpu().clone()
        state["fingerprint"] = torch.tensor(self.fingerprint, dtype=torch.int64)
        return state

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Restore :meth:`state_dict`; processes other than rank 0 start with empty
        running sums (the saved sums already hold every process's share).
        :class:`InputError` if the state was written for another model configuration,
        variant, known classes or class weights."""
        saved = state.get("fingerprint")
        if saved is None or int(saved) != self.fingerprint:
            raise InputError("ContMAV task state of another model configuration, variant, known classes or class weights")
        mav = {k.removeprefix("mav."): v for k, v in state.items() if k.startswith("mav.")}
        self.accumulator.load_state_dict(mav, source="ContMAV task state")
        if "tp_counts" not in state or tuple(state["tp_counts"].shape) != (self.num_classes,):
            raise InputError("ContMAV task state: missing or misshaped 'tp_counts'")
        self.tp_counts = state["tp_counts"].to(torch.float64).clone()
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            for key in ("count", "sum", "sumsq"):
                getattr(self.accumulator, key).zero_()

    # -- output ---------------------------------------------------------------------------
    def mav_stats(self) -> MavStats:
        """The MAVs of the last finalised epoch with their true-positive counts."""
        acc = self.accumulator
        counts = torch.where(acc.valid.cpu(), self.tp_counts.cpu().round().to(torch.int64), 0)
        return MavStats.from_tensors(acc.means, acc.variances, counts)

    def export(self, model: nn.Module, path: Path) -> None:
        save_contmav_export(
            path,
            model,
            known_train_ids=self.known_train_ids,
            stats=self.mav_stats(),
            class_weights=self.criterion.class_weights,
            variant=self.variant.to_dict(),
            epochs=int(self.accumulator.epochs),
        )


def _fingerprint(cfg: ContMAVConfig, variant: ContMAVVariant, known: Sequence[int], weights: Tensor) -> int:
    """A 63-bit hash of what makes two ContMAV runs different besides the trainer settings."""
    text = json.dumps(
        [dataclasses.replace(cfg, pretrained=None).to_dict(), variant.to_dict(), list(known), weights.tolist()],
        sort_keys=True,
    )
    return stable_int(text)


# ---------------------------------------------------------------------- class weights
def class_weight_stats(dataset: SemanticDataset) -> dict[str, Any]:
    """Median-frequency class weights of the un-augmented training labels.

    Known classes only (void and unknown classes are not counted), frequencies as
    :func:`~vocabseg.openworld.losses.median_frequency_weights`. Returns the JSON dict
    written by :func:`write_class_weights` (without the paths).
    """
    space = dataset.space

    def labels():
        for index in range(len(dataset)):
            yield space.train_labels(dataset.raw(index)[1])

    counts, image_pixels = label_histogram(labels(), space.num_known)
    weights = median_frequency_weights(counts, image_pixels)
    return {
        "method": "median_frequency",
        "known_train_ids": list(space.known),
        "weights": weights.tolist(),
        "pixel_counts": counts.tolist(),
        "image_pixels": image_pixels.tolist(),
        "n_images": len(dataset),
    }


def write_class_weights(
    image_root: Path, label_root: Path, known_train_ids: Sequence[int], out: Path, num_classes: int = NUM_TRAIN_IDS
) -> dict[str, Any]:
    """Compute :func:`class_weight_stats` of a training split (train ids ``0 ..
    num_classes-1``) and write them as JSON."""
    dataset = SemanticDataset(image_root, label_root, known_train_ids, num_classes=num_classes)
    stats = class_weight_stats(dataset)
    stats.update(image_root=str(image_root), label_root=str(label_root))
    write_json_atomic(stats, out)
    return stats


def read_class_weights(path: Path, known_train_ids: Sequence[int]) -> Tensor:
    """[K] float32 weights of a :func:`write_class_weights` file; :class:`InputError`
    naming the file if it is malformed or was computed for other known classes."""
    data = read_json(path)
    try:
        known, weights = [int(t) for t in data["known_train_ids"]], [float(w) for w in data["weights"]]
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: expected 'known_train_ids' and 'weights' lists") from None
    if known != [int(t) for t in known_train_ids]:
        raise InputError(f"{path}: class weights of known train ids {known}, training uses {list(known_train_ids)}")
    if len(weights) != len(known) or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise InputError(f"{path}: 'weights' must be {len(known)} finite values >= 0")
    return torch.tensor(weights, dtype=torch.float32)


# ---------------------------------------------------------------------- model files
def build_contmav_model(
    model: Mapping[str, Any], num_classes: int, crop_size: Sequence[int] | None = None
) -> ContMAV:
    """ContMAV from a model mapping ``{"preset": "tiny" | "paper", <ContMAVConfig keys>}``.

    ``num_classes`` is set from the known classes; ``context_input_size`` defaults to
    the 1/32 size of ``crop_size`` (the training resolution), so that testing at a
    larger size scales the pooling grids (see the pyramid pooling module).
    """
    if not isinstance(model, Mapping):
        raise InputError(f"ContMAV model: expected a mapping, got {type(model).__name__}")
    _reject_unknown(model, model_keys(), "ContMAV model")
    values = dict(model)
    preset = values.pop("preset", "paper")
    if "num_classes" in values and int(values["num_classes"]) != num_classes:
        raise InputError(f"ContMAV model: num_classes {values['num_classes']} but {num_classes} known classes")
    values["num_classes"] = num_classes
    if "context_input_size" not in values and crop_size is not None:
        values["context_input_size"] = [math.ceil(int(crop_size[0]) / 32), math.ceil(int(crop_size[1]) / 32)]
    return ContMAV(preset_config(str(preset), **values))


@dataclass(frozen=True)
class ContMAVExport:
    """A loaded export: ``model`` (eval mode, CPU), ``stats``, ``known_train_ids``,
    ``config`` and the rest of the file in ``info`` (variant, epochs, class_weights)."""

    model: ContMAV
    stats: MavStats
    known_train_ids: tuple[int, ...]
    config: ContMAVConfig
    info: dict


def save_contmav_export(
    path: Path,
    model: nn.Module,
    *,
    known_train_ids: Sequence[int],
    stats: MavStats,
    class_weights: Tensor | None = None,
    variant: Mapping[str, Any] | None = None,
    epochs: int = 0,
) -> None:
    """Write the export file (format in the module docstring), atomically."""
    cfg = dataclasses.replace(model.cfg, pretrained=None)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    data = {
        "format": EXPORT_FORMAT,
        "version": _EXPORT_VERSION,
        "model": state,
        "config": cfg.to_dict(),
        "known_train_ids": [int(t) for t in known_train_ids],
        "mav_stats": stats.as_dict(),
        "class_weights": None if class_weights is None else class_weights.detach().cpu().float().clone(),
        "variant": json.loads(json.dumps(dict(variant or {}))),
        "epochs": int(epochs),
    }
    torch_save_atomic(data, path)


def load_contmav_export(path: Path) -> ContMAVExport:
    """Read :func:`save_contmav_export` output (``weights_only``); :class:`InputError`
    naming the file if it is missing, not a ContMAV export, or does not fit its config."""
    data = torch_load_checked(path, "ContMAV model")
    if not isinstance(data, dict) or data.get("format") != EXPORT_FORMAT:
        raise InputError(f"{path}: not a ContMAV model export (format {EXPORT_FORMAT!r})")
    missing = [k for k in ("model", "config", "known_train_ids", "mav_stats") if k not in data]
    if missing:
        raise InputError(f"{path}: ContMAV export lacks {missing}")
    cfg = ContMAVConfig.from_dict(data["config"], source=f"{path}: config")
    model = ContMAV(cfg)
    try:
        model.load_state_dict(data["model"])
    except RuntimeError as err:
        raise InputError(f"{path}: weights do not fit the stored config ({str(err)[:200]})") from None
    model.eval()
    s = data["mav_stats"]
    if not isinstance(s, dict) or any(k not in s for k in ("mavs", "variances", "counts")):
        raise InputError(f"{path}: 'mav_stats' must hold mavs, variances and counts")
    stats = MavStats(s["mavs"], s["variances"], s["counts"])
    known = tuple(int(t) for t in data["known_train_ids"])
    if len(known) != cfg.num_classes or stats.mavs.shape != (cfg.num_classes, cfg.num_classes):
        raise InputError(f"{path}: {len(known)} known train ids, MAVs {tuple(stats.mavs.shape)}, K = {cfg.num_classes}")
    info = {k: v for k, v in data.items() if k not in ("model", "config", "known_train_ids", "mav_stats")}
    return ContMAVExport(model, stats, known, cfg, info)


# ---------------------------------------------------------------------- entry point
def _recipe(recipe: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Split ``CONTMAV_RECIPE`` updated by ``recipe`` into trainer settings, augment, unknown_as."""
    if not isinstance(recipe, Mapping):
        raise InputError(f"ContMAV recipe: expected a mapping, got {type(recipe).__name__}")
    _reject_unknown(recipe, recipe_keys(), "ContMAV recipe")
    merged = {**CONTMAV_RECIPE, **recipe}
    augment = {**CONTMAV_RECIPE["augment"], **(recipe.get("augment") or {})}
    unknown = sorted(set(augment) - set(CONTMAV_RECIPE["augment"]))
    if unknown:
        raise InputError(f"ContMAV recipe: unknown augment key(s) {unknown}; known: {sorted(CONTMAV_RECIPE['augment'])}")
    merged.pop("augment")
    unknown_as = merged.pop("unknown_as")
    if "iters" in recipe and "epochs" in recipe:
        raise InputError("ContMAV recipe: give 'epochs' or 'iters', not both")
    if "iters" in recipe:
        merged.pop("epochs")
    return merged, augment, unknown_as


def train_contmav(
    *,
    image_root: Path,
    label_root: Path,
    known_train_ids: Sequence[int],
    class_weights: Path | None,
    model: Mapping[str, Any],
    variant: Mapping[str, Any],
    recipe: Mapping[str, Any],
    out: Path,
    state_dir: Path,
    metrics_log: Path,
    num_classes: int = NUM_TRAIN_IDS,
) -> None:
    """Train one ContMAV variant on a split and export it to ``out`` (resumable).

    ``num_classes``: the dataset's classes C (label train ids ``0 .. C-1``, the label
    set's; Cityscapes' 19 by default).

    ``recipe``: :data:`CONTMAV_RECIPE` keys to override (trainer settings of
    :class:`~vocabseg.engine.trainer.TrainConfig`, ``epochs`` or ``iters``,
    ``augment`` {crop_size, min_scale, max_scale, flip, hsv_jitter}, ``unknown_as``).
    ``class_weights``: the :func:`write_class_weights` file (None = unweighted).
    The network is initialised from a generator seeded with the recipe's ``seed``
    (default 0; :func:`~vocabseg.engine.trainer.seeded_construction`), so a run depends
    on its arguments only. The checkpoints are bound to the recipe, ``model``,
    ``variant``, the known classes and the digests of the class-weight file, the label
    folder (file contents) and the image folder (relative paths and sizes only, cheap
    for thousands of photos): a checkpoint of other inputs is moved aside and training
    starts from scratch.
    """
    settings, augment, unknown_as = _recipe(recipe)
    dataset = SemanticDataset(
        image_root,
        label_root,
        known_train_ids,
        augment=contmav_augment(augment["crop_size"], augment["min_scale"], augment["max_scale"], augment["flip"]),
        hsv_jitter=bool(augment["hsv_jitter"]),
        unknown_as=unknown_as,
        num_classes=num_classes,
    )
    space = dataset.space
    if "epochs" in settings:
        epochs = to_int(settings.pop("epochs"), "ContMAV recipe: epochs", 1)
        batch = to_int(settings.get("batch_size", 1), "ContMAV recipe: batch_size", 1)
        settings["iters"] = epochs * math.ceil(len(dataset) / batch)
    cfg = TrainConfig.from_dict(settings)
    weights = None if class_weights is None else read_class_weights(class_weights, space.known)
    with seeded_construction(cfg.seed, "contmav"):
        net = build_contmav_model(model, space.num_known, augment["crop_size"])
    task = ContMAVTask(net, weights, ContMAVVariant.from_dict(variant), space.known)
    inputs = {
        "model spec": json.dumps(dict(model), sort_keys=True),
        "variant": json.dumps(task.variant.to_dict(), sort_keys=True),
        "known classes": json.dumps(list(space.known)),
        "recipe key augment": json.dumps(augment, sort_keys=True),
        "recipe key unknown_as": unknown_as,
        "class weights": "-" if class_weights is None else file_digest(class_weights),
        "training labels": folder_digest(label_root),
        "training images": folder_digest(image_root, contents=False),
    }
    train(task, dataset, cfg, out=out, state_dir=state_dir, metrics_log=metrics_log, inputs=inputs)


def known_from_unknown(unknown: Sequence[int], num_classes: int = NUM_TRAIN_IDS) -> list[int]:
    """The train ids ``0 .. num_classes-1`` not in ``unknown`` (e.g. (16, 17, 18) ->
    BDD-Anomaly's 1+16 of Cityscapes' 19)."""
    bad = [t for t in unknown if not 0 <= int(t) < num_classes]
    if bad:
        raise InputError(f"unknown train ids: {bad} outside 0..{num_classes - 1}")
    return [t for t in range(num_classes) if t not in {int(u) for u in unknown}]

