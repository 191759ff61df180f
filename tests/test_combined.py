"""The combined approach: two FC-CLIP heads on one backbone, L = L1 + L2 + Lcombined.

Tiny preset with random weights (16 queries, 3 decoder layers so that every decoder
input level is used), 64 x 128 images, the 19-class test vocabulary.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vocabseg.approaches.combined import (
    IN_ONLY_KEY,
    CombinedFCCLIP,
    CombinedTask,
    InOnlyDataset,
    build_training_pair,
    load_combined_checkpoint,
    lower_bound_targets,
    split_combined_checkpoint,
)
from vocabseg.approaches.study_model import ModelSpec
from vocabseg.approaches.fusion import fuse_outputs
from vocabseg.approaches.predict import predict_panoptic
from vocabseg.data.labels import EVAL_IDS
from vocabseg.errors import InputError
from vocabseg.fileio import read_json
from vocabseg.losses import build_criterion
from vocabseg.models.clip_tiny import register_tiny_clip
from vocabseg.models.fcclip import FCCLIP, TextClassifier, load_fcclip_checkpoint, preset_config, save_fcclip_checkpoint

K = 19
NUM_POINTS = 256
SIZE = (64, 128)
THINGS = torch.tensor([c >= 24 for c in EVAL_IDS])
SEEN = torch.arange(K) < 11


@pytest.fixture(scope="module", autouse=True)
def tiny_clip():
    register_tiny_clip()
    torch.set_num_threads(1)


def config():
    return preset_config("tiny", num_queries=16, dec_layers=3, overlap_threshold=0.0)


def make_base(seed: int = 0) -> FCCLIP:
    """Random tiny FC-CLIP whose trainable weights are jittered: upstream initialises
    some projections to 0 (deformable-attention offsets), which makes other weights
    (the encoder's level embedding) have exactly zero gradient at step 0."""
    torch.manual_seed(seed)
    model = FCCLIP(config())
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn_like(p))
        model.void_embedding.weight.zero_()  # void logit 0: random queries are rarely void
    return model


