"""Process-group helpers for ``torchrun`` (one process per GPU), usable without it.

``torchrun`` (or any launcher) describes the job with the environment variables
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` joins that process group: NCCL when CUDA is available, Gloo
on CPU. Without those variables (or with ``WORLD_SIZE`` 1) nothing is initialised
and every helper behaves as for a single process: rank 0 of a world of size 1,
barriers and reductions are no-ops.

Losses that do not depend on the number of processes. DDP averages the gradients of
the W processes. A loss that is a mean over items of the global batch (masks, pixels,
selected queries, ...) is therefore written on process p as
``sum over p's items / global_normaliser(p's item count)``: the normaliser is the
global count divided by W, so the averaged gradient is that of
``sum over all items / global count``, exactly the loss of one process holding the
whole global batch. :func:`global_normaliser` is a collective: every process must call
it, in the same order, whether or not it holds any item. Batch statistics are shared
the same way: :func:`sync_batchnorm` converts BatchNorm layers before DDP wraps the
model.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vocabseg.errors import InputError

__all__ = [
    "init_distributed",
    "is_distributed",
    "world_size",
    "rank",
    "local_rank",
    "is_main",
    "device",
    "barrier",
    "any_true",
    "all_mean",
    "global_normaliser",
    "all_gather_rows",
    "sync_batchnorm",
    "broadcast_int",
    "cleanup",
]


def _env_int(name: str, default: int | None = None) -> int:
    value = os.environ.get(name)
    if value is None:
        if default is None:
            raise InputError(f"environment variable {name} is not set (needed when WORLD_SIZE > 1)")
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"environment variable {name}={value!r} is not an integer") from None


def is_distributed() -> bool:
    """True when a process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def init_distributed() -> bool:
    """Join the process group described by the ``torchrun`` environment variables.

    Idempotent. Returns True if this process is part of a group of more than one
    process. On CUDA also selects the device ``cuda:LOCAL_RANK``.
    """
    if is_distributed():
        return dist.get_world_size() > 1
    size = _env_int("WORLD_SIZE", 1)
    if size <= 1:
        return False
    rank_ = _env_int("RANK")
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise InputError(f"environment variable {name} is not set (needed when WORLD_SIZE > 1)")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
        dist.init_process_group("nccl", init_method="env://", rank=rank_, world_size=size, device_id=device())
    else:
        dist.init_process_group("gloo", init_method="env://", rank=rank_, world_size=size)
    return True


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Global rank of this process (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def local_rank() -> int:
    """Rank of this process on its node (``LOCAL_RANK``, default 0)."""
    return _env_int("LOCAL_RANK", 0)


def is_main() -> bool:
    """True on global rank 0: the process that writes files and logs."""
    return rank() == 0


def device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every process (no-op without a process group)."""
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[local_rank()])
        else:
            dist.barrier()


def any_true(flag: bool) -> bool:
    """True on every process if ``flag`` is True on at least one of them."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of a float tensor over all processes (returned on the input's device)."""
    if not is_distributed():
        return values
    t = values.detach().to(_collective_device(), torch.float64).clone()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return (t / dist.get_world_size()).to(values.device, values.dtype)


def global_normaliser(local_count: float | torch.Tensor) -> float:
    """``local_count`` summed over processes, divided by their number (itself without DDP).

    The denominator of a per-process loss ``local_sum / global_normaliser(local_count)``
    whose DDP gradient equals the one-process gradient of the global mean (see the
    module docstring). A collective: call it on every process. Returns 0.0 when no
    process has an item; the caller decides what an empty mean is.
    """
    value = torch.as_tensor(local_count).detach().to(torch.float64).reshape(1)
    return float(all_mean(value).item())


class _SumOverProcesses(torch.autograd.Function):
    """Differentiable all-reduce (sum): the gradient is summed over processes too."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return _SumOverProcesses.apply(grad)


def all_gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """The rows of every process, in rank order: ``[n_p, ...]`` -> ``[Σ_p n_p, ...]``.

    For losses that compare items across the global batch (contrastive terms): with
    contiguous shards of the global batch (:func:`vocabseg.engine.trainer.batch_plan`)
    the result is the one-process batch's rows in the one-process order.
    Differentiable: the gradient reaching this process's rows is summed over all
    processes. So when every process computes the same loss L from the gathered rows
    and returns it unchanged, DDP's average of the W gradients is the gradient of L,
    as for one process holding the global batch. A collective (call it on every process,
    with or without rows); ``rows`` itself without a process group.
    """
    if not is_distributed():
        return rows
    world, me = dist.get_world_size(), dist.get_rank()
    sizes = torch.zeros(world, dtype=torch.int64, device=_collective_device())
    sizes[me] = rows.shape[0]
    dist.all_reduce(sizes)
    counts = sizes.tolist()
    before, after = sum(counts[:me]), sum(counts[me + 1 :])
    padded = torch.cat([rows.new_zeros((before, *rows.shape[1:])), rows, rows.new_zeros((after, *rows.shape[1:]))])
    return _SumOverProcesses.apply(padded)  # zeros elsewhere: the sum is each process's rows, exactly


class _GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics span all processes, for CPU tensors (Gloo).

    PyTorch's SyncBatchNorm refuses CPU input, and DDP refuses a CPU model that holds
    one, hence this separate class. In training mode under a process group it computes
    the per-channel sum, sum of squares and count of its input, sums them over
    processes with a differentiable all-reduce (whose backward sums the gradients over
    processes, as SyncBatchNorm's backward does) and normalises with the global mean
    and biased variance; the running statistics are updated with the global mean and
    unbiased variance. The statistics are formed in float64. Otherwise (eval mode, no
    group) it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        x = input.to(torch.float64)
        count = x.new_tensor([input.numel() / channels])
        stats = _SumOverProcesses.apply(torch.cat([x.sum(dims), (x * x).sum(dims), count]))
        n = stats[-1]
        mean = stats[:channels] / n
        var = (stats[channels:-1] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1.0)
                self.running_mean.mul_(1.0 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1.0 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (input.dim() - 2)
        scale = torch.rsqrt(var + self.eps).to(input.dtype).view(shape)
        out = (input - mean.to(input.dtype).view(shape)) * scale
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def sync_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` with every ``BatchNorm*d`` layer computing its batch statistics over all processes.

    Call it before wrapping the model in DDP. Under a process group of more than one
    process the layers become :class:`torch.nn.SyncBatchNorm` on CUDA and the
    equivalent :class:`_GlooSyncBatchNorm` on the CPU (the layers change class in
    place); parameters and buffers are kept (same tensors, same state-dict keys).
    Without such a group the model is returned unchanged.
    Layers in eval mode (e.g. a frozen backbone's) keep using their running statistics.
    """
    if world_size() <= 1:
        return model
    if device().type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm):
        raise TypeError("sync_batchnorm: pass the model that holds the BatchNorm layers, not a layer")
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
            module.__class__ = _GlooSyncBatchNorm
    return model


def broadcast_int(value: int, src: int = 0) -> int:
    """``value`` of process ``src``, on every process."""
    if not is_distributed():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    dist.broadcast(t, src=src)
    return int(t.item())


def cleanup() -> None:
    """Leave the process group, if any."""
    if is_distributed():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    return device() if dist.get_backend() == "nccl" else torch.device("cpu")
