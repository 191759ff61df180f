"""The tiny open_clip model and its region-text pretraining."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import open_clip
import pytest
import torch

from vocabseg.data.synth import generate_city
from vocabseg.errors import InputError
from vocabseg.models.clip_tiny import TINY_CLIP_NAME, register_tiny_clip
from vocabseg.pretrain import pretrain_clip_regions, region_accuracy
from vocabseg.pretrain import clip_regions

SIZE = (64, 128)
STEPS = 40


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("city")
    generate_city(
        root, split_sizes={"train": 8, "val": 4}, height=SIZE[0], width=SIZE[1], seed=3, style="source"
    )
    return root


@pytest.fixture(scope="module")
def pretrained(city, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("weights") / "clip.pt"
    metrics = pretrain_clip_regions(
        city, out, steps=STEPS, batch_images=4, image_size=SIZE, lr=3e-3, seed=0, log=None
    )
    return out, metrics


def _no_network(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_registration_offline_and_dimensions(monkeypatch):
    _no_network(monkeypatch)
    assert register_tiny_clip() == TINY_CLIP_NAME
    assert register_tiny_clip() == TINY_CLIP_NAME  # idempotent
    assert TINY_CLIP_NAME in open_clip.list_models()

    torch.manual_seed(0)
    model = open_clip.create_model(TINY_CLIP_NAME)
    assert model.text_projection.shape == (64, 64)
    assert model.positional_embedding.shape == (32, 64)
    assert model.token_embedding.weight.shape == (49408, 64)
    assert len(model.transformer.resblocks) == 2
    assert model.visual.trunk.num_features == 320
    assert not any(p.requires_grad is False for p in model.parameters())

    tokenizer = open_clip.get_tokenizer(TINY_CLIP_NAME)
    tokens = tokenizer(["a photo of a traffic light.", "sky"])
    assert tokens.shape == (2, 32)
    with torch.no_grad():
        text = model.encode_text(tokens)
        image = model.encode_image(torch.zeros(1, 3, 64, 128))
        dense = clip_regions.dense_clip_features(model.visual, torch.zeros(2, 3, 64, 128))
    assert text.shape == (2, 64) and image.shape == (1, 64)
    assert dense.shape == (2, 320, 2, 4)


def test_missing_raw_folder_is_an_input_error(tmp_path):
    missing = tmp_path / "no-such-city"
    with pytest.raises(InputError, match="no-such-city"):
        pretrain_clip_regions(missing, tmp_path / "clip.pt", steps=1, log=None)
    assert not (tmp_path / "clip.pt").exists()


def test_pretraining_lowers_loss_and_writes_loadable_weights(pretrained, city):
    out, metrics = pretrained
    assert metrics["train_loss"] < metrics["train_loss_first"] - 0.3

    on_disk = json.loads(out.with_suffix(".json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["val_images"] == 4 and on_disk["val_regions"] > 0
    assert 0.0 <= on_disk["val_region_accuracy"] <= 1.0
    assert not list(out.parent.glob("*.tmp"))  # atomic writes leave nothing behind

    saved = torch.load(out, weights_only=True)
    assert isinstance(saved, dict) and all(isinstance(v, torch.Tensor) for v in saved.values())
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(out))
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key


def test_pretrained_regions_beat_chance_and_random_init(pretrained, city):
    out, _ = pretrained
    trained = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(out))
    torch.manual_seed(0)
    untrained = open_clip.create_model(TINY_CLIP_NAME)
    got = region_accuracy(trained, city, split="train", image_size=SIZE)
    base = region_accuracy(untrained, city, split="train", image_size=SIZE)
    chance = 1 / 19
    assert got["images"] == 8 and got["regions"] == base["regions"] > 8
    assert got["accuracy"] > 3 * chance
    assert got["accuracy"] > base["accuracy"] + 0.1


def test_region_path_matches_fcclip_backbone(pretrained):
    """The pretrained path is the one FC-CLIP's out-of-vocabulary branch runs."""
    from vocabseg.models.fcclip import CLIPBackbone

    out, _ = pretrained
    backbone = CLIPBackbone(TINY_CLIP_NAME, pretrained=str(out))
    visual = backbone.clip_model.visual
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, 64, 128, generator=gen)
    masks = torch.rand(3, 2, 4, generator=gen) > 0.5
    masks[:, 0, 0] = True
    index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        dense = clip_regions.dense_clip_features(visual, images)
        ours = clip_regions.region_embeddings(visual, dense, masks, index)
    feats = backbone(images)["clip_vis_dense"]
    torch.testing.assert_close(dense, feats)
    weights = masks.flatten(1).float()
    pooled = torch.einsum("rcn,rn->rc", feats.flatten(2)[index], weights / weights.sum(1, keepdim=True))
    theirs = backbone.visual_prediction_forward(pooled[None])[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_same_seed_gives_identical_weights(city, tmp_path):
    kwargs = dict(steps=6, batch_images=4, image_size=SIZE, seed=5, log=None)
    a = pretrain_clip_regions(city, tmp_path / "a.pt", **kwargs)
    b = pretrain_clip_regions(city, tmp_path / "b.pt", **kwargs)
    assert a["train_loss"] == b["train_loss"]
    wa = torch.load(tmp_path / "a.pt", weights_only=True)
    wb = torch.load(tmp_path / "b.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    pretrain_clip_regions(city, tmp_path / "c.pt", **{**kwargs, "seed": 6})
    wc = torch.load(tmp_path / "c.pt", weights_only=True)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_thread_setting_is_scoped(city, tmp_path):
    pretrain_clip_regions(
        city, tmp_path / "t.pt", steps=1, batch_images=2, image_size=SIZE, threads=2, log=None
    )
    assert torch.get_num_threads() == 1
