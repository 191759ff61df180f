"""The one training loop of every approach: AdamW/Adam, poly/step/one-cycle schedule, clipping,
DDP, resume, optional per-epoch task hooks.

A *task* bundles what differs between approaches (see :class:`TrainTask`): the model,
its losses and how its final weights are written. :func:`train` does the rest, as
Mask2Former's Cityscapes recipe does it:

* **Optimiser.** ``cfg.optimizer``: ``"adamw"`` (default) is AdamW (betas 0.9/0.999,
  eps 1e-8, decoupled weight decay); ``"adam"`` is ``torch.optim.Adam`` with the same
  betas/eps, where ``weight_decay`` is Adam's L2 term added to the gradient (the
  ContMAV recipe: Adam, lr 0.004, weight decay 1e-4). Either runs over the parameters with
  ``requires_grad`` only (frozen ones, e.g. the CLIP backbone, are left out, so
  upstream's ``BACKBONE_MULTIPLIER`` has nothing to act on). Weight decay as
  detectron2/Mask2Former ``build_optimizer``: ``weight_decay_norm`` for the
  parameters of normalisation layers (batch/instance/group/layer/RMS norm, local
  response norm, and their subclasses), ``weight_decay_embed`` for ``nn.Embedding``
  weights (query features/embeddings, the decoder's level embedding, the void
  embedding), 0 for parameters whose name contains one of
  ``no_weight_decay_keys`` (upstream's ``relative_position_bias_table`` and
  ``absolute_pos_embed``), ``weight_decay`` for the rest. Plain ``nn.Parameter``
  tensors keep ``weight_decay`` whatever their name, as upstream: the pixel
  decoder's ``level_embed`` (a raw parameter there) and a trainable
  ``logit_scale`` are decayed.
* **Schedule.** ``"poly"`` (detectron2 ``WarmupPolyLR``): ``lr * (1 - i / iters) **
  0.9``; ``"step"`` (``WarmupMultiStepLR``): ``lr * gamma ** (number of steps <= i)``;
  ``"onecycle"``: ``torch.optim.lr_scheduler.OneCycleLR`` with ``max_lr = lr``,
  ``total_steps = iters``, cosine annealing, two phases (see :func:`lr_factor`;
  ``onecycle_pct_start`` 0.1, ``onecycle_div_factor`` 25, ``onecycle_final_div_factor``
  1e4, ContMAV's values), stepped every iteration (the public ContMAV code steps it
  once per epoch over ``epochs`` steps: the same curve on a coarser grid); every
  schedule times a linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``.
  The factor is a pure function of the iteration, so resuming restores it exactly.
* **Clipping.** Full-model L2 norm of the *unscaled* gradients (``CLIP_TYPE
  full_model``), ``clip_grad`` 0 disables it.
* **AMP.** ``torch.autocast`` (float16) with a ``GradScaler``, only on CUDA.
* **DDP.** Under ``torchrun`` (see :mod:`vocabseg.engine.distributed`) the model is
  wrapped in ``DistributedDataParallel``; gradients are averaged over processes. Its
  BatchNorm layers (ContMAV's) first become synchronised ones
  (:func:`~vocabseg.engine.distributed.sync_batchnorm`), and every task's losses
  normalise by global counts (:func:`~vocabseg.engine.distributed.global_normaliser`),
  so a run depends on the number of processes only through float rounding.

Data order. ``cfg.batch_size`` is the *global* batch. Samples are drawn as an endless
stream of seeded per-epoch permutations of the dataset; iteration ``i`` takes the
positions ``i*B .. i*B+B-1`` of that stream (a global batch may straddle two
epochs), process ``r`` of ``W`` its contiguous share ``B/W``. Each sample gets the
seed :func:`sample_seed` ``(cfg.seed, i, position in the global batch)`` and is
fetched with ``dataset.get(index, seed)``; the global torch RNG is re-seeded from
``(cfg.seed, i, rank)`` before every forward (dropout). So the data of an iteration
depends neither on the number of processes nor on data-loader workers nor on
restarts, and on CPU a run is bitwise reproducible for a given thread count,
including across kills and resumes (checkpoints hold every piece of state).

Task hooks (optional, looked up with ``getattr``; FC-CLIP tasks have none).

* ``task.end_epoch(iteration)``: called on every process after the optimiser step of
  every iteration that completes an *epoch* and after the last iteration (a final
  partial epoch), before that iteration's log line and checkpoint. An epoch is
  ``task.epoch_length`` iterations if the task defines it, else
  ``ceil(len(dataset) / batch_size)`` iterations: the number of global batches that
  draw as many samples as the dataset has (with the data order above, epoch ``e`` then
  covers iterations ``e*E .. e*E+E-1``; batches may straddle two permutations of the
  data). ``iteration`` is the number of iterations done. ContMAV finalises its MAVs
  there (summed over processes).
* ``task.state_dict()`` / ``task.load_state_dict(state)``: extra state of the task
  (e.g. running statistics), a dict of plain tensors (``weights_only``-loadable),
  stored under ``"task"`` in every checkpoint and restored on resume after the model
  and optimiser. ``state_dict`` is called on **every** process at the same point (it
  may use collectives, e.g. to sum per-process partial sums); the result of rank 0 is
  written. ``load_state_dict`` is called on every process with that saved state (a
  task must then keep such sums on one rank only). A checkpoint without task state for a task
  that has one (or the reverse) does not fit and raises :class:`~vocabseg.errors.InputError`.

Files.

* ``state_dir/ckpt_<iter>.pt``: written by rank 0 every ``checkpoint_every``
  iterations, at the end and on preemption; atomically (temporary file, fsync,
  ``os.replace``); the newest two are kept (unreadable newer leftovers aside). They
  hold plain tensors and dicts only (trainable-model state and buffers, optimiser,
  scheduler, scaler, iteration, the training configuration, the task's state), so
  ``torch.load(weights_only=True)`` reads them.
  ``state_dir`` must not be a Snakemake output, so it survives failed attempts.
* At start the newest checkpoint that loads cleanly is resumed (unreadable ones are
  skipped with a log line). Every checkpoint is bound to what determines the run: the
  training configuration and the caller's named ``inputs`` (e.g. content digests of
  the starting weights, the text classifier, the ground truth; see :func:`train`). If
  either differs, nothing is resumed and nothing is deleted: ``state_dir`` is renamed
  to ``<state_dir>.stale-<n>`` (the first free n) with a ``why.txt`` saying what
  changed (a ``metrics_log`` outside ``state_dir`` moves into it too), one log line
  names the change (``recipe key lr``, ``text classifier``, ...) and training starts
  from scratch. A checkpoint of matching inputs that does not fit the model (or the
  task's state) raises :class:`~vocabseg.errors.InputError`.
* ``metrics_log``: one JSON line per ``log_every`` iterations (and the last) from
  rank 0: ``{"iter", "lr", "loss", <each loss term>, "sec_per_iter"}``: ``lr`` of
  iteration ``iter``, the others the mean over the iterations since the previous
  line (or since the resume) and over processes. On resume the lines past the
  resumed iteration (written after the checkpoint by the interrupted attempt, or
  torn by a kill) are removed, then lines are appended, so each iteration appears
  once.
* ``out``: ``task.export(model, path)`` on rank 0 after the last iteration, to a
  temporary name then renamed, so ``out`` exists only when training is complete.

Preemption. SIGTERM or SIGUSR1 sets a flag (DataLoader workers ignore both); at the
end of the current iteration all processes agree on it, rank 0 writes a checkpoint
and every process raises :class:`Preempted`, a ``SystemExit`` with status 143
(128 + SIGTERM). The scheduler's retry (Snakemake ``--retries``) restarts the job,
which resumes from that checkpoint. SIGKILL at any moment loses at most the
iterations since the last checkpoint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from bisect import bisect_right
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Mapping, Protocol, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from vocabseg.engine.distributed import (
    all_mean,
    any_true,
    barrier,
    broadcast_int,
    device,
    init_distributed,
    is_main,
    rank,
    sync_batchnorm,
    world_size,
)
from vocabseg.errors import InputError
from vocabseg.fileio import move_aside

__all__ = [
    "TrainConfig",
    "TrainTask",
    "Preempted",
    "PREEMPTED_EXIT_CODE",
    "train",
    "param_groups",
    "lr_factor",
    "onecycle_factor",
    "epoch_length",
    "sample_seed",
    "stable_int",
    "batch_plan",
    "list_checkpoints",
    "find_checkpoint",
    "checkpoint_changes",
    "seeded_construction",
]

PREEMPTED_EXIT_CODE = 143
_RESERVED_KEYS = ("iter", "lr", "loss", "sec_per_iter")
# May change between attempts without changing the result.
_RUNTIME_FIELDS = ("checkpoint_every", "log_every", "num_workers", "find_unused_parameters")
_CKPT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
_CKPT_KEYS = ("iteration", "model", "optimizer", "scheduler", "scaler", "config")
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    nn.RMSNorm,
)


class Preempted(SystemExit):
    """Training stopped on SIGTERM/SIGUSR1 after checkpointing; exit status 143."""

    def __init__(self, iteration: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.iteration = iteration


@dataclass
class TrainConfig:
    """Training hyper-parameters (Mask2Former Cityscapes values by default).

    Attributes:
        iters: number of optimiser steps.
        batch_size: global batch (all processes together); divisible by the world size.
        optimizer: ``"adamw"`` (decoupled weight decay) or ``"adam"`` (L2 weight decay).
        lr, weight_decay, weight_decay_norm, weight_decay_embed: optimiser settings.
        no_weight_decay_keys: parameter-name parts that get no weight decay.
        schedule: ``"poly"``, ``"step"`` or ``"onecycle"``; ``poly_power``; ``steps``
            (iterations) and ``gamma`` for ``"step"``; ``onecycle_pct_start``,
            ``onecycle_div_factor``, ``onecycle_final_div_factor`` for ``"onecycle"``.
        warmup_iters, warmup_factor: linear warm-up.
        clip_grad: full-model gradient L2-norm limit (0 = off).
        amp: ``"auto"`` (on with CUDA), ``"on"`` (CUDA required) or ``"off"``.
        seed: data order, sample seeds and per-iteration RNG seeds derive from it.
        checkpoint_every, log_every: in iterations.
        num_workers: DataLoader worker processes (0 = load in the training process).
        find_unused_parameters: passed to ``DistributedDataParallel``.
    """

    iters: int
    batch_size: int
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.05
    weight_decay_norm: float = 0.0
    weight_decay_embed: float = 0.0
    no_weight_decay_keys: tuple[str, ...] = ("relative_position_bias_table", "absolute_pos_embed")
    schedule: str = "poly"
    poly_power: float = 0.9
    steps: tuple[int, ...] = ()
    gamma: float = 0.1
    onecycle_pct_start: float = 0.1
    onecycle_div_factor: float = 25.0
    onecycle_final_div_factor: float = 1e4
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    clip_grad: float = 0.01
    amp: str = "auto"
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 10
    num_workers: int = 0
    find_unused_parameters: bool = False

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a config mapping; unknown keys raise :class:`InputError` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"training config: unknown key(s) {unknown}; known: {sorted(known)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        try:
            cfg = cls(**kwargs)
        except TypeError as err:
            raise InputError(f"training config: {err}") from None
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid field."""

        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise InputError(f"training config key {key}: {what}, got {getattr(self, key)!r}")

        need(isinstance(self.iters, int) and self.iters >= 1, "iters", "expected an integer >= 1")
        need(
            isinstance(self.batch_size, int) and self.batch_size >= 1,
            "batch_size",
            "expected an integer >= 1",
        )
        need(self.optimizer in ("adamw", "adam"), "optimizer", "expected 'adamw' or 'adam'")
        need(self.lr > 0, "lr", "expected > 0")
        for key in ("weight_decay", "weight_decay_norm", "weight_decay_embed"):
            need(getattr(self, key) >= 0, key, "expected >= 0")
        need(self.schedule in ("poly", "step", "onecycle"), "schedule", "expected 'poly', 'step' or 'onecycle'")
        need(self.poly_power > 0, "poly_power", "expected > 0")
        need(all(isinstance(s, int) and s >= 0 for s in self.steps), "steps", "expected iteration numbers")
        need(self.gamma > 0, "gamma", "expected > 0")
        need(0 < self.onecycle_pct_start < 1, "onecycle_pct_start", "expected in (0, 1)")
        need(self.onecycle_div_factor > 0, "onecycle_div_factor", "expected > 0")
        need(self.onecycle_final_div_factor > 0, "onecycle_final_div_factor", "expected > 0")
        need(isinstance(self.warmup_iters, int) and self.warmup_iters >= 0, "warmup_iters", "expected >= 0")
        need(0 < self.warmup_factor <= 1, "warmup_factor", "expected in (0, 1]")
        need(self.clip_grad >= 0, "clip_grad", "expected >= 0 (0 disables clipping)")
        need(self.amp in ("auto", "on", "off"), "amp", "expected 'auto', 'on' or 'off'")
        need(isinstance(self.seed, int), "seed", "expected an integer")
        need(
            isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 1,
            "checkpoint_every",
            "expected >= 1",
        )
        need(isinstance(self.log_every, int) and self.log_every >= 1, "log_every", "expected >= 1")
        need(isinstance(self.num_workers, int) and self.num_workers >= 0, "num_workers", "expected >= 0")


