"""A study's numbers are a function of its config and seed: two runs give the same files.

The smallest study that builds every kind of FC-CLIP model from scratch: the synthetic
world's tiny CLIP and base model, one fine-tuned approach, its prediction and metrics.
It runs twice in one working directory (the synthetic cities are shared) under two
study names, the second with two threads in its training job. Measured on CPU:

* the name changes nothing: the CLIP and base weights (1 thread in both runs) are
  bitwise equal;
* the thread count changes the rounding of multi-threaded kernels, so the fine-tuned
  weights differ in the last bits, but not its metrics: the metrics JSON files are
  bitwise equal except for the fields that name the run (:data:`RUN_SPECIFIC`).
"""

import json

import pytest
import torch

from test_workflow import TINY_FCCLIP, snakemake, write_config
from trainer_helpers import assert_bitwise_equal

pytestmark = pytest.mark.workflow

#: Metrics fields that legitimately differ between two runs of one study (keys in the JSON).
#: The metrics hold no wall times (those are in benchmarks/<study>/).
RUN_SPECIFIC = [("run", "study")]

STUDY = {
    **{k: v for k, v in TINY_FCCLIP.items() if k != "approaches"},
    "seed": 3,
    "vocabularies": ["000", "008"],
    "approaches": {"upperbound": {"kind": "finetune", "vocab": "000", "iters": 3}},
}


def _run(workdir, study, *options):
    config = write_config(workdir / f"{study}.yaml", {**STUDY, "study": study})
    target = f"results/{study}/metrics/upperbound.json"
    res = snakemake(workdir, target, "--cores", "2", *options, "--configfile", str(config))
    assert res.returncode == 0, res.stderr[-6000:]
    data = json.loads((workdir / target).read_text())
    for *parents, key in RUN_SPECIFIC:
        node = data
        for parent in parents:
            node = node[parent]
        assert node.pop(key) == study
    return json.dumps(data, sort_keys=True)


def _weights(workdir, study, model):
    return torch.load(workdir / f"results/{study}/models/{model}/model.pt", weights_only=True)["model"]


def test_two_runs_differing_in_name_and_threads_give_identical_metrics(tmp_path):
    a = _run(tmp_path, "repro_a")
    b = _run(tmp_path, "repro_b", "--set-threads", "train=2")
    assert a == b
    clip = [torch.load(tmp_path / f"results/{s}/pretrain/clip.pt", weights_only=True) for s in ("repro_a", "repro_b")]
    assert_bitwise_equal(*clip)
    assert_bitwise_equal(_weights(tmp_path, "repro_a", "base"), _weights(tmp_path, "repro_b", "base"))
    tuned = _weights(tmp_path, "repro_a", "upperbound"), _weights(tmp_path, "repro_b", "upperbound")
    assert all(torch.allclose(tuned[0][k], tuned[1][k], rtol=0, atol=1e-6) for k in tuned[0])
