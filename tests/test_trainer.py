"""The shared trainer on a tiny real segmentation task (a per-pixel classifier).

Runs that must be killed, preempted or distributed execute this file as a script
(``python tests/test_trainer.py --dir D ...``) in subprocesses (helpers shared with
``tests/test_fcclip_training.py`` in ``tests/trainer_helpers.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vocabseg.engine import TrainConfig, train
from vocabseg.engine import trainer as trainer_module
from vocabseg.engine.trainer import batch_plan, find_checkpoint, lr_factor, param_groups
from vocabseg.errors import InputError

from trainer_helpers import (
    assert_bitwise_equal,
    one_thread,
    read_metrics,
    run_ddp,
    run_paths,
    start_run,
    train_and_exit,
    wait_for,
)

K = 3  # classes: background, rectangle, disc
SIZE = 24
BASE = dict(iters=30, batch_size=4, lr=1e-2, checkpoint_every=5, log_every=5, seed=3)
SCRIPT = Path(__file__).resolve()


class PixelNet(nn.Module):
    """Per-pixel classifier: frozen 1x1 stem, conv + GroupNorm, class embeddings as the classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 3, 1)
        self.stem.requires_grad_(False)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.class_embed = nn.Embedding(K, 8)
        self.logit_bias = nn.Parameter(torch.zeros(K))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] 0..255 -> [B, K, H, W] logits."""
        x = torch.relu(self.norm(self.conv(self.stem(images / 127.5 - 1.0))))
        return torch.einsum("bchw,kc->bkhw", x, self.class_embed.weight) + self.logit_bias[:, None, None]


class ShapesDataset:
    """Six images: a rectangle and a disc on a background, colour (plus noise) encodes the class."""

    colors = torch.tensor([[90.0, 90.0, 90.0], [200.0, 60.0, 40.0], [40.0, 90.0, 210.0]])

    def __len__(self) -> int:
        return 6

    def get(self, index: int, seed: int):
        g = torch.Generator().manual_seed(1000 + index)
        sem = torch.zeros(SIZE, SIZE, dtype=torch.long)
        y0, x0 = torch.randint(0, SIZE - 10, (2,), generator=g).tolist()
        sem[y0 : y0 + 8, x0 : x0 + 10] = 1
        cy, cx = torch.randint(5, SIZE - 5, (2,), generator=g).tolist()
        ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
        sem[(ys - cy) ** 2 + (xs - cx) ** 2 <= 16] = 2
        image = self.colors[sem].permute(2, 0, 1) + 25.0 * torch.randn(3, SIZE, SIZE, generator=g)
        if torch.rand((), generator=torch.Generator().manual_seed(seed)) < 0.5:  # seeded augmentation
            image, sem = image.flip(-1), sem.flip(-1)
        labels = torch.arange(K)
        return image.clamp(0, 255), {
            "labels": labels,
            "masks": sem[None] == labels[:, None, None],
            "seed": seed,
        }


class ToyTask:
    """Two loss terms; one samples pixels with a generator seeded by the target's seed."""

    def __init__(self, sleep: float = 0.0):
        torch.manual_seed(0)
        self.model = PixelNet()
        self.sleep = sleep
        self.calls = 0

    def losses(self, model, images, targets):
        self.calls += 1
        if self.sleep:
            time.sleep(self.sleep)
        logits = model(images)
        sem = torch.stack([(t["masks"].long() * t["labels"][:, None, None]).sum(0) for t in targets])
        points = []
        for b, t in enumerate(targets):
            idx = torch.randint(0, SIZE * SIZE, (64,), generator=torch.Generator().manual_seed(t["seed"]))
            points.append(F.cross_entropy(logits[b].flatten(1).T[idx], sem[b].flatten()[idx]))
        return {"loss_points": torch.stack(points).mean(), "loss_full": 0.5 * F.cross_entropy(logits, sem)}

    def export(self, model, path):
        torch.save(model.state_dict(), path)


