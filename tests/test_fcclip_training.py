"""The trainer's guarantees on the real model: tiny FC-CLIP fine-tuned on a synthetic city.

``tests/test_trainer.py`` proves kill-and-resume, preemption and DDP on a toy net; here
the same run is the production one: :class:`~vocabseg.approaches.finetune.FinetuneTask`
(tiny FC-CLIP with a random tiny CLIP, the set criterion with its Hungarian matcher and
importance-sampled points) on :class:`~vocabseg.data.panoptic_dataset.PanopticTrainDataset`
with the Cityscapes augmentation, 64x128 crops of four prepared synthetic images.

* A run killed with SIGKILL, or preempted with SIGTERM (exit 143), then resumed ends
  with weights bitwise equal to an uninterrupted run.
* Two gloo processes with a global batch of 2 end within float rounding of one process
  with the batch of 2, for every FC-CLIP training task: fine-tuning, knowledge
  distillation (:class:`~vocabseg.approaches.distill.DistillTask`) and the combined
  two-model approach (:class:`~vocabseg.approaches.combined.CombinedTask`).

Runs that must be killed or distributed execute this file as a script
(``python tests/test_fcclip_training.py --dir D --data C ...``) in subprocesses, each
with one torch thread, as the in-process runs (helpers shared with
``tests/test_trainer.py`` in ``tests/trainer_helpers.py``).
"""

from __future__ import annotations

import argparse
import copy
import signal
import time
from pathlib import Path

import pytest
import torch

from vocabseg.approaches.study_model import (
    ModelSpec,
    build_model,
    class_names,
    text_classifier_for,
    vocab_ids,
)
from vocabseg.approaches.combined import CombinedFCCLIP, CombinedTask
from vocabseg.approaches.distill import DistillTask
from vocabseg.approaches.finetune import FinetuneTask
from vocabseg.data.panoptic_dataset import PanopticTrainDataset
from vocabseg.data.transforms import AugmentConfig, TrainAugment
from vocabseg.engine import TrainConfig, train
from vocabseg.engine.trainer import find_checkpoint
from vocabseg.models.clip_tiny import TINY_CLIP_NAME
from vocabseg.models.fcclip import TextClassifier

from trainer_helpers import (
    assert_bitwise_equal,
    assert_ddp_matches,
    one_thread,
    read_metrics,
    run_ddp,
    run_paths,
    start_run,
    train_and_exit,
    wait_for,
)

SCRIPT = Path(__file__).resolve()
CROP = (64, 128)
# The tiny preset's 50 queries: most stay unmatched, so the class loss's weight sums differ
# between DDP shards, which the criterion normalises globally (DDP == one process).
SPEC = ModelSpec(preset="tiny")
NUM_POINTS = 64
CFG = dict(iters=8, batch_size=2, lr=1e-4, checkpoint_every=2, log_every=2, seed=7)
LOG_ITERS = [2, 4, 6, 8]
# 2-process DDP vs 1 process: |a - b| <= DDP_TOL * (1 + |b|) per weight. Observed: at
# most 1.2e-7 (one float32 ulp of a GroupNorm weight near 1.0; |weights| <= 4). The two
# systematic errors this guards against move weights by ~4e-4 in this run (training
# moves them by <= 5e-4): per-process instead of all-reduced num_masks (4.3e-4), and
# unequal class-loss weight sums per shard, as with 32 queries (3.9e-4).
DDP_TOL = 1e-6
# Distillation and the combined model run half as long (one reference run each).
SHORT_CFG = {**CFG, "iters": 4}
# Classifier indices the distillation treats as out-classes: the teacher (another random
# tiny FC-CLIP) assigns about half of the queries to one of them, in unequal numbers
# per image, so the KD terms' global |S| differs from each shard's.
OUT_INDICES = list(range(9, 19))


class SlowTask(FinetuneTask):
    """FinetuneTask that sleeps before each batch, so a signal can land mid-run."""

    def __init__(self, *args, sleep: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.sleep = sleep
        self.calls = 0

    def losses(self, model, images, targets):
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        return super().losses(model, images, targets)


def make_task(sleep: float = 0.0, kind: str = "finetune"):
    """Random tiny FC-CLIP (seed 0) with the text classifier of its own CLIP, all 19 classes,
    in the task of ``kind``: ``"finetune"`` (a :class:`SlowTask`), ``"distill"`` (teacher:
    another random tiny FC-CLIP, seed 1) or ``"combined"`` (M1 = the model, M2 its twin)."""
    torch.manual_seed(0)
    model = build_model(SPEC, None)
    ids = vocab_ids(None)
    embeddings, num_synonyms = text_classifier_for(model.backbone, ids)
    text = TextClassifier(embeddings, num_synonyms, class_names(ids), TINY_CLIP_NAME)
    if kind == "distill":
        torch.manual_seed(1)
        teacher = build_model(SPEC, None)
        teacher.backbone = copy.deepcopy(model.backbone)
        return DistillTask(model, teacher, text, OUT_INDICES, num_points=NUM_POINTS)
    if kind == "combined":
        return CombinedTask(CombinedFCCLIP.from_base(model), text, num_points=NUM_POINTS, m2_in_only=False)
    return SlowTask(model, text, num_points=NUM_POINTS, sleep=sleep)


def make_dataset(city: Path) -> PanopticTrainDataset:
    prepared = city / "prepared"
    return PanopticTrainDataset(
        prepared / "cityscapes_panoptic_train.json",
        prepared / "cityscapes_panoptic_train",
        city / "raw" / "leftImg8bit" / "train",
        vocab_ids(None),
        TrainAugment(AugmentConfig(crop_size=CROP, min_scale=0.5, max_scale=2.0)),
    )


def run_inprocess(folder: Path, city: Path, kind: str = "finetune"):
    with one_thread():
        task = make_task(kind=kind)
        train(task, make_dataset(city), TrainConfig(**config_of(kind)), **run_paths(folder))
    return task


def config_of(kind: str) -> dict:
    """The training settings of the runs of ``kind``."""
    return CFG if kind == "finetune" else SHORT_CFG


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    """Four 64x128 synthetic training images, prepared as COCO panoptic."""
    from vocabseg.data.prepare import prepare_dataset
    from vocabseg.data.synth import generate_city

    root = tmp_path_factory.mktemp("city")
    generate_city(root / "raw", split_sizes={"train": 4}, height=CROP[0], width=CROP[1], seed=4)
    prepare_dataset(root / "raw", root / "prepared", ("train",))
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, city) -> Path:
    """Uninterrupted single-process run of CFG."""
    folder = tmp_path_factory.mktemp("reference")
    task = run_inprocess(folder, city)
    assert task.calls == CFG["iters"]
    return folder


