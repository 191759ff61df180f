"""Bad model inputs a study config can name, each reported in one line before any
model is built: a CLIP file of another architecture, CLIP weights that cannot be
fetched on an offline node, an FC-CLIP checkpoint of another preset.

No test touches the network: every connection attempt fails (autouse fixture), and
the Hugging Face cache is an empty temporary folder.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import open_clip
import pytest
import torch

from vocabseg.approaches import study_model
from vocabseg.approaches.study_model import ModelSpec, build_backbone, build_model
from vocabseg.errors import InputError
from vocabseg.models.clip_tiny import TINY_CLIP_NAME, register_tiny_clip
from vocabseg.models.fcclip import clip_weights, preset_config
from vocabseg.models.fcclip.checkpoint import config_signature


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """No network, an empty Hugging Face cache, no open_clip URL cache."""
    attempts = []

    def refuse(address, *args, **kwargs):
        attempts.append(address)
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    for name in clip_weights._PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return attempts


@pytest.fixture
def never_build(monkeypatch):
    """Building an FC-CLIP model fails the test: errors must come before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was built before the input was checked")

    monkeypatch.setattr(study_model, "FCCLIP", refuse)


def assert_one_line(message: str, *needles: str) -> None:
    assert "\n" not in message and len(message) < 600, message
    for needle in needles:
        assert needle in message, (needle, message)


def tiny_clip_file(path: Path) -> Path:
    """A state dict of the tiny open_clip model, as the synthetic world's pretraining writes it."""
    register_tiny_clip()
    torch.save(open_clip.create_model(TINY_CLIP_NAME).state_dict(), path)
    return path


def file_of_preset(path: Path, preset: str) -> Path:
    """A checkpoint with exactly the keys and shapes of an official ``preset`` file (text tower
    left out, as upstream), every tensor a broadcast zero so the file stays tiny."""
    state = {key: torch.zeros(()).expand(shape) for key, shape in config_signature(preset_config(preset)).items()}
    torch.save({"model": state}, path)
    return path


# ----------------------------------------------------------------- model.clip_pretrained


def test_clip_file_of_another_architecture_names_both(tmp_path, offline):
    path = tiny_clip_file(tmp_path / "clip.pt")
    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        build_backbone(ModelSpec(preset="r50", clip_pretrained=str(path)))
    assert time.perf_counter() - started < 10  # no RN50 was built
    assert_one_line(str(info.value), "model.clip_pretrained", str(path), f"'{TINY_CLIP_NAME}'", "'RN50'", "ModifiedResNet")
    assert offline == []


def test_clip_file_of_the_right_architecture_loads(tmp_path):
    path = tiny_clip_file(tmp_path / "clip.pt")
    backbone = build_backbone(ModelSpec(preset="tiny", clip_pretrained=str(path)))
    saved = torch.load(path, weights_only=True)
    assert torch.equal(backbone.clip_model.state_dict()["text_projection"], saved["text_projection"])


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "unreachable"])
def test_offline_node_without_clip_pretrained_fails_fast(monkeypatch, offline, how):
    if how == "HF_HUB_OFFLINE":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(InputError) as info:
        build_model(ModelSpec(preset="r50", clip_pretrained=None), None)
    assert time.perf_counter() - started < 5
    message = str(info.value)
    assert_one_line(message, "model.clip_pretrained", "'openai'", "RN50", "local open_clip checkpoint file")
    if how == "HF_HUB_OFFLINE":
        assert "HF_HUB_OFFLINE" in message and offline == []
    else:
        assert "huggingface.co cannot be reached" in message and len(offline) == 1


