"""benchmarks/gpu_check.sh, the GPU check, run here on the CPU at tiny sizes.

The GPU machine runs it once with no chance to debug: every step's logic (CPU-vs-device
agreement, inference timing in fp32 and autocast, the one-rank process group, the
workflow's data chain, the launcher's fine-tuning killed by SIGTERM to its session and
resumed, ContMAV training and evaluation) must already work. ``--device cpu --small``
runs exactly that code with tiny presets and a few iterations (about a minute on a
quiet 2-core machine, one torch thread per process).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ["agreement", "inference", "nccl", "finetune", "contmav"]


def test_gpu_check_small_on_cpu_passes_every_step(tmp_path):
    wheels = tmp_path / "no-wheels"  # nothing to install: this Python has our dependencies
    wheels.mkdir()
    env = dict(os.environ, PYTHON=sys.executable, WHEELS=str(wheels))
    out = tmp_path / "report"
    proc = subprocess.run(
        [str(REPO / "benchmarks/gpu_check.sh"), str(out), "--device", "cpu", "--small", "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=400,
    )
    report = json.loads((out / "gpu_check.json").read_text())
    text = (out / "gpu_check.txt").read_text()
    failed = {name: step.get("error") for name, step in report["steps"].items() if not step.get("ok")}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-3000:])
    assert list(report["steps"]) == STEPS and report["ok"] and text.startswith("vocabseg GPU check: ALL PASSED")
    steps = report["steps"]
    assert steps["agreement"]["max_abs_diff"] == 0.0  # CPU against CPU
    assert set(steps["inference"]["rows"]) == {"tiny fp32", "tiny amp"}
    assert steps["inference"]["rows"]["tiny amp"]["autocast"] == "bfloat16"
    assert steps["nccl"]["backend"] == "gloo"
    finetune = steps["finetune"]
    assert finetune["run1_exit"] == 143 and finetune["amp"] is False
    assert finetune["resumed_line"].startswith("train: resumed from ")
    assert "-m vocabseg.engine.launch --log LOG --standalone" in finetune["launcher"]
    assert steps["contmav"]["eval_device_direct"] == "cpu" and steps["contmav"]["auroc_abs_diff"] < 1e-9
    for name in STEPS:
        assert f"] {name}  (" in text


def test_cuda_requested_without_a_gpu_is_one_clear_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/gpu_check.py"), "--out", str(tmp_path / "report")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "--device cuda: torch sees no CUDA device (use --device cpu for a CPU check)"
    )
