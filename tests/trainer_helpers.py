"""Helpers of the tests that compare interrupted or distributed training runs.

``tests/test_trainer.py`` (a toy net), ``tests/test_fcclip_training.py`` (tiny
FC-CLIP) and ``tests/test_contmav_training.py`` (tiny ContMAV) run training in
subprocesses (each test file executed as a script with ``--dir FOLDER``), kill,
preempt or distribute them, and compare the result with an
uninterrupted in-process run of the same configuration in the layout of
:func:`run_paths`.

A plain module, not a package: pytest's default ("prepend") import mode puts
``tests/`` on ``sys.path`` for the test files in it, and a test file executed as a
script has its own folder as ``sys.path[0]``; so ``import trainer_helpers`` works in
both.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, NoReturn

import pytest
import torch

from vocabseg.engine import Preempted, TrainConfig, train

__all__ = [
    "run_paths",
    "one_thread",
    "read_metrics",
    "assert_bitwise_equal",
    "assert_ddp_matches",
    "start_run",
    "wait_for",
    "free_port",
    "ddp_env",
    "run_ddp",
    "train_and_exit",
]


def run_paths(folder: Path) -> dict[str, Path]:
    """The ``out``, ``state_dir`` and ``metrics_log`` arguments of ``train`` for a run in ``folder``."""
    return {
        "out": folder / "model.pt",
        "state_dir": folder / "state",
        "metrics_log": folder / "metrics.jsonl",
    }


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One torch thread inside the block, as in the subprocesses: runs are bitwise comparable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def read_metrics(folder: Path) -> list[dict]:
    """The lines of the run's ``metrics.jsonl``."""
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_bitwise_equal(mine: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Same keys and every tensor exactly equal (``torch.equal``)."""
    assert mine.keys() == ref.keys()
    differing = [k for k in ref if not torch.equal(mine[k], ref[k])]
    assert not differing, f"{len(differing)} tensors differ, e.g. {differing[:3]}"


def assert_ddp_matches(folder: Path, reference: Path, tol: float, log_iters: list[int]) -> None:
    """The run in ``folder`` (several processes) ended where the one-process run in
    ``reference`` did, up to float rounding.

    Every tensor of the exported ``"model"`` state satisfies ``|a - b| <= tol * (1 + |b|)``
    (the largest difference is printed), and the metrics logs have lines at
    ``log_iters`` whose values (not the timing) agree to ``rel=1e-5, abs=1e-6``.
    """
    mine = torch.load(folder / "model.pt", weights_only=True)["model"]
    ref = torch.load(reference / "model.pt", weights_only=True)["model"]
    assert mine.keys() == ref.keys()
    diff = max((mine[k].double() - ref[k].double()).abs().max().item() for k in ref if ref[k].numel())
    print(f"max abs weight difference DDP vs one process: {diff:.3g}")
    for key in ref:
        torch.testing.assert_close(mine[key], ref[key], atol=tol, rtol=tol, msg=lambda m: f"{key}: {m}")
    lines = read_metrics(folder)
    assert [r["iter"] for r in lines] == log_iters
    for a, b in zip(lines, read_metrics(reference)):
        assert a.keys() == b.keys()
        for key in a:
            if key != "sec_per_iter":
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def start_run(script: Path, folder: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """``python script --dir folder *args`` in the background, text pipes, ``env`` added to ours."""
    return subprocess.Popen(
        [sys.executable, str(script), "--dir", str(folder), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Poll until ``path`` exists; fail the test if ``proc`` exits first or ``timeout`` s pass."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path} did not appear")
        time.sleep(0.01)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for ``MASTER_PORT``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The torchrun-style environment of process ``rank`` of a one-machine gloo group."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }


def run_ddp(script: Path, folder: Path, *args: str, world_size: int = 2, timeout: float = 180.0) -> None:
    """Run :func:`start_run` ``(script, folder, *args)`` as ``world_size`` processes of one
    gloo group and wait for them; fail the test unless every one exits 0."""
    port = free_port()
    procs = [start_run(script, folder, *args, env=ddp_env(r, world_size, port)) for r in range(world_size)]
    outputs = [p.communicate(timeout=timeout) for p in procs]
    assert [p.returncode for p in procs] == [0] * world_size, outputs


def train_and_exit(task, dataset, cfg: TrainConfig, folder: Path) -> NoReturn:
    """The end of a test script's ``main``: ``train`` into ``folder``, then exit 0.

    :class:`~vocabseg.engine.Preempted` propagates (the interpreter turns it into
    exit status 143). The process ends with ``os._exit`` to skip the slow interpreter
    teardown of torch (seconds on 2 busy cores).
    """
    from vocabseg.engine.distributed import cleanup

    try:
        train(task, dataset, cfg, **run_paths(folder))
    except Preempted:
        cleanup()
        raise
    cleanup()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