class TrainTask(Protocol):
    """What an approach hands to :func:`train`.

    Attributes:
        model: the module to train (moved to the training device; parameters with
            ``requires_grad=False`` stay frozen and out of the optimiser and of the
            checkpoints).

    Optional members (see "Task hooks" in the module docstring): ``epoch_length``
    (int), ``end_epoch(iteration)``, ``state_dict()`` and ``load_state_dict(state)``.
    """

    model: nn.Module

    def losses(self, model: nn.Module, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Loss terms of one local batch; their sum is minimised.

        Args:
            model: the module to *call* (``task.model`` wrapped in
                ``DistributedDataParallel`` under DDP; reach attributes via
                ``task.model``).
            images: float [B, 3, H, W], RGB 0..255, on the training device.
            targets: B dicts ``{"labels", "masks", "seed"}`` (tensors on the device).
        """
        ...

    def export(self, model: nn.Module, path: Path) -> None:
        """Write the final weights of ``model`` (the unwrapped ``task.model``) to ``path``."""
        ...


# --------------------------------------------------------------------------------------
# Optimiser, schedule, data order
# --------------------------------------------------------------------------------------


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups: one per weight-decay value, trainable parameters only.

    Every group has ``params``, ``weight_decay``, ``lr`` (= ``cfg.lr``) and
    ``param_names``; groups and parameters are in module order, shared parameters
    appear once.
    """
    groups: dict[float, dict] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            full_name = f"{module_name}.{name}" if module_name else name
            decay = cfg.weight_decay
            if any(key in full_name for key in cfg.no_weight_decay_keys):
                decay = 0.0
            if isinstance(module, _NORM_TYPES):
                decay = cfg.weight_decay_norm
            if isinstance(module, nn.Embedding):
                decay = cfg.weight_decay_embed
            group = groups.setdefault(
                decay, {"params": [], "param_names": [], "weight_decay": decay, "lr": cfg.lr}
            )
            group["params"].append(param)
            group["param_names"].append(full_name)
    return list(groups.values())


def onecycle_factor(cfg: TrainConfig, iteration: int) -> float:
    """``OneCycleLR``'s learning rate at step ``iteration``, divided by ``max_lr``.

    As ``torch.optim.lr_scheduler.OneCycleLR(max_lr, total_steps=cfg.iters,
    pct_start=p, div_factor=d, final_div_factor=f, anneal_strategy="cos",
    three_phase=False)``: with ``a = 1 / d`` (initial), ``z = a / f`` (final),
    ``e1 = p * iters - 1`` and ``e2 = iters - 1`` (the phase ends),

    * ``i <= e1``: ``cos_anneal(a, 1, i / e1)``;
    * else: ``cos_anneal(1, z, (i - e1) / (e2 - e1))``;

    ``cos_anneal(s, t, x) = t + (s - t) / 2 * (1 + cos(pi x))``. A phase of length 0
    (``p * iters == 1``, where torch divides by zero) counts as completed (x = 1).
    Defined past the last step as well (the curve continued), which the trainer's
    ``LambdaLR`` evaluates once after the last iteration.
    """
    initial = 1.0 / cfg.onecycle_div_factor
    final = initial / cfg.onecycle_final_div_factor
    end1 = float(cfg.onecycle_pct_start * cfg.iters) - 1.0
    end2 = float(cfg.iters) - 1.0

    def anneal(start: float, end: float, begin: float, stop: float) -> float:
        pct = 1.0 if stop == begin else (iteration - begin) / (stop - begin)
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)

    if iteration <= end1:
        return anneal(initial, 1.0, 0.0, end1)
    return anneal(1.0, final, end1, end2)