def test_behind_a_proxy_the_download_is_left_to_open_clip(monkeypatch, offline):
    """A direct connection proves nothing when traffic goes through a proxy: no probe."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert clip_weights.resolve_clip_pretrained("RN50", "openai") == "openai"
    assert offline == []


def test_convnext_large_offline_names_its_hub_repo(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    with pytest.raises(InputError) as info:
        build_backbone(ModelSpec(preset="convnext_large"))
    assert_one_line(str(info.value), "model.clip_pretrained", "convnext_large_d_320", "laion/CLIP-convnext_large_d_320")


def test_cached_tag_is_used_without_network(tmp_path, offline):
    """Weights already in the Hugging Face cache are loaded from there, offline or not."""
    repo = Path(open_clip.get_pretrained_cfg("RN50", "openai")["hf_hub"].rstrip("/"))
    folder = tmp_path / "hf-cache" / f"models--{repo.parent}--{repo.name}"
    snapshot = folder / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0123abcd")
    (snapshot / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    assert clip_weights.resolve_clip_pretrained("RN50", "openai") == str(snapshot / "open_clip_pytorch_model.bin")
    assert offline == []


def test_unknown_tag_or_missing_file():
    for value in ("openia", "weights/rn50.pt"):
        with pytest.raises(InputError) as info:
            build_model(ModelSpec(preset="r50", clip_pretrained=value), None)
        assert_one_line(str(info.value), "model.clip_pretrained", repr(value), "openai")


# ----------------------------------------------------------------- model.weights


@pytest.mark.parametrize("file_preset, study", [("r50", "convnext_large"), ("r50", "tiny"), ("convnext_large", "r50")])
def test_checkpoint_of_another_preset_names_both(tmp_path, never_build, file_preset, study):
    path = file_of_preset(tmp_path / f"fcclip_{file_preset}.pth", file_preset)
    with pytest.raises(InputError) as info:
        build_model(ModelSpec(preset=study), path)
    assert_one_line(str(info.value), str(path), f"FC-CLIP '{file_preset}' checkpoint", f"model.preset is '{study}'")
    assert len(str(info.value).replace(str(path), "<file>")) < 200  # short, whatever the temporary path


def test_checkpoint_against_overrides(tmp_path, never_build):
    path = file_of_preset(tmp_path / "tiny.pth", "tiny")
    with pytest.raises(InputError) as info:
        build_model(ModelSpec(preset="tiny", overrides={"num_queries": 20}), path)
    assert_one_line(str(info.value), "FC-CLIP 'tiny' checkpoint", "model.overrides")


def test_checkpoint_of_no_preset_lists_a_few_keys(tmp_path, never_build):
    path = file_of_preset(tmp_path / "odd.pth", "tiny")
    state = torch.load(path, weights_only=True)
    del state["model"]["void_embedding.weight"]
    torch.save(state, path)
    with pytest.raises(InputError) as info:
        build_model(ModelSpec(preset="tiny"), path)
    assert_one_line(str(info.value), "no preset", "1 missing: void_embedding.weight", "preset 'tiny'")


def test_checkpoint_of_the_study_preset_loads(tmp_path):
    model = build_model(ModelSpec(preset="tiny"), None)
    path = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    loaded = build_model(ModelSpec(preset="tiny"), path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_signatures_draw_no_random_numbers():
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    config_signature(preset_config("r50", num_queries=7))  # built now, not cached
    assert torch.equal(torch.rand(4), expected)


@pytest.mark.parametrize("restrict", [False, True])
def test_text_classifier_of_other_classes_than_predicted_names_the_file(tmp_path, capsys, never_build, restrict):
    """`vocabseg predict` checks its text classifier against the classes it predicts
    (every class, or the in-classes of --classes) before any model is built."""
    import json

    from vocabseg.cli import main
    from vocabseg.data.labelset import LabelSet
    from vocabseg.data.vocab import make_split
    from vocabseg.models.fcclip import save_text_classifier

    labels = LabelSet.cityscapes()
    split = make_split("008", labels)
    (tmp_path / "split.json").write_text(json.dumps(split))
    ids = labels.eval_ids if restrict else split["in_ids"]  # the wrong one each time
    names = study_model.class_names(labels.sorted_ids(ids), labels)
    save_text_classifier(tmp_path / "text.pt", torch.zeros(sum(map(len, names)), 8), [len(n) for n in names],
                         names, TINY_CLIP_NAME)
    argv = ["predict", "--model", json.dumps({"preset": "tiny"}), "--weights", str(tmp_path / "w.pt"),
            "--text", str(tmp_path / "text.pt"), "--gt-json", str(tmp_path / "gt.json"), "--image-root",
            str(tmp_path), "--out-json", str(tmp_path / "p.json"), "--out-folder", str(tmp_path / "p")]
    if restrict:
        argv += ["--classes", str(tmp_path / "split.json")]
    assert main(argv) != 0
    what = "the in-classes of" if restrict else "every class of the label set"
    assert f"text.pt: text classifier of other classes than {what}" in capsys.readouterr().err
