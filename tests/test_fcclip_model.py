"""FC-CLIP model: upstream state-dict layout, checkpoints, text classifier, heads, inference.

Everything runs on random weights (open_clip ``pretrained=None``). The tiny models use
open_clip configs registered here under test-only names: a timm ``convnext_atto``
vision tower or a [1, 1, 1, 1] ModifiedResNet (width 16), and a 2-layer width-64 text
tower.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re

import open_clip
import pytest
import torch
import torch.nn.functional as F

from vocabseg.errors import InputError
from vocabseg.models.clip_tiny import register_tiny_clip
from vocabseg.models.fcclip import (
    CITYSCAPES_CLASS_NAMES,
    FCCLIP,
    VILD_TEMPLATES,
    FCCLIPConfig,
    build_text_classifier,
    geometric_ensemble,
    get_classification_logits,
    load_fcclip_checkpoint,
    load_text_classifier,
    model_fingerprint,
    overlap_mask,
    panoptic_inference,
    parse_class_names,
    preset_config,
    save_fcclip_checkpoint,
    save_text_classifier,
)
from vocabseg.models.fcclip.transformer_decoder import mask_pooling

TINY_CONVNEXT = "fcclip-test-tiny-convnext"
TINY_RESNET = "fcclip-test-tiny-resnet"
_TEXT_CFG = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2}
_OPEN_CLIP_CONFIGS = {
    TINY_CONVNEXT: {
        "embed_dim": 32,
        "vision_cfg": {
            "timm_model_name": "convnext_atto",
            "timm_model_pretrained": False,
            "timm_pool": "",
            "timm_proj": "mlp",
            "timm_drop": 0.0,
            "timm_drop_path": 0.1,
            "image_size": 64,
        },
        "text_cfg": _TEXT_CFG,
    },
    TINY_RESNET: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "patch_size": None},
        "text_cfg": _TEXT_CFG,
    },
}

# The official checkpoints' state dicts (key, shape, dtype), without
# criterion.empty_weight: sha256 of the sorted "key<TAB>[shape]<TAB>dtype" lines, the
# number of keys, and per part (keys, elements).
UPSTREAM = {
    "r50": {
        "sha256": "c2c4f7895453a79e9eeaf05b46f511d5b10ae80b7576f6f772c0103fcf4f9157",
        "keys": 791,
        "parts": {
            "text": (150, 63690241),
            "visual": (339, 38370199),
            "pixel_decoder": (117, 6035904),
            "predictor": (184, 14996481),
            "void_embedding": (1, 1024),
        },
    },
    "convnext_large": {
        "sha256": "f86a9fe42dda8f40ff0dfdfb79acf72f10e00f0c65f9e843793a7bdc7e4c0c6a",
        "keys": 845,
        "parts": {
            "text": (198, 152001793),
            "visual": (345, 199770816),
            "pixel_decoder": (117, 5790144),
            "predictor": (184, 14930689),
            "void_embedding": (1, 768),
        },
    },
}

NAMES = [["road", "street"], ["person"], ["car", "cars", "vehicle"]]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def tiny_open_clip_configs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in _OPEN_CLIP_CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)


def tiny_model(clip_model: str = TINY_CONVNEXT, seed: int = 0, **overrides) -> FCCLIP:
    torch.manual_seed(seed)
    overrides.setdefault("ensemble_on_valid_mask", clip_model == TINY_RESNET)
    return FCCLIP(preset_config("tiny", clip_model=clip_model, **overrides))


@pytest.fixture(scope="module")
def shared_tiny(tiny_open_clip_configs):
    """Tiny ConvNeXt model for tests that neither change its weights nor its config."""
    return tiny_model(seed=0)


@pytest.fixture(scope="module")
def r50_model():
    torch.manual_seed(0)
    model = FCCLIP(preset_config("r50", clip_pretrained=None))
    yield model
    del model
    gc.collect()


@pytest.fixture(scope="module")
def tiny_text():
    torch.manual_seed(1)
    emb = F.normalize(torch.randn(6, 32), dim=-1)
    return emb, [2, 1, 3]


# --------------------------------------------------------- state-dict layout
def _part(key: str) -> str:
    if key.startswith("backbone.clip_model.visual."):
        return "visual"
    if key.startswith("backbone.clip_model."):
        return "text"
    if key.startswith("sem_seg_head.pixel_decoder."):
        return "pixel_decoder"
    if key.startswith("sem_seg_head.predictor."):
        return "predictor"
    return key.split(".")[0]


def _check_upstream_layout(model: FCCLIP, expected: dict) -> None:
    state = model.state_dict()
    lines = sorted(f"{k}\t{list(v.shape)}\t{str(v.dtype).replace('torch.', '')}" for k, v in state.items())
    parts: dict[str, list[int]] = {}
    for key, value in state.items():
        entry = parts.setdefault(_part(key), [0, 0])
        entry[0] += 1
        entry[1] += value.numel()
    assert {k: tuple(v) for k, v in parts.items()} == expected["parts"]
    assert len(lines) == expected["keys"]
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == expected["sha256"]


def test_r50_state_dict_equals_upstream(r50_model):
    _check_upstream_layout(r50_model, UPSTREAM["r50"])
    assert "pixel_mean" not in r50_model.state_dict()


def test_convnext_large_state_dict_equals_upstream():
    model = FCCLIP(preset_config("convnext_large", clip_pretrained=None))
    try:
        _check_upstream_layout(model, UPSTREAM["convnext_large"])
    finally:
        del model
        gc.collect()


# ------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip_is_exact(tmp_path, shared_tiny):
    source = shared_tiny
    path = tmp_path / "ckpt" / "model.pth"
    save_fcclip_checkpoint(source, path)
    assert sorted(os.listdir(path.parent)) == ["model.pth"]  # no temp file left
    assert set(torch.load(path, weights_only=True)) == {"model"}

    target = tiny_model(seed=1)
    assert model_fingerprint(target.state_dict()) != model_fingerprint(source.state_dict())
    report = load_fcclip_checkpoint(target, path)
    assert report.kept_from_model == [] and report.ignored == []
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert model_fingerprint(target.state_dict()) == model_fingerprint(source.state_dict())


def test_checkpoint_without_text_tower_keeps_model_text_tower(tmp_path, shared_tiny):
    source = shared_tiny
    state = {
        k: v
        for k, v in source.state_dict().items()
        if k.startswith(("sem_seg_head.", "void_", "backbone.clip_model.visual."))
    }
    state["criterion.empty_weight"] = torch.ones(134)
    path = tmp_path / "official_like.pth"
    torch.save({"model": state, "iteration": 7}, path)

    target = tiny_model(seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_fcclip_checkpoint(target, path)
    assert report.ignored == ["criterion.empty_weight"]
    assert "backbone.clip_model.logit_scale" in report.kept_from_model
    assert "backbone.clip_model.token_embedding.weight" in report.kept_from_model
    after = target.state_dict()
    for key in after:
        expected = state[key] if key in state else before[key]
        assert torch.equal(after[key], expected), key
    assert not torch.equal(
        after["backbone.clip_model.token_embedding.weight"],
        source.state_dict()["backbone.clip_model.token_embedding.weight"],
    )

    # save without the text tower: the same key set as that file (minus the criterion)
    slim = tmp_path / "slim.pth"
    save_fcclip_checkpoint(source, slim, include_text_tower=False)
    assert set(torch.load(slim, weights_only=True)["model"]) == set(state) - {"criterion.empty_weight"}


def test_checkpoint_of_another_model_is_one_input_error(tmp_path, r50_model, shared_tiny):
    path = tmp_path / "tiny_weights.pth"
    save_fcclip_checkpoint(shared_tiny, path)
    before = model_fingerprint(r50_model.state_dict())
    with pytest.raises(InputError) as info:
        load_fcclip_checkpoint(r50_model, path)
    message = str(info.value)
    assert "tiny_weights.pth" in message
    assert re_count(message, "missing") and re_count(message, "unexpected") and re_count(message, "mis-shaped")
    assert "backbone.clip_model.visual.conv1.weight" in message  # first missing
    assert "backbone.clip_model.visual.trunk.stem.0.weight" in message  # first unexpected
    assert "backbone.clip_model.positional_embedding (file [77, 64], model [77, 512])" in message
    assert message.count("\n") == 0
    assert model_fingerprint(r50_model.state_dict()) == before  # nothing loaded

    with pytest.raises(InputError, match="not found"):
        load_fcclip_checkpoint(r50_model, tmp_path / "absent.pth")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="garbage.pth"):
        load_fcclip_checkpoint(r50_model, bad)


def test_checkpoint_of_another_preset_names_both_presets(tmp_path, r50_model):
    """A real tiny-preset checkpoint into a real (random) r50 model: the presets, not keys."""
    register_tiny_clip()
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_fcclip_checkpoint(FCCLIP(preset_config("tiny")), path)
    with pytest.raises(InputError) as info:
        load_fcclip_checkpoint(r50_model, path)
    message = str(info.value)
    assert message == (
        f"{path}: this is an FC-CLIP 'tiny' checkpoint (by its keys and shapes), but model.preset is 'r50'; "
        "use a r50 checkpoint, or set model.preset: tiny"
    )


def re_count(message: str, kind: str) -> bool:
    """The message states a count for ``kind`` ("<n> missing: ...")."""
    return re.search(rf"\d+ {kind}: ", message) is not None


def test_fingerprint_depends_on_values_only():
    a = {"x": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(3)}
    b = {"n": torch.tensor(3), "x": torch.arange(6.0).reshape(2, 3).t().contiguous().t()}
    assert model_fingerprint(a) == model_fingerprint(b)
    assert len(model_fingerprint(a)) == 16
    c = {"x": torch.arange(6.0).reshape(2, 3), "n": torch.tensor(4)}
    assert model_fingerprint(a) != model_fingerprint(c)


# ------------------------------------------------------------------- text
def test_encode_text_matches_a_hand_written_text_tower(shared_tiny):
    model = shared_tiny
    clip = model.backbone.clip_model
    tokens = model.backbone.get_tokenizer()(["a photo of a car.", "sky"])
    x = clip.token_embedding(tokens) + clip.positional_embedding
    length = tokens.shape[1]
    causal = torch.full((length, length), float("-inf")).triu(1)
    for block in clip.transformer.resblocks:
        h = block.ln_1(x)
        q, k, v = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        heads = block.attn.num_heads

        def split(t):
            return t.reshape(t.shape[0], length, heads, -1).transpose(1, 2)

        att = (split(q) @ split(k).transpose(-1, -2)) / math.sqrt(q.shape[-1] // heads) + causal
        o = (att.softmax(-1) @ split(v)).transpose(1, 2).reshape(x.shape)
        x = x + block.attn.out_proj(o)
        x = x + block.mlp(block.ln_2(x))
    x = clip.ln_final(x)
    expected = x[torch.arange(2), tokens.argmax(-1)] @ clip.text_projection
    torch.testing.assert_close(model.backbone.encode_text(tokens), expected, rtol=1e-4, atol=1e-5)


def test_text_classifier_is_template_mean_of_normalised_prompts(tmp_path, shared_tiny):
    model = shared_tiny
    tokenizer = model.backbone.get_tokenizer()
    emb, num_syn = build_text_classifier(model.backbone, tokenizer, NAMES, batch_size=5)
    assert num_syn == [2, 1, 3] and emb.shape == (6, 32)

    rows = []
    for names in NAMES:
        for name in names:
            prompts = [t.format(name) for t in VILD_TEMPLATES]
            feats = model.backbone.encode_text(tokenizer(prompts))
            mean = (feats / feats.norm(dim=-1, keepdim=True)).mean(0)
            rows.append(mean / mean.norm())
    torch.testing.assert_close(emb, torch.stack(rows), rtol=1e-5, atol=1e-6)

    # the class logit is the max over the class's synonyms
    x = torch.randn(1, 4, 32)
    classifier = torch.cat([emb, F.normalize(torch.randn(1, 32), dim=-1)])
    logits = get_classification_logits(x, classifier, torch.tensor(math.log(10.0)), num_syn)
    sims = 10.0 * F.normalize(x, dim=-1) @ classifier.t()
    torch.testing.assert_close(logits[..., 2], sims[..., 3:6].max(-1).values)

    path = tmp_path / "cls" / "text.pt"
    save_text_classifier(path, emb, num_syn, NAMES, TINY_CONVNEXT)
    loaded = load_text_classifier(path, expect_clip_model=TINY_CONVNEXT)
    assert torch.equal(loaded.embeddings, emb)
    assert loaded.num_synonyms == num_syn and loaded.class_names == NAMES and loaded.clip_model == TINY_CONVNEXT
    with pytest.raises(InputError, match="text.pt"):
        load_text_classifier(path, expect_clip_model="RN50")
    with pytest.raises(InputError):
        save_text_classifier(tmp_path / "bad.pt", emb, [2, 2], NAMES[:2], TINY_CONVNEXT)


def test_cityscapes_names_and_parsing():
    assert len(CITYSCAPES_CLASS_NAMES) == 19
    assert sum(len(n) for n in CITYSCAPES_CLASS_NAMES) == 60
    assert CITYSCAPES_CLASS_NAMES[0] == ["road", "railroad"]
    assert CITYSCAPES_CLASS_NAMES[3] == ["wall", "walls", "brick wall", "stone wall", "tile wall", "wood wall"]
    assert CITYSCAPES_CLASS_NAMES[18] == ["bicycle", "bicycles", "bike", "bikes"]
    assert len(VILD_TEMPLATES) == 14 and VILD_TEMPLATES[1] == "This is a photo of a {}"
    parsed = parse_class_names("0:a, b,c\n\n5:invalid_class_id\n7:d\n")
    assert parsed == {0: ["a", "b", "c"], 7: ["d"]}
    with pytest.raises(InputError, match="line 2"):
        parse_class_names("0:a\nno colon here", source="x.txt")
    with pytest.raises(InputError, match="twice"):
        parse_class_names("1:a\n1:b")
    assert overlap_mask([["road", "x"], ["pole"]], [["road"], ["car"]]).tolist() == [True, False]


def test_get_classification_logits_by_hand():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    classifier = F.normalize(torch.randn(7, 4), dim=-1)  # 6 synonyms + void
    num_syn = [2, 1, 3]
    for log_scale, scale in ((math.log(20.0), 20.0), (math.log(1000.0), 100.0)):
        out = get_classification_logits(x, classifier, torch.tensor(log_scale), num_syn)
        assert out.shape == (2, 3, 4)
        for b in range(2):
            for q in range(3):
                v = x[b, q] / x[b, q].norm()
                sims = [scale * float(v @ classifier[s]) for s in range(7)]
                expected = [max(sims[0:2]), sims[2], max(sims[3:6]), sims[6]]
                assert out[b, q].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_mask_pooling_averages_inside_binary_masks():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    masks = torch.full((1, 2, 4, 4), -1.0)
    masks[0, 0, :2, :2] = 3.0
    pooled = mask_pooling(x, masks)
    assert pooled[0, 0].tolist() == pytest.approx([x[0, 0, :2, :2].mean().item(), x[0, 1, :2, :2].mean().item()])
    assert pooled[0, 1].tolist() == [0.0, 0.0]  # empty mask


# ---------------------------------------------------------------- forward
def test_forward_shapes_padding_and_gradients(tiny_text):
    model = tiny_model()
    model.train()
    emb, num_syn = tiny_text
    images = torch.rand(2, 3, 60, 90) * 255  # padded to 64 x 96 inside
    out = model(images, emb, num_syn, image_sizes=[(60, 90), (50, 70)])
    q = model.config.num_queries
    assert out["pred_logits"].shape == (2, q, 4)
    assert out["pred_masks"].shape == (2, q, 16, 24)
    assert len(out["aux_outputs"]) == model.config.dec_layers == 2
    for aux in out["aux_outputs"]:
        assert aux["pred_logits"].shape == (2, q, 4) and aux["pred_masks"].shape == (2, q, 16, 24)

    # batch independence: image 1 alone (padded by the model) gives the same outputs
    alone = model(images[1:, :, :50, :70], emb, num_syn)
    torch.testing.assert_close(alone["pred_logits"][0], out["pred_logits"][1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(alone["pred_masks"][0], out["pred_masks"][1], rtol=1e-4, atol=1e-4)

    loss = out["pred_logits"].logsumexp(-1).mean() + out["pred_masks"].sigmoid().mean()
    loss = loss + sum(a["pred_logits"].mean() for a in out["aux_outputs"])
    loss.backward()
    assert model.sem_seg_head.predictor.class_embed.layers[0].weight.grad is not None
    assert model.void_embedding.weight.grad is not None
    assert all(p.grad is None for p in model.backbone.parameters())


def test_backbone_is_frozen_and_stays_in_eval_mode(shared_tiny):
    model = shared_tiny
    model.train()
    assert model.sem_seg_head.training
    assert not any(m.training for m in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.sem_seg_head.parameters())
    x = torch.randn(1, 3, 64, 64)
    torch.manual_seed(5)
    first = model.backbone(x)
    torch.manual_seed(6)
    second = model.backbone(x)  # drop_path 0.1 in the tower: equal only in eval mode
    for key in ("res2", "res3", "res4", "res5", "clip_vis_dense"):
        assert torch.equal(first[key], second[key])
        assert not first[key].requires_grad
    assert [first[k].shape[1] for k in ("res2", "res3", "res4", "res5")] == list(
        model.backbone.output_channels.values()
    )
    assert first["res5"].shape[-2:] == (2, 2)


# --------------------------------------------------------------- inference
def test_geometric_ensemble_by_hand():
    torch.manual_seed(0)
    in_logits = torch.randn(1, 2, 4)  # K = 3, void last
    out_logits = torch.randn(1, 2, 4)
    seen = torch.tensor([True, False, True])
    alpha, beta = 0.4, 0.8
    got = geometric_ensemble(in_logits, out_logits, seen, alpha, beta)
    got_valid = geometric_ensemble(in_logits, out_logits, seen, alpha, beta, valid=torch.tensor([[True, False]]))
    for q in range(2):
        p_in = [math.exp(v) for v in in_logits[0, q, :3].tolist()]
        p_in = [p / sum(p_in) for p in p_in]
        p_out = [math.exp(v) for v in out_logits[0, q, :3].tolist()]
        p_out = [p / sum(p_out) for p in p_out]
        full = [math.exp(v) for v in in_logits[0, q].tolist()]
        p_void = full[3] / sum(full)
        for valid, result in ((True, got), (q == 0, got_valid)):
            w = [alpha if s else beta for s in seen.tolist()]
            w = [wi if valid else 0.0 for wi in w]
            g = [p_in[c] ** (1 - w[c]) * p_out[c] ** w[c] for c in range(3)]
            probs = [gc_ / sum(g) * (1 - p_void) for gc_ in g] + [p_void]
            expected = [math.log(p + 1e-8) for p in probs]
            assert result[0, q].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-6)


BIG = 10.0


def _four_query_masks() -> torch.Tensor:
    """[4, 4, 4] mask logits of four queries on a 4 x 4 image; with queries 0, 1 of stuff
    class 0 and queries 2, 3 of thing class 1 the panoptic map is :data:`TWO_SEGMENTS`."""
    masks = torch.full((4, 4, 4), -BIG)
    masks[0, :, :2] = BIG  # stuff class 0, left half
    masks[1, :2, 2:] = BIG  # stuff class 0 again, top right: merged into query 0's segment
    masks[2, 2:, 2:] = BIG  # thing class 1, bottom right
    masks[3, :, :] = 0.1  # thing class 1 everywhere, loses everywhere -> dropped by overlap
    return masks


TWO_SEGMENTS = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 2, 2]])


def test_panoptic_inference_by_hand():
    masks = _four_query_masks()
    cls = torch.full((4, 3), -BIG)
    cls[0, 0] = BIG
    cls[1, 0] = BIG
    cls[2, 1] = BIG
    cls[3, 1] = BIG - 5  # lower score than query 2
    thing = torch.tensor([False, True])
    seg, info = panoptic_inference(cls, masks, thing, object_mask_threshold=0.0, overlap_threshold=0.8)
    assert info == [
        {"id": 1, "category": 0, "isthing": False, "score": 1.0},
        {"id": 2, "category": 1, "isthing": True, "score": 1.0},
    ]
    assert torch.equal(seg, TWO_SEGMENTS) and seg.dtype == torch.long

    cls_void = cls.clone()
    cls_void[:, 2] = 2 * BIG  # every query is void
    seg, info = panoptic_inference(cls_void, masks, thing)
    assert info == [] and int(seg.max()) == 0


def test_panoptic_segment_scores_by_hand():
    masks = _four_query_masks()
    cls = torch.tensor([[1.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-BIG, 0.5, -BIG]])
    seg, info = panoptic_inference(cls, masks, torch.tensor([False, True]), overlap_threshold=0.8)
    assert torch.equal(seg, TWO_SEGMENTS)
    s0 = math.e / (math.e + 2)
    s1 = math.e**3 / (math.e**3 + 2)
    s2 = math.e**2 / (math.e**2 + 2)
    assert [(s["id"], s["category"], s["isthing"]) for s in info] == [(1, 0, False), (2, 1, True)]
    assert info[0]["score"] == pytest.approx(max(s0, s1), rel=1e-6)  # merged stuff: the larger score
    assert info[1]["score"] == pytest.approx(s2, rel=1e-6)
    assert all(isinstance(s["score"], float) for s in info)


@pytest.mark.parametrize("clip_model", [TINY_CONVNEXT, TINY_RESNET])
def test_inference_gives_consistent_panoptic_maps(clip_model, tiny_text):
    model = tiny_model(clip_model, overlap_threshold=0.0).eval()
    with torch.no_grad():
        model.void_embedding.weight.zero_()  # void logit 0: random queries are rarely void
    emb, num_syn = tiny_text
    torch.manual_seed(3)
    images = torch.rand(2, 3, 64, 96) * 255
    images[1, :, 50:] = 0
    images[1, :, :, 70:] = 0  # image 1 is 50 x 70, zero-padded by the caller
    seen = torch.tensor([True, False, True])
    thing = torch.tensor([False, True, True])
    results = model.inference(
        images,
        emb,
        num_syn,
        seen_mask=seen,
        thing_mask=thing,
        image_sizes=[(64, 96), (50, 70)],
        output_sizes=[(64, 96), (100, 140)],
    )
    assert len(results) == 2
    total = 0
    for result, size in zip(results, [(64, 96), (100, 140)]):
        seg, info = result["panoptic_seg"], result["segments_info"]
        assert seg.shape == size and seg.dtype == torch.long
        assert result["sem_seg"].shape == (3, *size) and torch.isfinite(result["sem_seg"]).all()
        assert float(result["sem_seg"].min()) >= 0.0
        ids = [s["id"] for s in info]
        assert ids == list(range(1, len(ids) + 1))
        assert set(seg.unique().tolist()) - {0} == set(ids)
        for s in info:
            assert 0 <= s["category"] < 3 and s["isthing"] == bool(thing[s["category"]])
        stuff = [s["category"] for s in info if not s["isthing"]]
        assert len(stuff) == len(set(stuff))  # stuff merged per class
        total += len(info)
    assert total > 0

    # what the caller put into the padding does not matter (upstream pads after normalising)
    garbage = images.clone()
    garbage[1, :, 50:] = 255.0
    garbage[1, :, :, 70:] = 128.0
    again = model.inference(
        garbage,
        emb,
        num_syn,
        seen_mask=seen,
        thing_mask=thing,
        image_sizes=[(64, 96), (50, 70)],
        output_sizes=[(64, 96), (100, 140)],
    )
    for first, second in zip(results, again):
        assert torch.equal(first["panoptic_seg"], second["panoptic_seg"])
        assert first["segments_info"] == second["segments_info"]
        assert torch.equal(first["sem_seg"], second["sem_seg"])

    # same batch under CPU autocast: runs, same panoptic layout rules
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = model.inference(
            images, emb, num_syn, seen_mask=seen, thing_mask=thing, image_sizes=[(64, 96), (50, 70)]
        )
    assert again[1]["panoptic_seg"].shape == (50, 70) and again[0]["sem_seg"].dtype == torch.float32


def test_resnet_masked_attention_pool_by_hand():
    model = tiny_model(TINY_RESNET)
    backbone = model.backbone
    pool = backbone.clip_model.visual.attnpool
    torch.manual_seed(0)
    feats = torch.randn(1, 512, 2, 3)
    masks = torch.tensor([[[1.0, -1.0, -1.0], [1.0, 2.0, -1.0]], [[-1.0] * 3] * 2]).unsqueeze(0)  # [1, 2, 2, 3]
    got = backbone.visual_prediction_forward(feats, masks)
    assert got.shape == (1, 2, 32)

    pos = pool.positional_embedding  # [5, 512] for a 2 x 2 grid
    grid = F.interpolate(pos[1:].t().reshape(1, 512, 2, 2), size=(2, 3), mode="bilinear", align_corners=False)
    tokens = feats.flatten(2)[0].t()  # [6, 512]
    kv = tokens + grid.flatten(2)[0].t()
    query = tokens.mean(0, keepdim=True) + pos[:1]
    keep = torch.tensor([True, False, False, True, True, False])
    out, _ = F.multi_head_attention_forward(
        query[:, None],
        kv[keep][:, None],
        kv[keep][:, None],
        512,
        pool.num_heads,
        None,
        torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        None,
        None,
        False,
        0.0,
        pool.c_proj.weight,
        pool.c_proj.bias,
        training=False,
        need_weights=False,
        use_separate_proj_weight=True,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
    )
    torch.testing.assert_close(got[0, 0], out[0, 0], rtol=1e-4, atol=1e-4)
    assert torch.isfinite(got[0, 1]).all()  # empty mask: no NaN


def test_presets_and_config_errors():
    r50 = preset_config("r50")
    assert (r50.clip_model, r50.clip_pretrained, r50.ensemble_on_valid_mask) == ("RN50", "openai", True)
    large = preset_config("convnext_large")
    assert (large.clip_model, large.clip_pretrained) == ("convnext_large_d_320", "laion2b_s29b_b131k_ft_soup")
    assert (large.num_queries, large.dec_layers, large.ensemble_alpha, large.ensemble_beta) == (250, 9, 0.4, 0.8)
    assert not large.ensemble_on_valid_mask and large.object_mask_threshold == 0.0 and large.overlap_threshold == 0.8
    tiny = preset_config("tiny")
    assert tiny.clip_model == "vocabseg-tiny-convnext" and tiny.clip_pretrained is None
    assert FCCLIPConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(InputError, match="unknown FC-CLIP preset"):
        preset_config("vit")
    with pytest.raises(InputError, match="num_querys"):
        preset_config("tiny", num_querys=3)