def lr_factor(cfg: TrainConfig, iteration: int) -> float:
    """Multiplier of ``cfg.lr`` at (0-based) ``iteration``."""
    warm = 1.0
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        warm = cfg.warmup_factor * (1.0 - alpha) + alpha
    if cfg.schedule == "poly":
        return warm * max(0.0, 1.0 - iteration / cfg.iters) ** cfg.poly_power
    if cfg.schedule == "onecycle":
        return warm * onecycle_factor(cfg, iteration)
    return warm * cfg.gamma ** bisect_right(sorted(cfg.steps), iteration)


def epoch_length(task: Any, num_samples: int, cfg: TrainConfig) -> int:
    """Iterations per epoch: ``task.epoch_length`` if the task sets it, else
    ``ceil(num_samples / cfg.batch_size)``."""
    length = getattr(task, "epoch_length", None)
    if length is None:
        return max(1, -(-int(num_samples) // cfg.batch_size))
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise InputError(f"task.epoch_length: expected an integer >= 1, got {length!r}")
    return length


def stable_int(*parts: object) -> int:
    """A 63-bit integer hash of ``parts`` that is the same in every process and run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def sample_seed(seed: int, iteration: int, position: int) -> int:
    """Seed of the sample at ``position`` of the global batch of ``iteration``."""
    return stable_int("sample", int(seed), int(iteration), int(position))


@lru_cache(maxsize=4)
def _epoch_order(num_samples: int, seed: int, epoch: int) -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(stable_int("epoch", seed, epoch))
    return tuple(torch.randperm(num_samples, generator=generator).tolist())


def batch_plan(
    num_samples: int, cfg: TrainConfig, iteration: int, world: int = 1, rank: int = 0
) -> list[tuple[int, int]]:
    """``(dataset index, sample seed)`` of this process's share of the global batch.

    Raises :class:`InputError` if ``cfg.batch_size`` is not divisible by ``world``.
    """
    if cfg.batch_size % world:
        raise InputError(
            f"training config key batch_size: {cfg.batch_size} is not divisible by {world} processes"
        )
    share = cfg.batch_size // world
    plan = []
    for position in range(rank * share, (rank + 1) * share):
        epoch, offset = divmod(iteration * cfg.batch_size + position, num_samples)
        plan.append(
            (_epoch_order(num_samples, cfg.seed, epoch)[offset], sample_seed(cfg.seed, iteration, position))
        )
    return plan


class _Schedule:
    """Batch sampler of the DataLoader: the plan of each remaining iteration."""

    def __init__(self, num_samples: int, cfg: TrainConfig, start: int, world: int, rank_: int):
        self.num_samples, self.cfg, self.start, self.world, self.rank = num_samples, cfg, start, world, rank_

    def __iter__(self):
        for iteration in range(self.start, self.cfg.iters):
            yield batch_plan(self.num_samples, self.cfg, iteration, self.world, self.rank)

    def __len__(self) -> int:
        return self.cfg.iters - self.start


class _Fetch(torch.utils.data.Dataset):
    """Map-style view whose keys are ``(index, seed)``."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        return self.dataset.get(index, seed)


def _collate(samples: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    sizes = {tuple(image.shape) for image, _ in samples}
    if len(sizes) != 1:
        raise InputError(
            f"training samples of one batch differ in size {sorted(sizes)}; use a fixed crop size"
        )
    return torch.stack([image for image, _ in samples]), [target for _, target in samples]


def _worker_init(_: int) -> None:
    # The training process handles preemption; its loader workers must survive it.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def _to_device(target: dict, dev: torch.device) -> dict:
    return {k: v.to(dev, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in target.items()}


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


def _log(message: str) -> None:
    if is_main():
        tqdm.write(f"train: {message}", file=sys.stderr)
        sys.stderr.flush()


def list_checkpoints(state_dir: Path) -> list[tuple[int, Path]]:
    """``(iteration, path)`` of the ``ckpt_<iter>.pt`` files in ``state_dir``, newest first."""
    found = []
    if Path(state_dir).is_dir():
        for path in Path(state_dir).iterdir():
            match = _CKPT_RE.match(path.name)
            if match:
                found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def _read_checkpoint(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or any(k not in state for k in _CKPT_KEYS):
        raise ValueError("not a training checkpoint")
    return state


def find_checkpoint(state_dir: Path) -> tuple[int, Path, dict] | None:
    """The newest checkpoint of ``state_dir`` that loads cleanly, or None.

    Unreadable (truncated, corrupt) files are skipped with a log line.
    """
    for iteration, path in list_checkpoints(state_dir):
        try:
            return iteration, path, _read_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - any failure to read means "skip this file"
            _log(f"skipping unreadable checkpoint {path} ({type(err).__name__}: {err})")
    return None


# Fields added after checkpoints were first written: left out of the fingerprint at
# their default value, so those checkpoints still resume.
_LATER_FIELDS = ("optimizer", "onecycle_pct_start", "onecycle_div_factor", "onecycle_final_div_factor")


def _fingerprint(cfg: TrainConfig, use_amp: bool) -> str:
    values = {k: v for k, v in asdict(cfg).items() if k not in _RUNTIME_FIELDS}
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for key in _LATER_FIELDS:
        if values[key] == defaults[key]:
            del values[key]
    values["amp"] = use_amp
    return json.dumps(values, sort_keys=True)


def checkpoint_changes(state: Mapping[str, Any], fingerprint: str, inputs: Mapping[str, str]) -> list[str]:
    """What differs between a checkpoint's binding and the current run, in words.

    ``state``: a checkpoint (its ``"config"`` fingerprint and ``"inputs"``, a JSON
    object of name -> digest; absent in checkpoints written before inputs were bound).
    Returns e.g. ``["recipe key lr", "text classifier"]``; empty when the checkpoint
    belongs to this run.
    """
    saved, now = json.loads(state["config"]), json.loads(fingerprint)
    changes = [f"recipe key {k}" for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if "inputs" not in state:
        if inputs:
            changes.append("inputs (the checkpoint predates input binding)")
        return changes
    saved_inputs = json.loads(state["inputs"])
    keys = list(inputs) + sorted(set(saved_inputs) - set(inputs))
    return changes + [k for k in keys if saved_inputs.get(k) != inputs.get(k)]


@contextlib.contextmanager
def seeded_construction(seed: int, *identity: object) -> Iterator[None]:
    """Build a model inside this block to get initial weights that depend on ``seed`` and
    ``identity`` only (never on random numbers drawn before); the global torch RNG is
    restored afterwards. ``identity`` names the job (e.g. ``"fcclip", "finetune"``), never
    anything run-specific such as the study name."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_int("model", int(seed), *identity))
        yield


def _frozen_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without the frozen parameters (buffers are kept)."""
    frozen = _frozen_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in frozen}


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_checkpoint(state_dir: Path, iteration: int, state: dict) -> None:
    """Rank 0: write ``ckpt_<iteration>.pt`` atomically, keep it and the one before."""
    final = state_dir / f"ckpt_{iteration}.pt"
    tmp = state_dir / f".ckpt_{iteration}.pt.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(state_dir)
    # Keep this one and the newest older one. Newer files can only be unreadable
    # leftovers that resume skipped; they are left alone (and overwritten later).
    for _, old in [c for c in list_checkpoints(state_dir) if c[0] < iteration][1:]:
        old.unlink(missing_ok=True)


class _Trainer:
    """State of one :func:`train` call (model, optimiser, schedule, files)."""

    def __init__(
        self,
        task: TrainTask,
        dataset: Any,
        cfg: TrainConfig,
        out: Path,
        state_dir: Path,
        metrics_log: Path,
        inputs: Mapping[str, str],
    ):
        self.task, self.dataset, self.cfg = task, dataset, cfg
        self.inputs = {str(k): str(v) for k, v in inputs.items()}
        self.out, self.state_dir, self.metrics_log = out, state_dir, metrics_log
        self.world, self.rank = world_size(), rank()
        self.device = device()
        if cfg.amp == "on" and self.device.type != "cuda":
            raise InputError("training config key amp: 'on' needs a CUDA device; use 'auto' or 'off'")
        self.use_amp = cfg.amp == "on" or (cfg.amp == "auto" and self.device.type == "cuda")
        self.model = sync_batchnorm(task.model.to(self.device))
        groups = param_groups(self.model, cfg)
        if not groups:
            raise InputError("the model has no trainable parameters")
        self.params = [p for g in groups for p in g["params"]]
        optimizer_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_cls(groups, lr=cfg.lr)
        self.epoch_length = epoch_length(task, len(dataset), cfg)
        self.task_state = callable(getattr(task, "state_dict", None))
        if self.task_state != callable(getattr(task, "load_state_dict", None)):
            raise TypeError("a task defines both state_dict and load_state_dict or neither")
        self.end_epoch = getattr(task, "end_epoch", None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda i: lr_factor(cfg, i))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.use_amp)
        self.fingerprint = _fingerprint(cfg, self.use_amp)

    # -- checkpoints -----------------------------------------------------------------

    def save(self, iteration: int) -> None:
        task_state = self.task.state_dict() if self.task_state else None  # every rank (collectives)
        if is_main():
            state = {
                "iteration": iteration,
                "model": _trainable_state(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "config": self.fingerprint,
                "inputs": json.dumps(self.inputs, sort_keys=True),
            }
            if task_state is not None:
                state["task"] = task_state
            _write_checkpoint(self.state_dir, iteration, state)
        barrier()

    def resume(self) -> int:
        """Load the newest valid checkpoint; return the iteration to start from."""
        found = None
        if is_main():
            for stale in self.state_dir.glob(".ckpt_*.tmp"):
                stale.unlink(missing_ok=True)
            found = find_checkpoint(self.state_dir)
            if found is not None:
                changes = checkpoint_changes(found[2], self.fingerprint, self.inputs)
                if changes:
                    self.set_aside(found[1], changes)
                    found = None
        iteration = broadcast_int(found[0] if found else -1)
        if iteration < 0:
            return 0
        if found is None:
            path = self.state_dir / f"ckpt_{iteration}.pt"
            state = _read_checkpoint(path)
        else:
            _, path, state = found
        frozen = _frozen_names(self.model)
        try:
            result = self.model.load_state_dict(state["model"], strict=False)
            problems = sorted(set(result.missing_keys) - frozen) + sorted(result.unexpected_keys)
            if problems:
                raise ValueError(f"mismatched keys {problems[:5]}")
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            if self.task_state != ("task" in state):
                raise ValueError("task state " + ("missing" if self.task_state else "present but unused"))
            if self.task_state:
                self.task.load_state_dict(state["task"])
        except (RuntimeError, ValueError, KeyError, InputError) as err:
            raise InputError(
                f"{path}: does not fit this model ({err}); move {self.state_dir} away to start over"
            ) from None
        _log(f"resumed from {path}")
        return iteration

    def set_aside(self, checkpoint: Path, changes: list[str]) -> None:
        """Rank 0: move the checkpoints of other inputs aside (never delete them), say why."""
        what = ", ".join(changes)
        log = self.metrics_log
        outside = log.exists() and not log.resolve().is_relative_to(self.state_dir.resolve())
        if outside:
            os.replace(log, self.state_dir / f"outside-{log.name}")
        aside = move_aside(
            self.state_dir,
            ".stale",
            f"{checkpoint.name} was written for other training inputs: {what}\n"
            + (f"outside-{log.name} is the metrics log {log} of that run\n" if outside else ""),
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        _log(f"training inputs changed since {checkpoint} ({what}): moved it aside to {aside}; training from scratch")

    # -- metrics ---------------------------------------------------------------------

    def trim_metrics(self, start: int) -> None:
        """Drop the lines past ``start`` (and torn lines) from the metrics log."""
        path = self.metrics_log
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if line.endswith("\n") and isinstance(record, dict) and isinstance(record.get("iter"), int):
                if record["iter"] <= start:
                    keep.append(line)
        if keep != lines:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text("".join(keep))
            os.replace(tmp, path)

    def write_metrics(self, record: dict) -> None:
        if is_main():
            with open(self.metrics_log, "a") as f:
                f.write(json.dumps(record) + "\n")

    # -- the loop --------------------------------------------------------------------

    def run(self, start: int, stop: _StopRequest) -> None:
        cfg, dev = self.cfg, self.device
        net: nn.Module = self.model
        if self.world > 1:
            net = nn.parallel.DistributedDataParallel(
                self.model,
                device_ids=[dev.index] if dev.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        loader = DataLoader(
            _Fetch(self.dataset),
            batch_sampler=_Schedule(len(self.dataset), cfg, start, self.world, self.rank),
            num_workers=cfg.num_workers,
            collate_fn=_collate,
            pin_memory=dev.type == "cuda",
            worker_init_fn=_worker_init if cfg.num_workers > 0 else None,
        )
        bar = tqdm(
            total=cfg.iters,
            initial=start,
            desc="train",
            unit="it",
            file=sys.stderr,
            disable=not is_main(),
            dynamic_ncols=True,
            mininterval=1.0 if sys.stderr.isatty() else 60.0,
        )
        names: list[str] | None = None
        window_sum: torch.Tensor | None = None
        window_count, window_start = 0, time.perf_counter()
        saved_at = start
        self.model.train()
        try:
            for iteration, (images, targets) in zip(range(start, cfg.iters), loader):
                images = images.to(dev, non_blocking=True)
                targets = [_to_device(t, dev) for t in targets]
                torch.manual_seed(stable_int("rng", cfg.seed, iteration, self.rank))
                with torch.autocast(dev.type, dtype=torch.float16, enabled=self.use_amp):
                    terms = self.task.losses(net, images, targets)
                if names is None:
                    names = sorted(terms)
                    clash = [k for k in names if k in _RESERVED_KEYS]
                    if not names or clash:
                        raise ValueError(
                            f"task.losses must return named terms other than {_RESERVED_KEYS}; got {names}"
                        )
                elif sorted(terms) != names:
                    raise ValueError(f"task.losses returned terms {sorted(terms)} after {names}")
                loss = sum(terms[k].float() for k in names)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at iteration {iteration}: "
                        + ", ".join(f"{k}={terms[k].item():.4g}" for k in names)
                    )
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if cfg.clip_grad > 0:
                    self.scaler.unscale_(self.optimizer)
                    nn.utils.clip_grad_norm_(self.params, cfg.clip_grad)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                lr = self.optimizer.param_groups[0]["lr"]
                self.scheduler.step()
                done = iteration + 1
                bar.update(1)
                if self.end_epoch is not None and (done % self.epoch_length == 0 or done == cfg.iters):
                    self.end_epoch(done)

                values = torch.stack([loss.detach()] + [terms[k].detach().float() for k in names])
                window_sum = values if window_sum is None else window_sum + values
                window_count += 1
                if done % cfg.log_every == 0 or done == cfg.iters:
                    mean = all_mean(window_sum / window_count).tolist()
                    record = {"iter": done, "lr": lr, "loss": mean[0], **dict(zip(names, mean[1:]))}
                    record["sec_per_iter"] = (time.perf_counter() - window_start) / window_count
                    self.write_metrics(record)
                    bar.set_postfix(loss=f"{mean[0]:.4g}", refresh=False)
                    window_sum, window_count, window_start = None, 0, time.perf_counter()
                if done % cfg.checkpoint_every == 0 or done == cfg.iters:
                    self.save(done)
                    saved_at = done
                if self.world > 1 and done < cfg.iters:
                    requested = any_true(stop.requested)
                else:
                    requested = stop.requested and done < cfg.iters
                if requested:
                    if saved_at != done:
                        self.save(done)
                    _log(f"preempted at iteration {done}; checkpoint written; exit status {PREEMPTED_EXIT_CODE}")
                    raise Preempted(done)
        finally:
            bar.close()

    def export(self) -> None:
        if is_main():
            self.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.out.with_name(f"{self.out.stem}.partial{self.out.suffix}")
            try:
                self.task.export(self.model, tmp)
                os.replace(tmp, self.out)
            finally:
                tmp.unlink(missing_ok=True)
            _log(f"wrote {self.out}")
        barrier()


class _StopRequest:
    """Context manager: SIGTERM / SIGUSR1 set ``requested`` instead of killing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGUSR1):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(
    task: TrainTask,
    dataset: Any,
    cfg: TrainConfig,
    *,
    out: Path,
    state_dir: Path,
    metrics_log: Path,
    inputs: Mapping[str, str] | None = None,
) -> None:
    """Train ``task.model`` on ``dataset`` for ``cfg.iters`` iterations, resuming if possible.

    Args:
        task: see :class:`TrainTask`.
        dataset: ``len(dataset)`` and ``dataset.get(index, seed) -> (image [3, H, W],
            target dict)``; all samples of a run must have the same size.
        cfg: hyper-parameters.
        out: final weights, written by ``task.export`` after the last iteration.
        state_dir: checkpoint folder (created; must differ from ``out``).
        metrics_log: JSONL metrics file (appended).
        inputs: what else determines the run besides ``cfg``, as ``{name: value}``
            strings (content digests of input files, the model spec, the task kind, ...);
            stored in every checkpoint. A checkpoint whose ``cfg`` or ``inputs`` differ is
            moved aside and training starts from scratch, naming the first differing
            entries (see "Files" in the module docstring). Names are what the log says,
            so use words: ``"text classifier"``, ``"starting weights"``.

    Joins the ``torchrun`` process group if the environment describes one (and
    leaves it initialised). Raises :class:`Preempted` (exit status 143) after
    checkpointing when SIGTERM or SIGUSR1 arrives, :class:`InputError` on a bad
    configuration or a checkpoint of the same inputs that does not fit the model.
    """
    cfg.validate()
    out, state_dir, metrics_log = Path(out), Path(state_dir), Path(metrics_log)
    if out.resolve() == state_dir.resolve():
        raise InputError(f"{state_dir}: the checkpoint folder must differ from the output {out}")
    if len(dataset) == 0:
        raise InputError("the training dataset is empty")
    init_distributed()
    if cfg.batch_size % world_size():
        raise InputError(
            f"training config key batch_size: {cfg.batch_size} is not divisible by {world_size()} processes"
        )
    trainer = _Trainer(task, dataset, cfg, out, state_dir, metrics_log, inputs or {})
    with _StopRequest() as stop:
        if is_main():
            state_dir.mkdir(parents=True, exist_ok=True)
        barrier()
        start = trainer.resume()
        if is_main():
            trainer.trim_metrics(start)
        if start < cfg.iters:
            trainer.run(start, stop)
        trainer.export()