def jitter(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def text():
    torch.manual_seed(1)
    emb = F.normalize(torch.randn(K, 64), dim=-1)
    return TextClassifier(emb, [1] * K, [[f"class {i}"] for i in range(K)], "vocabseg-tiny-convnext")


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(2, 3, *SIZE, generator=g) * 255
    targets = []
    for b, (labels, in_only) in enumerate([([0, 3, 12, 15, 8], [1, 1, 0, 1, 0]), ([2, 17, 11], [1, 0, 1])]):
        seg = torch.randint(0, len(labels), (SIZE[0] // 8, SIZE[1] // 8), generator=g)
        seg = seg.repeat_interleave(8, 0).repeat_interleave(8, 1)
        masks = seg[None] == torch.arange(len(labels))[:, None, None]
        targets.append(
            {
                "labels": torch.tensor(labels),
                "masks": masks,
                "seed": 100 + b,
                IN_ONLY_KEY: torch.tensor(in_only, dtype=torch.bool),
            }
        )
    return images, targets


# ---------------------------------------------------------------- training
def test_losses_are_l1_l2_lcombined_and_reach_both_heads(text):
    model = CombinedFCCLIP.from_base(make_base(), fusion="entropy_norm")
    jitter(model.m2, seed=7)  # M2 differs from M1, as after some training
    task = CombinedTask(model, text, num_points=NUM_POINTS)
    images, targets = batch()
    model.train()
    terms = task.losses(model, images, targets)

    names = [f"{t}{s}" for t in ("loss_ce", "loss_mask", "loss_dice") for s in ("", "_0", "_1", "_2")]
    assert sorted(terms) == sorted(f"{p}_{n}" for p in ("m1", "m2", "com") for n in names)

    # each group is the weighted set criterion of its model and targets, recomputed apart
    crit = build_criterion(K, num_points=NUM_POINTS, num_aux=3)
    with torch.no_grad():
        out1 = model.m1(images, text.embeddings, text.num_synonyms)  # its own backbone pass
        out2 = model.m2(images, text.embeddings, text.num_synonyms)
    lower = [
        {"labels": t["labels"][t[IN_ONLY_KEY]], "masks": t["masks"][t[IN_ONLY_KEY]], "seed": t["seed"]}
        for t in targets
    ]
    assert [t["labels"].tolist() for t in lower] == [[0, 3, 15], [2, 11]]
    fused = fuse_outputs(out1, out2, "entropy_norm")
    for prefix, out, tgt in (("m1_", out1, targets), ("m2_", out2, lower), ("com_", fused, targets)):
        raw = crit(out, tgt)
        for name in names:
            expected = raw[name] * crit.weight_dict[name]
            torch.testing.assert_close(terms[prefix + name].detach(), expected, rtol=1e-5, atol=1e-6)
        group = sum(terms[prefix + n] for n in names).detach()
        torch.testing.assert_close(group, crit.weighted_total(raw), rtol=1e-5, atol=1e-5)
    assert float(terms["m1_loss_dice"].detach()) != pytest.approx(float(terms["m2_loss_dice"].detach()), rel=1e-3)

    total = sum(terms.values())
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert {n.split(".")[0] for n, _ in trainable} == {"m1", "m2"}
    assert len(trainable) == 2 * sum(1 for p in model.m1.parameters() if p.requires_grad)
    no_grad = [n for n, p in trainable if p.grad is None or float(p.grad.abs().sum()) == 0.0]
    assert no_grad == []
    assert all(p.grad is None for p in model.m1.backbone.parameters())
    assert model.m1.backbone is model.m2.backbone


class RecordingCriterion:
    """A set criterion that remembers the targets of every call."""

    def __init__(self, criterion):
        self.criterion, self.weight_dict, self.targets = criterion, criterion.weight_dict, []

    def to(self, device):
        return self

    def __call__(self, outputs, targets):
        self.targets.append(targets)
        return self.criterion(outputs, targets)


def test_trained_start_uses_both_models_and_the_same_targets(text, tmp_path):
    """The seed's reading: M1 starts from the FTZS model's file, M2 from the lower
    bound's, and both (and the fused pair) learn the very same FTZS targets."""
    ftzs, lower = make_base(), make_base()  # one base (same CLIP), two different "trainings"
    jitter(ftzs, seed=3)
    jitter(lower, seed=4)
    save_fcclip_checkpoint(ftzs, tmp_path / "ftzs.pt")
    save_fcclip_checkpoint(lower, tmp_path / "lower.pt")
    spec = ModelSpec(preset="tiny", overrides={"num_queries": 16, "dec_layers": 3, "overlap_threshold": 0.0})
    pair = build_training_pair(spec, tmp_path / "ftzs.pt", tmp_path / "lower.pt", fusion="mean")
    for model, source in ((pair.m1, ftzs), (pair.m2, lower)):
        state, expected = model.state_dict(), source.state_dict()
        assert state.keys() == expected.keys()
        assert all(torch.equal(state[k], expected[k]) for k in state)
    assert pair.m1.backbone is pair.m2.backbone
    assert not torch.equal(pair.m1.void_embedding.weight, pair.m2.void_embedding.weight)

    task = CombinedTask(pair, text, num_points=NUM_POINTS, m2_in_only=False)
    task.criterion = recorder = RecordingCriterion(task.criterion)
    images, targets = batch()
    for t in targets:
        del t[IN_ONLY_KEY]  # no flag needed: nothing is taken away from M2's targets
    terms = task.losses(pair.train(), images, targets)
    assert len(recorder.targets) == 3 and all(tgt is targets for tgt in recorder.targets)  # L1, L2, Lcombined
    assert {k.split("_")[0] for k in terms} == {"m1", "m2", "com"}
    # the base variant: M2 a copy of M1, on the in-class-only targets
    base = build_training_pair(spec, tmp_path / "ftzs.pt", None, fusion="mean")
    assert all(torch.equal(v, base.m1.state_dict()[k]) for k, v in base.m2.state_dict().items())
    assert CombinedTask(base, text, num_points=NUM_POINTS).m2_in_only


def test_lower_bound_targets_and_in_only_dataset():
    _, targets = batch()
    lower = lower_bound_targets(targets)
    assert [t["labels"].tolist() for t in lower] == [[0, 3, 15], [2, 11]]
    assert torch.equal(lower[0]["masks"], targets[0]["masks"][[0, 1, 3]])
    assert lower[1]["seed"] == 101 and IN_ONLY_KEY not in lower[0]
    with pytest.raises(InputError, match="in_only"):
        lower_bound_targets([{k: v for k, v in targets[0].items() if k != IN_ONLY_KEY}])
    with pytest.raises(InputError, match="in_only"):
        lower_bound_targets([{**targets[0], IN_ONLY_KEY: torch.tensor([True, False])}])

    class Fake:
        class_ids = (7, 8, 24, 26)

        def __len__(self):
            return 1

        def get(self, index, seed):
            return torch.zeros(3, 4, 4), {"labels": torch.tensor([3, 0, 2, 1]), "masks": torch.zeros(4, 4, 4)}

    data = InOnlyDataset(Fake(), in_ids=[8, 26])
    assert len(data) == 1
    _, target = data.get(0, 0)
    assert target[IN_ONLY_KEY].tolist() == [True, False, False, True]
    with pytest.raises(InputError, match="in_ids"):
        InOnlyDataset(Fake(), in_ids=[33])


def test_mean_fusion_of_identical_models_is_either_model(text):
    model = CombinedFCCLIP.from_base(make_base(), fusion="mean").eval()
    images, _ = batch()
    with torch.no_grad():
        out = model(images, text.embeddings, text.num_synonyms)
    fused = fuse_outputs(out["m1"], out["m2"], "mean")
    for a, b, f in zip([out["m1"], *out["m1"]["aux_outputs"]], [out["m2"], *out["m2"]["aux_outputs"]],
                       [fused, *fused["aux_outputs"]]):
        for key in ("pred_logits", "pred_masks"):
            assert torch.equal(a[key], b[key])
            assert torch.equal(f[key], a[key])


# ---------------------------------------------------------------- files
@pytest.fixture(scope="module")
def trained(tmp_path_factory, text):
    """A combined model with different M1 / M2 weights, exported and split."""
    folder = tmp_path_factory.mktemp("combined")
    model = CombinedFCCLIP.from_base(make_base(), fusion="entropy_norm")
    jitter(model.m1, seed=3)
    jitter(model.m2, seed=4)
    CombinedTask(model, text, num_points=NUM_POINTS).export(model, folder / "combined.pth")
    split_combined_checkpoint(folder / "combined.pth", folder / "m1.pth", folder / "m2.pth")
    return model.eval(), folder


def test_export_split_load_strictly_into_fcclip(trained):
    model, folder = trained
    for name, part in (("m1", model.m1), ("m2", model.m2)):
        fresh = make_base(seed=11)
        report = load_fcclip_checkpoint(fresh, folder / f"{name}.pth")
        assert report.kept_from_model == [] and report.ignored == []
        own, loaded = part.state_dict(), fresh.state_dict()
        assert own.keys() == loaded.keys()
        assert all(torch.equal(own[k], loaded[k]) for k in own)
    # the shared backbone is stored once in the combined file
    backbone_bytes = sum(v.numel() * v.element_size() for v in model.m1.backbone.state_dict().values())
    sizes = {n: (folder / f"{n}.pth").stat().st_size for n in ("combined", "m1", "m2")}
    assert sizes["combined"] < sizes["m1"] + sizes["m2"] - 0.9 * backbone_bytes

    again = CombinedFCCLIP.from_base(make_base(seed=12))
    load_combined_checkpoint(again, folder / "combined.pth")
    own, loaded = model.state_dict(), again.state_dict()
    assert all(torch.equal(own[k], loaded[k]) for k in own)
    assert again.m1.backbone is again.m2.backbone
    with pytest.raises(InputError, match="m1.pth"):
        load_combined_checkpoint(again, folder / "m1.pth")

    # the two split files, loaded apart, combine again (one backbone) unless CLIP differs
    parts = []
    for seed, name in ((14, "m1"), (15, "m2")):
        parts.append(make_base(seed=seed))
        load_fcclip_checkpoint(parts[-1], folder / f"{name}.pth")
    joined = CombinedFCCLIP.from_models(*parts)
    assert joined.m1.backbone is joined.m2.backbone
    assert all(torch.equal(v, own[k]) for k, v in joined.state_dict().items())
    other = make_base(seed=16)
    with torch.no_grad():
        next(other.backbone.parameters()).add_(1.0)
    with pytest.raises(InputError, match="backbone"):
        CombinedFCCLIP.from_models(make_base(seed=17), other)


def _same_results(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert torch.equal(a["panoptic_seg"], b["panoptic_seg"])
        assert a["segments_info"] == b["segments_info"]
        assert torch.equal(a["sem_seg"], b["sem_seg"])


def _infer(model, images, text):
    return model.inference(
        images, text.embeddings, text.num_synonyms, seen_mask=SEEN, thing_mask=THINGS,
        image_sizes=[SIZE, (50, 100)], output_sizes=[SIZE, (100, 200)],
    )


def test_predict_with_m1_or_m2_is_plain_fcclip_inference(trained, text):
    model, folder = trained
    images, _ = batch(1)
    for name in ("m1", "m2"):
        plain = make_base(seed=13).eval()
        load_fcclip_checkpoint(plain, folder / f"{name}.pth")
        model.predict_with = name
        _same_results(_infer(model, images, text), _infer(plain, images, text))
    model.predict_with = "fused"
    fused = _infer(model, images, text)
    assert not torch.equal(fused[0]["sem_seg"], _infer(plain, images, text)[0]["sem_seg"])
    for result, size in zip(fused, [SIZE, (100, 200)]):
        assert result["panoptic_seg"].shape == size and result["sem_seg"].shape == (K, *size)
        ids = [s["id"] for s in result["segments_info"]]
        assert ids == list(range(1, len(ids) + 1)) and set(result["panoptic_seg"].unique().tolist()) - {0} == set(ids)
        assert all(0.0 < s["score"] <= 1.0 for s in result["segments_info"])
    assert sum(len(r["segments_info"]) for r in fused) > 0
    model.predict_with = "both"
    with pytest.raises(InputError, match="predict_with"):
        _infer(model, images, text)
    model.predict_with = "fused"


def test_fused_mean_of_identical_models_equals_plain_inference(text):
    base = make_base(seed=5).eval()
    model = CombinedFCCLIP.from_base(base, fusion="mean", predict_with="fused").eval()
    images, _ = batch(2)
    plain = make_base(seed=5).eval()
    _same_results(_infer(model, images, text), _infer(plain, images, text))


def test_predict_panoptic_writes_segment_scores(trained, text, tmp_path):
    model, _ = trained
    model.predict_with = "fused"
    arrays = [np.random.default_rng(i).integers(0, 256, (*SIZE, 3), dtype=np.uint8) for i in range(2)]
    images = []
    for i, a in enumerate(arrays):
        path = tmp_path / f"city_00000{i}_000019_leftImg8bit.png"
        Image.fromarray(a).save(path)
        images.append((f"city_00000{i}_000019", path))
    count = predict_panoptic(
        model, text, EVAL_IDS, EVAL_IDS[:11], images, tmp_path / "pred.json", tmp_path / "pred",
        batch_size=2, device=torch.device("cpu"),
    )
    assert count == 2
    annotations = read_json(tmp_path / "pred.json")["annotations"]
    direct = model.inference(
        torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float(), text.embeddings, text.num_synonyms,
        seen_mask=SEEN, thing_mask=THINGS, image_sizes=[SIZE, SIZE],
    )
    for ann, res in zip(annotations, direct):
        got = [(s["id"], s["category_id"], s["score"]) for s in ann["segments_info"]]
        want = [(s["id"], EVAL_IDS[s["category"]], s["score"]) for s in res["segments_info"]]
        assert [g[:2] for g in got] == [w[:2] for w in want]
        assert [g[2] for g in got] == pytest.approx([w[2] for w in want], rel=1e-6)
        assert all(isinstance(g[2], float) for g in got)
    assert sum(len(a["segments_info"]) for a in annotations) > 0
