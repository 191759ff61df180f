"""ContMAV training and evaluation entry points on a tiny generated city.

Covers the semantic dataset (label spaces, augmentation determinism, bad input), the
class-weight file, the MAV accumulation through the shared trainer (epoch 0 without
the MAV losses, epoch 1 with the means of epoch 0), gradients of every variant, the
export file, a crash/resume of a run with MAV state, the CLI pipeline
weights -> train -> eval, and two gloo processes against one (synchronised BatchNorm,
every loss normalised over the global batch).

The distributed run executes this file as a script
(``python tests/test_contmav_training.py --dir D --data CITY_ROOT``) in subprocesses
(helpers shared with the other training tests in ``tests/trainer_helpers.py``).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vocabseg.openworld.evaluate import discover_classes_strided
from vocabseg.openworld.inference import (
    ClusterState,
    MavStats,
    contmav_scores,
    discover_classes,
)
from vocabseg.openworld.train import (
    ContMAVTask,
    ContMAVVariant,
    build_contmav_model,
    known_from_unknown,
    load_contmav_export,
    read_class_weights,
    region_embeddings,
    write_class_weights,
)
from vocabseg.cli import main as cli_main
from vocabseg.data.prepare import prepare_dataset
from vocabseg.openworld.dataset import UNKNOWN_CLASS, VOID, SemanticDataset, contmav_augment
from vocabseg.data.synth import generate_city
from vocabseg.data.transforms import color_jitter_hsv
from vocabseg.engine import TrainConfig, train
from vocabseg.errors import InputError

from trainer_helpers import assert_ddp_matches, one_thread, read_metrics, run_ddp, run_paths, train_and_exit

SIZE = (64, 128)
UNKNOWN = (16, 17, 18)
KNOWN = known_from_unknown(UNKNOWN)


SCRIPT = Path(__file__).resolve()


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contmav_city")
    generate_city(root / "raw", split_sizes={"train": 4, "val": 2}, height=SIZE[0], width=SIZE[1], seed=5)
    prepare_dataset(root / "raw", root / "prepared", ("train", "val"))
    return city_paths(root)


def city_paths(root: Path) -> dict[str, Path]:
    """The folders of the generated city under ``root``."""
    return {
        "root": root,
        "train_images": root / "raw" / "leftImg8bit" / "train",
        "train_labels": root / "prepared" / "gtFine" / "train",
        "val_images": root / "raw" / "leftImg8bit" / "val",
        "val_labels": root / "prepared" / "gtFine" / "val",
    }


def _batch(dataset: SemanticDataset, indices, seed: int = 0):
    samples = [dataset.get(i, seed + i) for i in indices]
    return torch.stack([s[0] for s in samples]), [s[1] for s in samples]


# ---------------------------------------------------------------------- dataset
def test_dataset_maps_unknown_classes_to_ignore_and_is_deterministic(city, tmp_path):
    known = [t for t in range(19) if t not in (0, 13)]  # road and car unknown: always present
    plain = SemanticDataset(city["train_images"], city["train_labels"], known)
    image, ids = plain.raw(0)
    assert image.shape == (3, *SIZE) and ids.dtype == torch.int64
    labels = plain.get(0, seed=1)[1]["labels"]
    for t in (0, 13):
        assert (ids == t).any() and (labels[ids == t] == UNKNOWN_CLASS).all()
    assert (labels[ids == VOID] == VOID).all()
    for k, t in enumerate(known):
        assert (labels[ids == t] == k).all()
    voided = SemanticDataset(city["train_images"], city["train_labels"], known, unknown_as="void")
    assert (voided.get(0, 1)[1]["labels"][ids == 13] == VOID).all()
    evaluation = plain.space.eval_labels(ids)
    assert (evaluation[ids == 0] == 17).all() and (evaluation[ids == 13] == 18).all()  # K + j

    aug = SemanticDataset(
        city["train_images"], city["train_labels"], known, augment=contmav_augment((48, 96), 0.5, 2.0)
    )
    a, b, c = aug.get(1, 7), aug.get(1, 7), aug.get(1, 8)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["labels"], b[1]["labels"]) and a[1]["seed"] == 7
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (3, 48, 96) and a[1]["labels"].shape == (48, 96)
    assert set(a[1]["labels"].unique().tolist()) <= set(range(17)) | {UNKNOWN_CLASS, VOID}
    # a crop larger than the rescaled image is padded with void (and black)
    small = SemanticDataset(
        city["train_images"], city["train_labels"], known, augment=contmav_augment((48, 96), 0.5, 0.5),
        hsv_jitter=False,
    )
    image, target = small.get(0, 3)
    assert (target["labels"][32:] == VOID).all() and (image[:, 32:] == 0).all()
    assert (target["labels"][:32, :64] != VOID).any()

    with pytest.raises(InputError, match=str(tmp_path / "nothing")):
        SemanticDataset(tmp_path / "nothing", city["train_labels"], known)
    (tmp_path / "empty" / "city").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        SemanticDataset(tmp_path / "empty", city["train_labels"], known)
    bad = tmp_path / "bad"
    (bad / "img" / "c").mkdir(parents=True)
    (bad / "lab" / "c").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(bad / "img" / "c" / "x.jpg")
    with pytest.raises(InputError, match="x_gtFine_labelTrainIds.png: missing"):
        SemanticDataset(bad / "img", bad / "lab", known)
    Image.fromarray(np.full((4, 4), 33, np.uint8)).save(bad / "lab" / "c" / "x_gtFine_labelTrainIds.png")
    with pytest.raises(InputError, match="value 33 is not a train id"):
        SemanticDataset(bad / "img", bad / "lab", known).raw(0)
    with pytest.raises(InputError, match="repeated"):
        SemanticDataset(city["train_images"], city["train_labels"], [1, 1])


def test_hsv_jitter_by_hand():
    grey = torch.full((3, 2, 2), 100.0)  # hue and saturation 0: only the value shift shows
    draws = torch.Generator().manual_seed(4)
    u = [torch.rand((), generator=draws, dtype=torch.float64).item() for _ in range(3)]
    out = color_jitter_hsv(grey, torch.Generator().manual_seed(4))
    torch.testing.assert_close(out, torch.full((3, 2, 2), 100.0 - 25.0 + 50.0 * u[2]))
    red = torch.zeros(3, 1, 1)
    red[0] = 200.0  # hue 0, saturation 1: scaling keeps it red (saturation clipped at 1)
    torch.testing.assert_close(color_jitter_hsv(red, torch.Generator().manual_seed(4))[1:], torch.zeros(2, 1, 1))


def test_class_weights_file_is_median_frequency_of_known_classes(city, tmp_path):
    out = tmp_path / "w.json"
    stats = write_class_weights(city["train_images"], city["train_labels"], KNOWN, out)
    assert json.loads(out.read_text())["weights"] == stats["weights"]
    counts, image_pixels = np.zeros(16), np.zeros(16)
    for path in sorted(city["train_labels"].glob("*/*_labelTrainIds.png")):
        ids = np.asarray(Image.open(path))
        for k, t in enumerate(KNOWN):
            n = (ids == t).sum()
            counts[k] += n
            image_pixels[k] += ids.size if n else 0
    present = counts > 0
    freq = counts[present] / image_pixels[present]
    expected = np.zeros(16)
    expected[present] = np.median(freq) / freq
    np.testing.assert_allclose(stats["weights"], expected, rtol=1e-6)
    assert stats["pixel_counts"] == counts.tolist() and stats["n_images"] == 4
    assert torch.allclose(read_class_weights(out, KNOWN), torch.tensor(expected, dtype=torch.float32))
    with pytest.raises(InputError, match="training uses"):
        read_class_weights(out, known_from_unknown([17, 18]))


# ---------------------------------------------------------------------- task
def test_region_embeddings_by_hand():
    features = torch.tensor([[[3.0, 0.0, 1.0, 1.0], [4.0, 2.0, 0.0, 1.0]]])[:, :, None, :]  # [1, 2, 1, 4]
    labels = torch.tensor([[[0, 0, VOID, 1]]])
    known, known_labels, unknown = region_embeddings(features, labels, 2, (1, 2), min_pixels=1)
    assert known_labels.tolist() == [0, 1]
    torch.testing.assert_close(known, torch.tensor([[0.3, 0.9], [0.5**0.5, 0.5**0.5]]))  # mean(0.6,0.8 / 0,1)
    torch.testing.assert_close(unknown, torch.tensor([[1.0, 0.0]]))
    known, _, unknown = region_embeddings(features, labels, 2, (1, 2), min_pixels=2)
    assert known.shape == (1, 2) and unknown.shape == (0, 2)


VARIANTS = {
    "contmav": ({}, {}),
    "trufor": ({"trufor": True}, {}),
    "focal": ({}, {"semantic": "focal"}),
    "focal_dice": ({}, {"semantic": "focal_dice"}),
    "infonce": ({}, {"extra": "infonce", "extra_min_pixels": 4}),
    "synco": ({}, {"extra": "synco", "extra_min_pixels": 4}),
}


def _primed_task(city, model_overrides, variant) -> tuple[ContMAVTask, torch.Tensor, list]:
    torch.manual_seed(0)
    model = build_contmav_model({"preset": "tiny", **model_overrides}, len(KNOWN), SIZE)
    task = ContMAVTask(model, torch.rand(len(KNOWN)) + 0.5, ContMAVVariant.from_dict(variant), KNOWN)
    dataset = SemanticDataset(city["train_images"], city["train_labels"], KNOWN, unknown_as="void")
    images, targets = _batch(dataset, [0, 1, 2])
    with torch.no_grad():
        task.losses(model, images, targets)
    task.end_epoch(1)  # MAVs of the first pass: every MAV loss is active now
    return task, images, targets


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_has_active_terms_whose_gradients_reach_the_model(city, name):
    model_overrides, variant = VARIANTS[name]
    task, images, targets = _primed_task(city, model_overrides, variant)
    model = task.model
    terms = task.losses(model, images, targets)
    semantic = {"ce": "loss_ce", "focal": "loss_focal", "focal_dice": "loss_focal"}[variant.get("semantic", "ce")]
    expected = {semantic, "loss_feat", "loss_cont", "loss_obj"}
    expected |= {"loss_dice"} if name == "focal_dice" else set()
    expected |= {"loss_extra"} if "extra" in variant else set()
    assert set(terms) == expected
    params = dict(model.named_parameters())
    for key, term in terms.items():
        assert term.item() > 0, key
        grads = torch.autograd.grad(term, list(params.values()), retain_graph=True, allow_unused=True)
        assert any(g is not None and g.abs().sum() > 0 for g in grads), key
    model.zero_grad()
    sum(terms.values()).backward()
    parts = ["encoder.", "decoder_semantic.", "decoder_contrastive.", "context.", "skips."]
    parts += ["trufor_head."] if model_overrides else []  # the default fusion has no parameters
    for part in parts:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in params.items() if n.startswith(part)), part
    if name == "synco":  # the synthetic hard negatives raise the InfoNCE term of the same batch
        plain, _, _ = _primed_task(city, {}, VARIANTS["infonce"][1])
        torch.manual_seed(1)
        with_synco = terms["loss_extra"].item()
        assert with_synco > plain.losses(plain.model, images, targets)["loss_extra"].item()


class RecordingTask(ContMAVTask):
    """Records, per iteration, the MAVs the losses use, the semantic logits and the labels."""

    def __init__(self, *args, crash_at: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.crash_at, self.calls, self.used, self.logits, self.labels = crash_at, 0, [], [], []
        self.model.register_forward_hook(lambda m, i, out: self.logits.append(out["semantic"].detach().clone()))

    def losses(self, model, images, targets):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("simulated crash")
        mavs = self.mavs
        self.used.append(None if mavs is None else (mavs.means.clone(), mavs.valid.clone()))
        self.labels.append(torch.stack([t["labels"] for t in targets]))
        return super().losses(model, images, targets)


def _run(city, folder: Path, crash_at: int | None = None, variant: dict | None = None, **cfg) -> RecordingTask:
    torch.manual_seed(0)
    model = build_contmav_model({"preset": "tiny"}, len(KNOWN), SIZE)
    task = RecordingTask(model, None, ContMAVVariant.from_dict(variant or {}), KNOWN, crash_at=crash_at)
    dataset = SemanticDataset(
        city["train_images"], city["train_labels"], KNOWN, augment=contmav_augment(SIZE, 1.0, 1.5)
    )
    settings = dict(iters=4, batch_size=2, optimizer="adam", lr=0.004, weight_decay=1e-4, schedule="onecycle",
                    clip_grad=0.0, log_every=1, checkpoint_every=1, seed=2)
    with one_thread():
        train(task, dataset, TrainConfig(**{**settings, **cfg}), **run_paths(folder))
    return task


def _tp_means(logits: list[torch.Tensor], labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    sums, counts = torch.zeros(16, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
    for f, y in zip(logits, labels):
        pred = f.argmax(1)
        for k in range(16):
            tp = (y == k) & (pred == k)
            counts[k] += tp.sum()
            sums[k] += f.permute(0, 2, 3, 1)[tp].double().sum(0)
    return sums / counts.clamp_min(1)[:, None], counts


def test_mavs_accumulate_over_an_epoch_and_feed_the_next_one(city, tmp_path):
    task = _run(city, tmp_path)  # 4 images, batch 2: iterations 1-2 are epoch 0, 3-4 epoch 1
    log = read_metrics(tmp_path)
    assert [r["iter"] for r in log] == [1, 2, 3, 4]
    assert [r["loss_feat"] for r in log[:2]] == [0.0, 0.0] and [r["loss_cont"] for r in log[:2]] == [0.0, 0.0]
    assert all(r["loss_feat"] > 0 and r["loss_cont"] > 0 and r["loss_obj"] > 0 for r in log[2:])
    assert task.used[:2] == [None, None]
    means0, counts0 = _tp_means(task.logits[:2], task.labels[:2])
    for used in task.used[2:]:  # epoch 1 uses epoch 0's true-positive means
        means, valid = used
        assert valid.tolist() == (counts0 > 0).tolist() and valid.any()
        torch.testing.assert_close(means[valid].double(), means0[valid], rtol=1e-5, atol=1e-5)

    export = load_contmav_export(tmp_path / "model.pt")  # the MAVs finalised after epoch 1
    means1, counts1 = _tp_means(task.logits[2:], task.labels[2:])
    fresh = counts1 > 0
    torch.testing.assert_close(export.stats.mavs[fresh].double(), means1[fresh], rtol=1e-5, atol=1e-5)
    assert export.stats.counts[fresh].tolist() == counts1[fresh].long().tolist()
    assert export.info["epochs"] == 2 and export.known_train_ids == tuple(KNOWN)

    # the file is plain tensors and containers, and the model round-trips
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    assert raw["format"] == "vocabseg.contmav" and raw["config"]["num_classes"] == 16
    own = task.model.state_dict()
    assert all(torch.equal(own[k].cpu(), v) for k, v in export.model.state_dict().items())
    task.model.eval()
    x = torch.rand(1, 3, *SIZE)
    with torch.no_grad():
        a, b = task.model(x), export.model(x)
    assert torch.equal(a["semantic"], b["semantic"]) and torch.equal(a["contrastive"], b["contrastive"])
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not a ContMAV model export"):
        load_contmav_export(tmp_path / "other.pt")


def test_a_crash_mid_epoch_resumes_with_the_same_mavs_and_weights(city, tmp_path):
    _run(city, tmp_path / "ref", iters=6)
    with pytest.raises(RuntimeError, match="simulated crash"):  # iteration 4 of epoch 1 (3-4): partial sums
        _run(city, tmp_path / "run", iters=6, crash_at=4)
    ckpt = torch.load(tmp_path / "run" / "state" / "ckpt_3.pt", weights_only=True)
    assert ckpt["task"]["mav.count"].sum() > 0 and ckpt["task"]["mav.epochs"] == 1
    with pytest.raises(InputError, match="does not fit.*another model configuration, variant"):
        _run(city, tmp_path / "run", iters=6, variant={"semantic": "focal"})
    resumed = _run(city, tmp_path / "run", iters=6)
    assert resumed.calls == 3
    ref, mine = (torch.load(p / "model.pt", weights_only=True) for p in (tmp_path / "ref", tmp_path / "run"))
    for key in ("mavs", "variances", "counts"):
        assert torch.equal(mine["mav_stats"][key], ref["mav_stats"][key]), key
    assert all(torch.equal(mine["model"][k], v) for k, v in ref["model"].items())


# ---------------------------------------------------------------------- evaluation
def test_strided_discovery_clusters_the_grid_and_assigns_every_unknown_pixel():
    features = torch.zeros(1, 2, 4, 4)
    features[0, :, :, 2:] = 5.0  # right half far from the left half
    features[0, 0, 1, 1] = 0.7  # off the grid, nearest to the left class but farther than eta
    stats = MavStats.from_tensors(torch.full((2, 2), 50.0), torch.ones(2, 2))
    scores = contmav_scores(features, torch.zeros_like(features), stats)  # far from every MAV, zero norm
    assert scores.unknown.all()
    exact, exact_state = discover_classes(features, scores, None)
    same, same_state = discover_classes_strided(features, scores, None, stride=1)
    assert torch.equal(same, exact) and torch.equal(same_state.centroids, exact_state.centroids)
    assert exact_state.n_classes == 3  # online, (0.7, 0) starts a class of its own
    labels, state = discover_classes_strided(features, scores, None, stride=2)
    assert state.n_classes == 2 and state.counts.tolist() == [2, 2]  # only the 4 grid pixels are clustered
    expected = torch.full((1, 4, 4), 2)
    expected[0, :, 2:] = 3
    assert torch.equal(labels, expected)  # K + class; (0.7, 0) joins its nearest class
    one = ClusterState(torch.zeros(1, 2, dtype=torch.float64), torch.ones(1, dtype=torch.int64))
    frozen, kept = discover_classes_strided(features, scores, one, stride=2, max_classes=1)
    assert kept is one and (frozen == 2).all()  # no new class, no update: everything joins class 0


# ---------------------------------------------------------------------- CLI
def test_cli_weights_train_eval_pipeline_writes_the_metric_keys(city, tmp_path, capsys):
    unknown = ["--unknown", "11", "13"]  # person and car: present in both validation images
    paths = ["--image-root", str(city["train_images"]), "--label-root", str(city["train_labels"])]
    assert cli_main(["contmav-weights", *paths, *unknown, "--out", str(tmp_path / "w.json")]) == 0
    recipe = {"epochs": 2, "batch_size": 2, "augment": {"crop_size": list(SIZE), "max_scale": 1.5}, "log_every": 1}
    train_args = [
        "contmav-train", *paths, *unknown, "--weights", str(tmp_path / "w.json"),
        "--model", json.dumps({"preset": "tiny", "trufor": True}), "--variant", json.dumps({"extra": "synco"}),
        "--recipe", json.dumps(recipe), "--out", str(tmp_path / "model.pt"),
        "--state-dir", str(tmp_path / "state"), "--metrics-log", str(tmp_path / "log.jsonl"), "--threads", "1",
    ]
    assert cli_main(train_args) == 0
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [1, 2, 3, 4] and "loss_extra" in log[0]
    out = tmp_path / "metrics.json"
    eval_args = [
        "contmav-eval", "--model", str(tmp_path / "model.pt"), "--image-root", str(city["val_images"]),
        "--label-root", str(city["val_labels"]), "--out", str(out), "--fact", "approach=contmav_synco",
    ]
    assert cli_main(eval_args) == 0
    printed = capsys.readouterr().out
    assert "AUROC" in printed
    metrics = json.loads(out.read_text())
    assert metrics["classes"]["unknown"] == ["person", "car"] and len(metrics["classes"]["known"]) == 17
    assert 0 <= metrics["known"]["miou"] <= 1
    for key in ("aupr", "auroc", "fpr95"):
        assert 0 <= metrics["anomaly"][key] <= 1, key
    assert metrics["open_world"]["n_discovered"] >= 0 and "miou" in metrics["open_world"]
    run = metrics["run"]
    assert run["approach"] == "contmav_synco" and run["unknown_train_ids"] == [11, 13] and run["epochs"] == 2
    assert run["variant"]["extra"] == "synco"
    # class similarity: the paper's pairs (train, motorcycle) are known classes here; --similar gives others
    assert metrics["class_similarity"] is None
    assert cli_main([*eval_args, "--out", str(tmp_path / "similar.json"), "--similar", "11:12", "--device", "cpu"]) == 0
    similar = json.loads((tmp_path / "similar.json").read_text())["class_similarity"]["per_class"]
    assert list(similar) == ["person"] and similar["person"]["target"] == "rider"
    # the default: streamed score histograms on the job's device (the CPU here)
    from vocabseg.openworld.metrics import SCORE_BINS

    binned = metrics["anomaly"]
    assert (binned["method"], binned["bins"], run["device"]) == ("binned", SCORE_BINS, "cpu")
    assert "|binned - exact| <=" in printed
    # every score kept: the exact curves lie within the bound the binned run stated
    images_out = tmp_path / "exact.images.npz"
    assert cli_main([*eval_args, "--out", str(tmp_path / "exact.json"), "--exact-scores", "--device", "cpu",
                     "--images-out", str(images_out)]) == 0
    exact = json.loads((tmp_path / "exact.json").read_text())["anomaly"]
    assert exact["method"] == "exact" and exact["n_unknown"] == binned["n_unknown"] > 0
    for key in ("aupr", "auroc", "fpr95"):
        assert abs(binned[key] - exact[key]) <= binned["error_bound"][key] + 1e-12, key
    # its per-image counts keep every distinct score: the bootstrap's full sample is the exact value
    from vocabseg.evaluation.bootstrap import BootstrapSettings, bootstrap_rows
    from vocabseg.openworld.metrics import OpenWorldImageStats

    stats = OpenWorldImageStats.load(images_out)
    assert stats.score_keys.dtype == np.float64
    boot = bootstrap_rows({"exact": stats}, settings=BootstrapSettings(resamples=20)).set_index("metric")
    for key in ("aupr", "auroc", "fpr95"):
        assert abs(boot.loc[f"anomaly/{key}", "estimate"] - exact[key]) <= 1e-12, key
    assert cli_main([*eval_args, "--score-bins", "0"]) == 1
    assert "score bins must be >= 1" in capsys.readouterr().err

    assert cli_main(["contmav-train", *paths, "--out", "x", "--state-dir", "s", "--metrics-log", "m"]) == 1
    assert "exactly one of --known and --unknown" in capsys.readouterr().err
    bad_variant = train_args[:]
    bad_variant[bad_variant.index("--variant") + 1] = '{"extra": "moco"}'
    assert cli_main(bad_variant) == 1
    assert "extra" in capsys.readouterr().err


def test_cli_training_restarts_when_its_labels_or_variant_change(city, tmp_path, capsys):
    """A finished run is resumed (no steps) only with the same inputs; otherwise its
    checkpoints are moved aside (kept) and training starts from scratch."""
    labels = tmp_path / "labels"
    shutil.copytree(city["train_labels"], labels)
    recipe = {"iters": 2, "batch_size": 2, "augment": {"crop_size": list(SIZE)}, "log_every": 1, "checkpoint_every": 1}
    state = tmp_path / "run" / "ckpt"

    def run(variant: dict) -> list[str]:
        """Train; return the lines that say why the checkpoints were set aside (or that it resumed)."""
        args = ["contmav-train", "--image-root", str(city["train_images"]), "--label-root", str(labels),
                "--unknown", *map(str, UNKNOWN), "--model", json.dumps({"preset": "tiny"}),
                "--variant", json.dumps(variant), "--recipe", json.dumps(recipe), "--out", str(tmp_path / "model.pt"),
                "--state-dir", str(state), "--metrics-log", str(state / "metrics.jsonl"), "--threads", "1"]
        assert cli_main(args) == 0
        err = capsys.readouterr().err.splitlines()
        return [line for line in err if "training inputs changed" in line or "resumed from" in line]

    assert run({}) == []
    first = {p.name: p.read_bytes() for p in state.iterdir()}
    label = sorted(labels.rglob("*_labelTrainIds.png"))[0]
    pixels = np.array(Image.open(label))
    pixels[0, 0] = VOID if pixels[0, 0] != VOID else 0
    Image.fromarray(pixels).save(label)
    [line] = run({})
    assert "training inputs changed" in line and "(training labels)" in line
    assert {n: (state.parent / "ckpt.stale-1" / n).read_bytes() for n in first} == first
    assert [json.loads(r)["iter"] for r in (state / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    [line] = run({})
    assert "resumed from" in line
    [line] = run({"semantic": "focal"})
    assert "(variant)" in line
    assert sorted(p.name for p in state.parent.iterdir()) == ["ckpt", "ckpt.stale-1", "ckpt.stale-2"]


# ---------------------------------------------------------------------- DDP

# Two epochs of two iterations: the second uses the first one's MAVs, so every loss term
# is active; class weights that differ per class make the CE a true weighted mean.
DDP_CFG = dict(iters=4, batch_size=2, optimizer="adam", lr=0.004, weight_decay=1e-4, schedule="onecycle",
               clip_grad=0.0, log_every=1, checkpoint_every=2, seed=2)
# The model runs in float64 and parameters whose gradient is 0 in exact arithmetic stay
# frozen: the biases of the convolutions right before a BatchNorm (which subtracts them
# again) and the 1x1 pyramid-pooling branch (its BatchNorm over two 1x1 maps, one per
# image, outputs +-1 whatever its input). Adam's first steps are about lr * sign(grad),
# so in float32 rounding noise in such (or merely tiny) gradients becomes differences of
# up to 1e-3 between the runs, hiding real ones.
NOISE_ONLY = ("conv1x3_1.bias", "conv1x3_2.bias", "context.branches.0.0.weight")
# 2-process DDP vs 1 process: |a - b| <= DDP_TOL * (1 + |b|) per weight and buffer.
# Observed: 3.1e-9 (a running variance). Per-process loss means (before the global
# normalisation) move the weights by 0.94; per-process BatchNorm fails outright (a batch
# of one 1x1 map per process).
DDP_TOL = 1e-7


class Float64Task(ContMAVTask):
    """ContMAVTask of a float64 model: feeds it float64 images."""

    def losses(self, model, images, targets):
        return super().losses(model, images.double(), targets)


def _ddp_task_and_data(city: dict[str, Path], variant: dict) -> tuple[ContMAVTask, SemanticDataset]:
    """The tiny ContMAV task (seeded weights, per-class CE weights, ``variant``'s losses)
    and its dataset."""
    torch.manual_seed(0)
    model = build_contmav_model({"preset": "tiny"}, len(KNOWN), SIZE)
    for name, param in model.named_parameters():
        if name.endswith(NOISE_ONLY):
            param.requires_grad_(False)
    task = Float64Task(model.double(), torch.linspace(0.5, 1.5, len(KNOWN)), ContMAVVariant.from_dict(variant), KNOWN)
    dataset = SemanticDataset(
        city["train_images"], city["train_labels"], KNOWN, augment=contmav_augment(SIZE, 1.0, 1.5)
    )
    return task, dataset


# every loss of every variant kind: the paper's, InfoNCE between region embeddings,
# InfoNCE with SynCo's synthetic negatives (each about 14 s: two DDP runs of 4 iterations)
DDP_VARIANTS = {"plain": {}, "infonce": {"extra": "infonce"}, "synco": {"extra": "synco"}}


@pytest.mark.parametrize("variant", list(DDP_VARIANTS))
def test_two_process_ddp_matches_one_process(city, tmp_path, variant):
    """Global batch 2 on 2 gloo processes == batch 2 on one, up to float rounding.

    One image per process: without synchronised BatchNorm the batch statistics are
    per image, and without globally normalised losses each image's pixels weigh by
    the size of its own shard; MAVs are summed over processes at every epoch end. The
    InfoNCE term compares the regions of both images (gathered), SynCo with one
    process's random draws.
    """
    reference = tmp_path / "one"
    task, dataset = _ddp_task_and_data(city, DDP_VARIANTS[variant])
    with one_thread():
        train(task, dataset, TrainConfig(**DDP_CFG), **run_paths(reference))
    folder = tmp_path / "two"
    run_ddp(SCRIPT, folder, "--data", str(city["root"]), "--variant", json.dumps(DDP_VARIANTS[variant]))
    assert_ddp_matches(folder, reference, DDP_TOL, [1, 2, 3, 4])
    last = read_metrics(reference)[-1]
    assert {"loss_feat", "loss_cont"} <= set(last)
    if variant != "plain":
        assert last["loss_extra"] > 0  # the term is active and compares regions


def _main() -> None:
    parser = argparse.ArgumentParser(description="train the tiny ContMAV of the DDP test")
    parser.add_argument("--dir", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="the city fixture's root folder")
    parser.add_argument("--variant", default="{}", help="the variant's loss settings (JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    task, dataset = _ddp_task_and_data(city_paths(args.data), json.loads(args.variant))
    train_and_exit(task, dataset, TrainConfig(**DDP_CFG), args.dir)


if __name__ == "__main__":
    _main()