def run_inprocess(folder: Path, **overrides) -> ToyTask:
    task = ToyTask()
    with one_thread():
        train(task, ShapesDataset(), TrainConfig(**{**BASE, **overrides}), **run_paths(folder))
    return task


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted single-process run of BASE (30 iterations)."""
    folder = tmp_path_factory.mktemp("reference")
    run_inprocess(folder)
    return folder


@pytest.fixture(scope="module")
def short_reference(tmp_path_factory):
    """Uninterrupted run of 10 iterations."""
    folder = tmp_path_factory.mktemp("short")
    run_inprocess(folder, iters=10)
    return folder


# --------------------------------------------------------------------------------------


def test_param_groups_exclude_frozen_and_skip_decay_on_norm_and_embeddings():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.gn = nn.GroupNorm(2, 4)
            self.ln = nn.LayerNorm(4)
            self.query_embed = nn.Embedding(5, 4)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(4))
            self.level_embed = nn.Parameter(torch.zeros(3, 4))  # a plain parameter: decayed, as upstream
            self.frozen = nn.Linear(4, 4).requires_grad_(False)

    cfg = TrainConfig(iters=1, batch_size=1)
    decay = {name: g["weight_decay"] for g in param_groups(Net(), cfg) for name in g["param_names"]}
    assert decay == {
        "absolute_pos_embed": 0.0,
        "level_embed": 0.05,
        "conv.weight": 0.05,
        "conv.bias": 0.05,
        **{f"{m}.{p}": 0.0 for m in ("bn", "gn", "ln") for p in ("weight", "bias")},
        "query_embed.weight": 0.0,
    }


def test_loss_decreases_and_metrics_follow_the_poly_schedule(reference):
    lines = read_metrics(reference)
    assert [r["iter"] for r in lines] == [5, 10, 15, 20, 25, 30]
    assert set(lines[0]) == {"iter", "lr", "loss", "loss_full", "loss_points", "sec_per_iter"}
    for r in lines:
        assert r["loss"] == pytest.approx(r["loss_full"] + r["loss_points"], rel=1e-5)
        # the lr of the window's last iteration (0-based iter - 1)
        assert r["lr"] == pytest.approx(1e-2 * (1 - (r["iter"] - 1) / 30) ** 0.9)
    assert lines[-1]["loss"] < 0.5 * lines[0]["loss"]
    assert lr_factor(TrainConfig(iters=10, batch_size=1, schedule="step", steps=(4, 8)), 8) == pytest.approx(
        0.01
    )
    warm = TrainConfig(iters=10, batch_size=1, warmup_iters=4, warmup_factor=0.1)
    assert lr_factor(warm, 0) == pytest.approx(0.1) and lr_factor(warm, 2) == pytest.approx(0.55 * 0.8**0.9)


def test_checkpoints_hold_trainable_state_only_and_the_last_two_are_kept(reference):
    state = reference / "state"
    assert sorted(p.name for p in state.iterdir()) == ["ckpt_25.pt", "ckpt_30.pt"]
    ckpt = torch.load(state / "ckpt_30.pt", weights_only=True)
    assert ckpt["iteration"] == 30
    assert set(ckpt["model"]) == {
        "conv.weight",
        "conv.bias",
        "norm.weight",
        "norm.bias",
        "class_embed.weight",
        "logit_bias",
    }
    groups = {g["weight_decay"]: sorted(g["param_names"]) for g in ckpt["optimizer"]["param_groups"]}
    assert groups == {
        0.05: ["conv.bias", "conv.weight", "logit_bias"],
        0.0: ["class_embed.weight", "norm.bias", "norm.weight"],
    }
    final = _weights(reference / "model.pt")
    assert set(final) == set(ckpt["model"]) | {"stem.weight", "stem.bias"}
    initial = ToyTask().model.state_dict()
    assert torch.equal(final["stem.weight"], initial["stem.weight"])  # frozen: untouched
    assert not torch.equal(final["conv.weight"], initial["conv.weight"])


def test_gradients_are_clipped_by_the_full_model_norm(tmp_path, monkeypatch):
    calls = []
    real_clip = nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        params = list(params)
        calls.append((len(params), max_norm))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(trainer_module.nn.utils, "clip_grad_norm_", spy)
    initial = ToyTask().model.state_dict()
    run_inprocess(tmp_path / "clipped", iters=1, clip_grad=1e-9)
    assert calls == [(6, 1e-9)]  # one norm over all six trainable tensors
    run_inprocess(tmp_path / "free", iters=1, clip_grad=0.0)
    assert len(calls) == 1
    # AdamW's first step is ~lr * sign(g) unless |g| << eps = 1e-8, as after clipping to 1e-9.
    moved = {
        name: (_weights(tmp_path / name / "model.pt")["conv.weight"] - initial["conv.weight"]).abs().max()
        for name in ("clipped", "free")
    }
    assert moved["free"] == pytest.approx(1e-2, rel=0.01)
    assert moved["clipped"] < 0.1 * moved["free"]


def test_batch_plan_is_a_seeded_partition_of_epoch_permutations():
    cfg = TrainConfig(iters=6, batch_size=4, seed=5)
    plans = [batch_plan(6, cfg, i) for i in range(6)]  # 24 samples = 4 epochs of 6
    indices = [index for plan in plans for index, _ in plan]
    for epoch in range(4):
        assert sorted(indices[6 * epoch : 6 * epoch + 6]) == list(range(6))
    seeds = [seed for plan in plans for _, seed in plan]
    assert len(set(seeds)) == len(seeds)
    for i in range(6):
        assert batch_plan(6, cfg, i, world=2, rank=0) + batch_plan(6, cfg, i, world=2, rank=1) == plans[i]
    assert (
        batch_plan(6, cfg, 0) == plans[0]
        and batch_plan(6, TrainConfig(iters=6, batch_size=4, seed=6), 0) != plans[0]
    )
    with pytest.raises(InputError, match="batch_size"):
        batch_plan(6, cfg, 0, world=3, rank=0)


def test_checkpoint_write_is_atomic_and_a_failed_write_leaves_the_previous_one(
    tmp_path, monkeypatch, short_reference
):
    real_save = torch.save

    def crashing_save(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("iteration") == 10:
            assert not (tmp_path / "state" / "ckpt_10.pt").exists()  # nothing under the final name yet
            f.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("simulated crash while writing")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(trainer_module.torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated crash"):
        run_inprocess(tmp_path, iters=10)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["ckpt_5.pt"]  # no partial file left
    assert not (tmp_path / "model.pt").exists()
    task = run_inprocess(tmp_path, iters=10)
    assert task.calls == 5
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(short_reference / "model.pt"))


def test_resume_skips_a_truncated_newest_checkpoint(tmp_path, capsys, short_reference):
    shutil.copytree(short_reference / "state", tmp_path / "state")
    newest = tmp_path / "state" / "ckpt_10.pt"
    newest.write_bytes(newest.read_bytes()[:2000])
    assert find_checkpoint(tmp_path / "state")[0] == 5
    task = run_inprocess(tmp_path, iters=10)
    err = capsys.readouterr().err
    assert "skipping unreadable checkpoint" in err and "ckpt_10.pt" in err and "resumed from" in err
    assert task.calls == 5
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(short_reference / "model.pt"))
    # A finished run only re-exports.
    (tmp_path / "model.pt").unlink()
    assert run_inprocess(tmp_path, iters=10).calls == 0
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(short_reference / "model.pt"))


def _changed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "training inputs changed" in line]


def test_changed_recipe_or_inputs_set_the_checkpoints_aside_and_train_from_scratch(
    tmp_path, capsys, short_reference
):
    shutil.copytree(short_reference / "state", tmp_path / "state")
    shutil.copy(short_reference / "metrics.jsonl", tmp_path / "metrics.jsonl")  # a log outside the state dir
    before = {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir()}
    assert run_inprocess(tmp_path, iters=10, lr=2e-2).calls == 10  # from scratch, not resumed
    [line] = _changed_lines(capsys.readouterr().err)
    assert "(recipe key lr)" in line and "state.stale-1" in line and "training from scratch" in line
    aside = tmp_path / "state.stale-1"
    assert {p.name: p.read_bytes() for p in aside.iterdir() if p.name in before} == before  # nothing lost
    assert "recipe key lr" in (aside / "why.txt").read_text()
    assert (aside / "outside-metrics.jsonl").read_bytes() == (short_reference / "metrics.jsonl").read_bytes()
    assert [r["iter"] for r in read_metrics(tmp_path)] == [5, 10]  # the new run's log only
    assert run_inprocess(tmp_path, iters=10, lr=2e-2).calls == 0  # the same inputs resume as before

    def run(inputs):
        task = ToyTask()
        with one_thread():
            cfg = TrainConfig(**{**BASE, "iters": 10, "lr": 2e-2})
            train(task, ShapesDataset(), cfg, **run_paths(tmp_path), inputs=inputs)
        return task.calls

    assert run({"text classifier": "aaa", "split": "s"}) == 10
    assert "(text classifier, split)" in _changed_lines(capsys.readouterr().err)[0]
    assert run({"text classifier": "bbb", "split": "s"}) == 10
    [line] = _changed_lines(capsys.readouterr().err)
    assert "(text classifier)" in line and "state.stale-3" in line
    assert run({"text classifier": "bbb", "split": "s"}) == 0
    assert not _changed_lines(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("state")) == [
        "state", "state.stale-1", "state.stale-2", "state.stale-3"
    ]


def test_checkpoint_changes_name_recipe_keys_and_inputs_in_order():
    fingerprint = json.dumps({"lr": 0.1, "seed": 0})
    state = {"config": json.dumps({"lr": 0.2, "seed": 0}), "inputs": json.dumps({"b": "1", "a": "1", "gone": "x"})}
    changes = trainer_module.checkpoint_changes(state, fingerprint, {"b": "2", "a": "1", "new": "y"})
    assert changes == ["recipe key lr", "b", "new", "gone"]
    assert trainer_module.checkpoint_changes({**state, "config": fingerprint}, fingerprint, {"b": "1", "a": "1", "gone": "x"}) == []
    older = {"config": fingerprint}  # written before inputs were bound
    assert trainer_module.checkpoint_changes(older, fingerprint, {}) == []
    assert trainer_module.checkpoint_changes(older, fingerprint, {"a": "1"}) == [
        "inputs (the checkpoint predates input binding)"
    ]


def test_model_construction_is_seeded_whatever_was_drawn_before():
    def build(draws):
        torch.rand(draws)
        with trainer_module.seeded_construction(4, "toy", "finetune"):
            net = PixelNet()
        return net.state_dict(), torch.rand(1)

    torch.manual_seed(11)
    a, after_a = build(3)
    torch.manual_seed(11)
    b, after_b = build(1000)
    assert_bitwise_equal(a, b)
    torch.manual_seed(11)
    torch.rand(1000)
    assert torch.equal(after_b, torch.rand(1))  # the global generator went on as if untouched
    with trainer_module.seeded_construction(4, "toy", "distill"):
        other = PixelNet().state_dict()
    assert not torch.equal(other["conv.weight"], a["conv.weight"])  # the job's identity counts


def test_another_config_or_bad_setup_is_refused(tmp_path, short_reference):
    shutil.copytree(short_reference / "state", tmp_path / "state")
    with pytest.raises(InputError, match="must differ"):
        train(
            ToyTask(),
            ShapesDataset(),
            TrainConfig(**BASE),
            out=tmp_path / "x",
            state_dir=tmp_path / "x",
            metrics_log=tmp_path / "m.jsonl",
        )
    with pytest.raises(InputError, match="amp"):
        run_inprocess(tmp_path / "amp", amp="on")
    with pytest.raises(InputError, match="bogus"):
        TrainConfig.from_dict({"iters": 1, "batch_size": 1, "bogus": 1})
    with pytest.raises(InputError, match="schedule"):
        TrainConfig.from_dict({"iters": 1, "batch_size": 1, "schedule": "cosine"})
    assert TrainConfig.from_dict({"iters": 1, "batch_size": 1, "steps": [1]}).steps == (1,)


def test_loader_workers_give_the_same_weights(tmp_path, short_reference):
    run_inprocess(tmp_path, iters=10, num_workers=2)
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(short_reference / "model.pt"))


def test_sigkill_then_resume_gives_bitwise_identical_weights(tmp_path, reference):
    proc = start_run(SCRIPT, tmp_path, "--sleep", "0.08")
    wait_for(tmp_path / "state" / "ckpt_5.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "model.pt").exists()
    resumed_at = find_checkpoint(tmp_path / "state")[0]
    assert resumed_at < 30
    before = read_metrics(tmp_path)
    task = run_inprocess(tmp_path)
    assert task.calls == 30 - resumed_at
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(reference / "model.pt"))
    after = read_metrics(tmp_path)
    assert [r["iter"] for r in after] == [5, 10, 15, 20, 25, 30]  # appended, each iteration once
    assert after[: resumed_at // 5] == [r for r in before if r["iter"] <= resumed_at]
    for mine, ref in zip(after, read_metrics(reference)):
        assert mine["loss"] == ref["loss"]


def test_sigterm_checkpoints_exits_143_and_resumes_identically(tmp_path, reference):
    proc = start_run(SCRIPT, tmp_path, "--sleep", "0.08")
    wait_for(tmp_path / "state" / "ckpt_5.pt", proc)
    time.sleep(0.12)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "preempted at iteration" in err
    stopped_at = int(err.split("preempted at iteration ")[1].split(";")[0])
    assert 5 <= stopped_at < 30
    assert find_checkpoint(tmp_path / "state")[0] == stopped_at
    assert not (tmp_path / "model.pt").exists()
    task = run_inprocess(tmp_path)
    assert task.calls == 30 - stopped_at
    assert_bitwise_equal(_weights(tmp_path / "model.pt"), _weights(reference / "model.pt"))
    assert [r["iter"] for r in read_metrics(tmp_path)] == [5, 10, 15, 20, 25, 30]


def test_two_process_ddp_matches_one_process(tmp_path, reference):
    run_ddp(SCRIPT, tmp_path, timeout=120)
    mine, ref = _weights(tmp_path / "model.pt"), _weights(reference / "model.pt")
    assert mine.keys() == ref.keys()
    for key in ref:
        torch.testing.assert_close(mine[key], ref[key], atol=1e-6, rtol=0)
    lines = read_metrics(tmp_path)
    assert [r["iter"] for r in lines] == [5, 10, 15, 20, 25, 30]
    for a, b in zip(lines, read_metrics(reference)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def _bn_batch() -> torch.Tensor:
    """[4, 3, 5, 6] input whose two halves have different statistics (one per process)."""
    x = torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    x[2:] = 3.0 * x[2:] + 1.5
    return x.float()


def _bn_net() -> nn.Module:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    return net


def _bn_step(net: nn.Module, x: torch.Tensor, rows: slice = slice(None)) -> dict[str, torch.Tensor]:
    """Forward (training mode) of ``x`` (the batch's ``rows``), backward of a fixed linear
    loss; returns output, gradients and buffers."""
    x = x.clone().requires_grad_(True)
    out = net(x)
    weights = torch.linspace(-1.0, 2.0, 4 * 2 * 5 * 6).view(4, 2, 5, 6)[rows]
    (out * weights).sum().backward()
    state = {f"grad.{k}": p.grad for k, p in net.named_parameters()}
    state.update({k: v.clone() for k, v in net.state_dict().items()})
    return {"out": out.detach(), "x_grad": x.grad, **state}


def _sync_bn_worker(rank: int, world: int, store: str, folder: str) -> None:
    from vocabseg.engine.distributed import sync_batchnorm

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        net = sync_batchnorm(_bn_net())
        assert type(net[1]) is not nn.BatchNorm2d and list(net.state_dict()) == list(_bn_net().state_dict())
        rows = slice(rank * 4 // world, (rank + 1) * 4 // world)
        torch.save(_bn_step(net, _bn_batch()[rows], rows), Path(folder) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_sync_batchnorm_on_two_gloo_processes_equals_batchnorm_on_the_whole_batch(tmp_path):
    """PyTorch's SyncBatchNorm refuses CPU tensors; the Gloo variant must give BatchNorm's
    output, input and parameter gradients and running statistics of the global batch
    (gradients of the parameters summed over processes: DDP averages those of a loss
    that each process computes on its share)."""
    torch.multiprocessing.spawn(_sync_bn_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    whole = _bn_step(_bn_net(), _bn_batch())
    torch.testing.assert_close(torch.cat([r["out"] for r in ranks]), whole["out"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.cat([r["x_grad"] for r in ranks]), whole["x_grad"], atol=1e-6, rtol=1e-5)
    for key in whole:
        if key.startswith("grad."):
            torch.testing.assert_close(ranks[0][key] + ranks[1][key], whole[key], atol=1e-5, rtol=1e-5, msg=key)
        elif key not in ("out", "x_grad"):
            for r in ranks:
                torch.testing.assert_close(r[key], whole[key], atol=1e-6, rtol=1e-5, msg=key)


# -- optional task hooks, Adam, one-cycle ----------------------------------------------


class StatefulToyTask(ToyTask):
    """ToyTask with extra state: per-class pixel sums of the logits over each epoch,
    finalised by ``end_epoch`` into means that feed a third loss term."""

    def __init__(self, epoch_length: int | None = None, crash_at: int | None = None):
        super().__init__()
        if epoch_length is not None:
            self.epoch_length = epoch_length
        self.crash_at = crash_at
        self.sums = torch.zeros(K, K, dtype=torch.float64)
        self.means = torch.zeros(K, K)
        self.ends: list[int] = []

    def losses(self, model, images, targets):
        if self.crash_at is not None and self.calls + 1 == self.crash_at:
            raise RuntimeError("simulated crash")
        terms = super().losses(model, images, targets)
        logits = model(images)
        sem = torch.stack([(t["masks"].long() * t["labels"][:, None, None]).sum(0) for t in targets])
        self.sums.index_add_(0, sem.flatten(), logits.detach().permute(0, 2, 3, 1).reshape(-1, K).double())
        centre = self.means[sem].permute(0, 3, 1, 2)  # previous epoch's means
        terms["loss_centre"] = 0.01 * (logits - centre).pow(2).mean()
        return terms

    def end_epoch(self, iteration):
        self.ends.append(iteration)
        self.means = (self.sums / (self.sums.abs().sum(1, keepdim=True) + 1)).float()
        self.sums.zero_()

    def state_dict(self):
        return {"sums": self.sums.clone(), "means": self.means.clone(), "ends": torch.tensor(self.ends)}

    def load_state_dict(self, state):
        self.sums, self.means = state["sums"].clone(), state["means"].clone()
        self.ends = state["ends"].tolist()


def _run_stateful(folder: Path, task: StatefulToyTask, **overrides) -> StatefulToyTask:
    with one_thread():
        train(task, ShapesDataset(), TrainConfig(**{**BASE, "iters": 20, **overrides}), **run_paths(folder))
    return task


def test_epoch_hook_fires_at_epoch_ends_and_task_state_survives_a_crash(tmp_path):
    ref = _run_stateful(tmp_path / "ref", StatefulToyTask())
    assert ref.ends == list(range(2, 21, 2))  # 6 samples, batch 4: ceil(6 / 4) = 2 iterations per epoch
    ckpt = torch.load(tmp_path / "ref" / "state" / "ckpt_20.pt", weights_only=True)
    assert torch.equal(ckpt["task"]["means"], ref.means) and ckpt["task"]["ends"].tolist() == ref.ends
    assert _run_stateful(tmp_path / "len7", StatefulToyTask(epoch_length=7)).ends == [7, 14, 20]  # + the last

    with pytest.raises(RuntimeError, match="simulated crash"):  # dies in iteration 13, checkpoint of 10 on disk
        _run_stateful(tmp_path / "crash", StatefulToyTask(crash_at=13))
    assert find_checkpoint(tmp_path / "crash" / "state")[0] == 10
    resumed = _run_stateful(tmp_path / "crash", StatefulToyTask())
    assert resumed.calls == 10 and resumed.ends == ref.ends  # the restored list went on
    assert torch.equal(resumed.sums, ref.sums) and torch.equal(resumed.means, ref.means)
    assert_bitwise_equal(_weights(tmp_path / "crash" / "model.pt"), _weights(tmp_path / "ref" / "model.pt"))
    assert [r["loss"] for r in read_metrics(tmp_path / "crash")] == [r["loss"] for r in read_metrics(tmp_path / "ref")]

    # a stateless task cannot resume a stateful run's checkpoint, nor the reverse
    with pytest.raises(InputError, match="does not fit.*task state present"):
        run_inprocess(tmp_path / "crash", iters=20)
    shutil.copytree(tmp_path / "ref" / "state", tmp_path / "plain" / "state")
    (tmp_path / "plain" / "state" / "ckpt_20.pt").unlink()
    stateless_ckpt = torch.load(tmp_path / "ref" / "state" / "ckpt_15.pt", weights_only=True)
    del stateless_ckpt["task"]
    torch.save(stateless_ckpt, tmp_path / "plain" / "state" / "ckpt_15.pt")
    with pytest.raises(InputError, match="task state missing"):
        _run_stateful(tmp_path / "plain", StatefulToyTask())


@pytest.mark.parametrize("iters, pct", [(20, 0.1), (37, 0.3), (10, 0.1), (5, 0.1), (200, 0.25)])
def test_onecycle_factor_matches_torch_onecycle_lr(iters, pct):
    cfg = TrainConfig(iters=iters, batch_size=1, lr=0.004, schedule="onecycle", onecycle_pct_start=pct)
    if pct * iters == 1:  # a one-step warm-up: torch divides by zero (see the next test)
        with pytest.raises(ZeroDivisionError):
            torch.optim.lr_scheduler.OneCycleLR(
                torch.optim.Adam([nn.Parameter(torch.zeros(1))]), max_lr=1.0, total_steps=iters, pct_start=pct
            )
        return
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([param], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=iters, pct_start=pct, anneal_strategy="cos",
        div_factor=25.0, final_div_factor=1e4, three_phase=False,
    )
    expected = []
    for i in range(iters):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        if i < iters - 1:
            sched.step()
    mine = [cfg.lr * lr_factor(cfg, i) for i in range(iters)]
    assert mine == pytest.approx(expected, rel=1e-9, abs=1e-15)
    assert mine[0] == pytest.approx(cfg.lr / 25) or pct * iters < 1
    assert mine[-1] == pytest.approx(cfg.lr / 25 / 1e4)


def test_onecycle_with_a_one_step_warmup_and_adam_optimizer(tmp_path):
    cfg = TrainConfig(iters=10, batch_size=1, schedule="onecycle")  # torch divides by zero here
    assert lr_factor(cfg, 0) == 1.0 and lr_factor(cfg, 9) == pytest.approx(1 / 25 / 1e4)
    adam = _run_stateful(tmp_path / "adam", StatefulToyTask(), iters=4, optimizer="adam", weight_decay=0.1,
                         schedule="onecycle")
    ckpt = torch.load(tmp_path / "adam" / "state" / "ckpt_4.pt", weights_only=True)
    assert "decoupled_weight_decay" not in ckpt["optimizer"]["param_groups"][0] or not any(
        g["decoupled_weight_decay"] for g in ckpt["optimizer"]["param_groups"]
    )
    assert {g["weight_decay"] for g in ckpt["optimizer"]["param_groups"]} == {0.1, 0.0}
    assert adam.ends == [2, 4]
    # checkpoints written before the new fields existed keep their fingerprint
    assert "optimizer" not in json.loads(trainer_module._fingerprint(TrainConfig(iters=1, batch_size=1), False))
    assert "optimizer" in json.loads(trainer_module._fingerprint(TrainConfig(iters=1, batch_size=1, optimizer="adam"), False))
    with pytest.raises(InputError, match="optimizer"):
        TrainConfig.from_dict({"iters": 1, "batch_size": 1, "optimizer": "sgd"})


def _main() -> None:
    parser = argparse.ArgumentParser(description="train the toy task (used by the tests above)")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_and_exit(ToyTask(args.sleep), ShapesDataset(), TrainConfig(**BASE), args.dir)


if __name__ == "__main__":
    _main()
