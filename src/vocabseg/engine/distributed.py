"""Process-group helpers for ``torchrun`` (one process per GPU), usable without it.

``torchrun`` (or any launcher) describes the job with the environment variables
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`init_distributed` joins that process group: NCCL when CUDA is available, Gloo
on CPU. Without those variables (or with ``WORLD_SIZE`` 1) nothing is initialised
and every helper behaves as for a single process: rank 0 of a world of size 1,
barriers and reductions are no-ops.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

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
