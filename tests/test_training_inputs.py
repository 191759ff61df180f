"""`python -m vocabseg.train`: checkpoints bound to their inputs, seeded model construction.

A tiny FC-CLIP (random tiny CLIP) on four prepared 64x128 synthetic images, vocabulary
008, as the workflow's `train` rule calls it. Changing any input after a finished run
must start a new run from scratch with the old checkpoints moved aside (never resumed,
never deleted) and one log line naming the change; the same inputs resume (no steps).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vocabseg import train as train_cli
from vocabseg.approaches.study_model import ModelSpec, build_model
from vocabseg.cli import main as cli_main
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.data.vocab import write_vocab_split
from vocabseg.models.fcclip import save_fcclip_checkpoint

from trainer_helpers import assert_bitwise_equal, read_metrics

MODEL = json.dumps({"preset": "tiny"})
RECIPE = {
    "iters": 2, "batch_size": 2, "lr": 1e-4, "checkpoint_every": 1, "log_every": 1, "seed": 5, "num_points": 64,
    "augment": {"crop_size": [64, 128], "min_scale": 0.5, "max_scale": 1.5},
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """The files of one `train` job: city, split 008, its ground truth, text classifier, init weights."""
    root = tmp_path_factory.mktemp("train_inputs")
    generate_city(root / "raw", split_sizes={"train": 4}, height=64, width=128, seed=4)
    prepare_dataset(root / "raw", root / "prepared", ("train",))
    vocab = root / "vocab"
    write_vocab_split(
        root / "prepared" / "cityscapes_panoptic_train.json", root / "prepared" / "cityscapes_panoptic_train",
        "008", vocab / "split.json", vocab / "train_panoptic.json", vocab / "train_panoptic",
    )
    assert cli_main(["text-embeddings", "--model", MODEL, "--split", str(vocab / "split.json"),
                     "--out", str(root / "text.pt")]) == 0
    torch.manual_seed(0)
    save_fcclip_checkpoint(build_model(ModelSpec(preset="tiny"), None), root / "init.pt")
    return {
        "init": root / "init.pt", "text": root / "text.pt", "split": vocab / "split.json",
        "train_json": vocab / "train_panoptic.json", "train_folder": vocab / "train_panoptic",
        "image_root": root / "raw" / "leftImg8bit" / "train",
    }


def _argv(paths: dict[str, Path], run: Path, *, kind: str = "finetune", model: str = MODEL, **extra: str) -> list[str]:
    argv = ["--kind", kind, "--model", model, "--recipe", json.dumps(RECIPE), "--threads", "1",
            "--out", str(run / "model.pt"), "--state-dir", str(run / "ckpt"),
            "--metrics-log", str(run / "ckpt" / "metrics.jsonl")]
    for key in ("init", "text", "split", "train_json", "train_folder", "image_root"):
        if paths.get(key) is not None:
            argv += [f"--{key.replace('_', '-')}", str(paths[key])]
    for key, value in extra.items():
        argv += [f"--{key}", value]
    return argv


def _digests(paths: dict[str, Path], **kwargs) -> dict[str, str]:
    args = train_cli.build_parser().parse_args(_argv(paths, Path("run"), **kwargs))
    return train_cli.training_inputs(args, {k: RECIPE[k] for k in ("augment", "num_points")})


def _copy(inputs: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    """The inputs copied into tmp_path, so that a test may change them."""
    paths = {}
    (tmp_path / "in").mkdir()
    for key, path in inputs.items():
        paths[key] = tmp_path / "in" / key
        (shutil.copytree if path.is_dir() else shutil.copyfile)(path, paths[key])
    return paths


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))


def _rewrite_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


CHANGES = {
    "text classifier": lambda p: _flip_a_byte(p["text"]),
    "split": lambda p: _rewrite_json(p["split"], lambda d: d.update(note="edited")),
    "training ground truth JSON": lambda p: _rewrite_json(
        p["train_json"], lambda d: d["annotations"][0]["segments_info"].pop()
    ),
    "training ground truth PNGs": lambda p: _flip_a_byte(sorted(p["train_folder"].glob("*.png"))[1]),
    "starting weights": lambda p: _flip_a_byte(p["init"]),
    "training images": lambda p: shutil.copyfile(
        *sorted(p["image_root"].rglob("*.png"))[:1], p["image_root"] / "extra_leftImg8bit.png"
    ),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_each_input_file_changes_its_own_digest_only(inputs, tmp_path, name):
    paths = _copy(inputs, tmp_path)
    before = _digests(paths)
    CHANGES[name](paths)
    after = _digests(paths)
    assert [k for k in before if before[k] != after[k]] == [name]
    assert set(before) == set(after)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(kind="distill"), "task kind"),
        (dict(kind="combined", fusion="mean"), "task kind"),
        (dict(model=json.dumps({"preset": "tiny", "overrides": {"num_queries": 8}})), "model spec"),
    ],
)
def test_kind_fusion_and_model_spec_are_bound(inputs, change, name):
    before, after = _digests(inputs), _digests(inputs, **change)
    changed = [k for k in before if before[k] != after[k]]
    assert changed[0] == name and set(changed) <= {"task kind", "fusion", "model spec"}
    fusions = _digests(inputs, kind="combined", fusion="mean"), _digests(inputs, kind="combined", fusion="entropy")
    assert [k for k in before if fusions[0][k] != fusions[1][k]] == ["fusion"]


def test_a_changed_input_trains_from_scratch_and_keeps_the_old_checkpoints(inputs, tmp_path, capsys):
    paths, run = _copy(inputs, tmp_path), tmp_path / "run"
    assert train_cli.main(_argv(paths, run)) == 0
    first = {p.name: p.read_bytes() for p in (run / "ckpt").iterdir()}
    capsys.readouterr()

    _flip_a_byte(paths["text"])  # e.g. the classifier of another vocabulary
    assert train_cli.main(_argv(paths, run)) == 0
    err = capsys.readouterr().err
    changed = [line for line in err.splitlines() if "training inputs changed" in line]
    assert len(changed) == 1 and "(text classifier)" in changed[0], err
    assert "resumed from" not in err
    aside = run / "ckpt.stale-1"
    assert {name: (aside / name).read_bytes() for name in first} == first  # nothing lost
    assert "text classifier" in (aside / "why.txt").read_text()
    assert [r["iter"] for r in read_metrics(run / "ckpt")] == [1, 2]  # trained again
    weights = torch.load(run / "model.pt", weights_only=True)["model"]

    (run / "model.pt").unlink()  # as Snakemake does before rerunning a job
    assert train_cli.main(_argv(paths, run)) == 0  # the same inputs: resumed, no steps
    err = capsys.readouterr().err
    assert "resumed from" in err and "training inputs changed" not in err
    assert [r["iter"] for r in read_metrics(run / "ckpt")] == [1, 2]
    assert_bitwise_equal(torch.load(run / "model.pt", weights_only=True)["model"], weights)
    assert sorted(p.name for p in run.iterdir()) == ["ckpt", "ckpt.stale-1", "model.pt"]


def test_model_construction_does_not_depend_on_earlier_random_numbers(inputs, monkeypatch):
    """The base model (no --init) is built from the recipe's seed and the kind only."""
    import vocabseg.engine

    built = []
    monkeypatch.setattr(vocabseg.engine, "train", lambda task, *a, **k: built.append(task.model.state_dict()))
    paths = {**inputs, "init": None}
    for draws in (1, 1000):
        torch.rand(draws)
        assert train_cli.main(_argv(paths, Path("unused"))) == 0
    assert_bitwise_equal(built[0], built[1])