def _assert_same_losses(folder: Path, reference: Path, skip: tuple[int, ...] = ()) -> None:
    """One metrics line per log step; all but the ``skip`` ones bitwise equal to the reference's."""
    mine, ref = read_metrics(folder), read_metrics(reference)
    assert [r["iter"] for r in mine] == LOG_ITERS
    compared = 0
    for a, b in zip(mine, ref):
        a.pop("sec_per_iter"), b.pop("sec_per_iter")
        if a["iter"] not in skip:
            assert a == b
            compared += 1
    assert compared >= len(LOG_ITERS) - 1


# --------------------------------------------------------------------------------------


def test_reference_run_trains_the_head_only(reference, city):
    """Sanity of the run the other tests compare against (so equality is not vacuous)."""
    model = make_task().model
    final, initial = _weights(reference / "model.pt"), model.state_dict()
    assert final.keys() == initial.keys()
    moved = {k for k in final if not torch.equal(final[k], initial[k])}
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert moved == trainable  # every trainable tensor moved, the frozen CLIP did not
    # AdamW moves a weight by at most ~lr per step; the head moved by several steps' worth.
    step = max((final[k] - initial[k]).abs().max().item() for k in moved)
    assert 2 * CFG["lr"] < step <= 1.01 * CFG["iters"] * CFG["lr"]
    assert [r["iter"] for r in read_metrics(reference)] == LOG_ITERS


def test_sigkill_then_resume_gives_bitwise_identical_weights(tmp_path, city, reference):
    proc = start_run(SCRIPT, tmp_path, "--data", str(city), "--sleep", "0.3")
    wait_for(tmp_path / "state" / "ckpt_2.pt", proc, timeout=90.0)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model.pt").exists()
    resumed_at = find_checkpoint(tmp_path / "state")[0]
    assert 2 <= resumed_at < CFG["iters"]
    task = run_inprocess(tmp_path, city)
    assert task.calls == CFG["iters"] - resumed_at
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(reference / "model.pt"))
    _assert_same_losses(tmp_path, reference)


def test_sigterm_checkpoints_exits_143_and_resumes_identically(tmp_path, city, reference):
    proc = start_run(SCRIPT, tmp_path, "--data", str(city), "--sleep", "0.3")
    wait_for(tmp_path / "state" / "ckpt_2.pt", proc, timeout=90.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    stopped_at = int(err.split("preempted at iteration ")[1].split(";")[0])
    assert 2 <= stopped_at < CFG["iters"]
    assert find_checkpoint(tmp_path / "state")[0] == stopped_at
    assert not (tmp_path / "model.pt").exists()
    task = run_inprocess(tmp_path, city)
    assert task.calls == CFG["iters"] - stopped_at
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(reference / "model.pt"))
    # A metrics line averages the iterations since the previous line or the resume: the
    # first line after an off-grid stop covers fewer iterations than the reference's.
    _assert_same_losses(
        tmp_path, reference, skip=tuple(i for i in LOG_ITERS if i - CFG["log_every"] < stopped_at < i)
    )


@pytest.mark.parametrize("kind", ["finetune", "distill", "combined"])
def test_two_process_ddp_matches_one_process(tmp_path, city, reference, kind):
    """Global batch 2 on 2 gloo processes == batch 2 on one, up to float rounding.

    What makes it exact in real arithmetic: the trainer gives each sample the same seed
    whatever its process (augmentation, matcher and loss points are seeded per sample),
    every layer of FC-CLIP works per image (GroupNorm/LayerNorm, no BatchNorm), every
    loss divides its per-process sum by the global count over the world size (the
    criterion's masks and class weights, the distillation's |S|; see
    :func:`vocabseg.engine.distributed.global_normaliser`) and DDP averages the
    gradients.
    """
    if kind != "finetune":
        reference = tmp_path / "one"
        run_inprocess(reference, city, kind)
    folder = tmp_path / "two"
    run_ddp(SCRIPT, folder, "--data", str(city), "--kind", kind)
    assert_ddp_matches(folder, reference, DDP_TOL, [i for i in LOG_ITERS if i <= config_of(kind)["iters"]])


def _main() -> None:
    parser = argparse.ArgumentParser(description="fine-tune the tiny FC-CLIP (used by the tests above)")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the city fixture's folder")
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--kind", choices=("finetune", "distill", "combined"), default="finetune")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task = make_task(args.sleep, args.kind)
    train_and_exit(task, make_dataset(args.data), TrainConfig(**config_of(args.kind)), args.dir)


if __name__ == "__main__":
    _main()
