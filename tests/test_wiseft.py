"""Tests of vocabseg.approaches.wiseft on two tiny FC-CLIP checkpoints that share the
frozen CLIP (the fine-tuned one has its trainable parameters perturbed)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vocabseg.approaches.study_model import ModelSpec, build_model
from vocabseg.approaches.wiseft import (
    FROZEN_PREFIX,
    interpolate_state_dicts,
    read_state_dict,
    wiseft_checkpoint,
)
from vocabseg.errors import InputError
from vocabseg.models.fcclip import load_fcclip_checkpoint, save_fcclip_checkpoint

SPEC = ModelSpec(preset="tiny")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """(zero-shot path, fine-tuned path, names of the trainable parameters, folder)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("wiseft")
    model = build_model(SPEC, None)
    save_fcclip_checkpoint(model, root / "zs.pt")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    save_fcclip_checkpoint(model, root / "ft.pt")
    torch.save(model.backbone.clip_model.state_dict(), root / "clip.pt")  # the open_clip weights
    return root / "zs.pt", root / "ft.pt", trainable, root


def assert_same_bits(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal dtype, shape and bytes (also tells -0.0 from 0.0 and compares NaNs)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


# --------------------------------------------------------------------------- values


def test_fixture_shares_the_frozen_clip(ckpts):
    zs_path, ft_path, trainable, _ = ckpts
    zs, ft = read_state_dict(zs_path), read_state_dict(ft_path)
    clip = [k for k in zs if k.startswith(FROZEN_PREFIX)]
    assert len(clip) > 100 and all(torch.equal(zs[k], ft[k]) for k in clip)
    assert set(trainable) == set(zs) - set(clip)  # everything else is trained
    assert all(not torch.equal(zs[k], ft[k]) for k in trainable)


@pytest.mark.parametrize("alpha, source", [(0, 0), (1.0, 1)])
def test_endpoints_reproduce_the_files_bit_for_bit(ckpts, alpha, source):
    zs_path, ft_path, _, root = ckpts
    out = root / f"alpha_{alpha!r}.pt"
    report = wiseft_checkpoint(zs_path, ft_path, alpha, out)
    expected = read_state_dict((zs_path, ft_path)[source])
    got = read_state_dict(out)
    assert list(got) == list(expected)
    for key in expected:
        assert_same_bits(got[key], expected[key])
    assert report.interpolated == [] and len(report.copied) == len(expected)


def test_endpoints_where_the_formula_is_not_exact():
    """1·a + 0·b is not a when b is inf/NaN or a is -0.0: the endpoints are copies."""
    zs = {"w": torch.tensor([-0.0, 1.0, 2.0, -0.0])}
    ft = {"w": torch.tensor([math.inf, math.nan, 3.0, 0.0])}
    formula = 1.0 * zs["w"] + 0.0 * ft["w"]
    assert not torch.equal(formula.view(torch.int32), zs["w"].view(torch.int32))  # the premise
    assert_same_bits(interpolate_state_dicts(zs, ft, 0.0)["w"], zs["w"])
    assert_same_bits(interpolate_state_dicts(zs, ft, 1.0)["w"], ft["w"])


def test_half_is_the_mean_and_clip_is_untouched(ckpts):
    zs_path, ft_path, trainable, root = ckpts
    report = wiseft_checkpoint(zs_path, ft_path, 0.5, root / "half.pt")
    zs, ft, got = read_state_dict(zs_path), read_state_dict(ft_path), read_state_dict(root / "half.pt")
    assert sorted(report.interpolated) == sorted(trainable)
    assert report.copied and all(k.startswith(FROZEN_PREFIX) for k in report.copied)
    for key in zs:
        if key in trainable:
            assert torch.equal(got[key], (zs[key] + ft[key]) / 2), key
        else:
            assert_same_bits(got[key], zs[key])


def test_general_alpha_and_dtypes():
    a = torch.tensor([1.0, -2.0, 4.0], dtype=torch.float16)
    b = torch.tensor([3.0, 2.0, 4.0], dtype=torch.float16)
    zs = {"h": a, "f": a.double(), "n": torch.tensor([7, 8]), "same": a.float()}
    ft = {"h": b, "f": b.double(), "n": torch.tensor([7, 8]), "same": a.float()}
    out = interpolate_state_dicts(zs, ft, 0.25)
    assert out["h"].dtype == torch.float16 and torch.equal(
        out["h"], torch.tensor([1.5, -1.0, 4.0], dtype=torch.float16)
    )
    assert torch.equal(out["f"], torch.tensor([1.5, -1.0, 4.0], dtype=torch.float64))
    assert torch.equal(out["n"], zs["n"]) and torch.equal(out["same"], zs["same"])
    assert all(out[k] is not zs[k] and out[k] is not ft[k] for k in out)  # new tensors


# --------------------------------------------------------------------------- files


def test_output_loads_strictly_into_fcclip(ckpts):
    zs_path, ft_path, _, root = ckpts
    wiseft_checkpoint(zs_path, ft_path, 0.3, root / "x.pt")
    model = build_model(SPEC, root / "x.pt")  # strict load, as for every approach
    written = read_state_dict(root / "x.pt")
    assert list(written) == list(model.state_dict())
    assert all(torch.equal(v, written[k]) for k, v in model.state_dict().items())
    report = load_fcclip_checkpoint(build_model(SPEC, None), root / "x.pt")
    assert report.kept_from_model == [] and report.ignored == []


def test_official_zero_shot_file_needs_the_model_spec(ckpts):
    """A file without the CLIP text tower (like the official ones) is completed by the spec."""
    zs_path, ft_path, _, root = ckpts
    model = build_model(SPEC, zs_path)
    save_fcclip_checkpoint(model, root / "official.pt", include_text_tower=False)
    with pytest.raises(InputError, match="only in .*ft.pt.*model spec"):
        wiseft_checkpoint(root / "official.pt", ft_path, 0.5, root / "o.pt")
    spec = ModelSpec(preset="tiny", clip_pretrained=str(root / "clip.pt"))
    wiseft_checkpoint(root / "official.pt", ft_path, 0.5, root / "o.pt", spec=spec)
    wiseft_checkpoint(zs_path, ft_path, 0.5, root / "full.pt")
    got, expected = read_state_dict(root / "o.pt"), read_state_dict(root / "full.pt")
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


# --------------------------------------------------------------------------- errors


def _edited(root: Path, source: Path, name: str, edit) -> Path:
    state = read_state_dict(source)
    edit(state)
    torch.save({"model": state}, root / name)
    return root / name


def test_mismatched_keys_and_shapes_name_both_files(ckpts):
    zs_path, ft_path, trainable, root = ckpts
    key = trainable[0]
    dropped = _edited(root, ft_path, "dropped.pt", lambda s: s.pop(key))
    with pytest.raises(InputError) as err:
        wiseft_checkpoint(zs_path, dropped, 0.5, root / "never.pt")
    assert str(zs_path) in str(err.value) and str(dropped) in str(err.value) and key in str(err.value)
    reshaped = _edited(root, ft_path, "reshaped.pt", lambda s: s.update({key: s[key].reshape(-1)[:3].clone()}))
    with pytest.raises(InputError, match="shape or dtype") as err:
        wiseft_checkpoint(zs_path, reshaped, 0.5, root / "never.pt")
    assert str(zs_path) in str(err.value) and str(reshaped) in str(err.value) and key in str(err.value)
    retyped = _edited(root, ft_path, "retyped.pt", lambda s: s.update({key: s[key].double()}))
    with pytest.raises(InputError, match="float64"):
        wiseft_checkpoint(zs_path, retyped, 0.5, root / "never.pt")
    assert not (root / "never.pt").exists()


def test_different_frozen_clip_is_refused(ckpts):
    zs_path, ft_path, _, root = ckpts
    clip_key = next(k for k in read_state_dict(ft_path) if k.startswith(FROZEN_PREFIX))
    other = _edited(root, ft_path, "other_clip.pt", lambda s: s.update({clip_key: s[clip_key] + 1}))
    with pytest.raises(InputError, match="frozen CLIP") as err:
        wiseft_checkpoint(zs_path, other, 0.5, root / "never.pt")
    assert str(zs_path) in str(err.value) and str(other) in str(err.value) and clip_key in str(err.value)


def test_unequal_integer_tensors_are_refused():
    zs, ft = {"n": torch.tensor([1, 2])}, {"n": torch.tensor([1, 3])}
    with pytest.raises(InputError, match="A.pt and B.pt differ in the non-floating-point tensor n"):
        interpolate_state_dicts(zs, ft, 0.5, names=("A.pt", "B.pt"))


@pytest.mark.parametrize("alpha", [-0.1, 1.0001, math.nan, math.inf, True, "0.5", None])
def test_alpha_outside_unit_interval(ckpts, alpha):
    zs_path, ft_path, _, root = ckpts
    with pytest.raises(InputError, match="alpha"):
        wiseft_checkpoint(zs_path, ft_path, alpha, root / "never.pt")
    assert not (root / "never.pt").exists()


def test_unreadable_files_are_named(tmp_path, ckpts):
    zs_path = ckpts[0]
    with pytest.raises(InputError, match="absent.pt"):
        wiseft_checkpoint(zs_path, tmp_path / "absent.pt", 0.5, tmp_path / "o.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="junk.pt"):
        wiseft_checkpoint(tmp_path / "junk.pt", zs_path, 0.5, tmp_path / "o.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(InputError, match="list.pt: not a state dict"):
        wiseft_checkpoint(tmp_path / "list.pt", zs_path, 0.5, tmp_path / "o.pt")
