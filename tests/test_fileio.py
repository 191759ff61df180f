"""Atomic writes, JSON reading and checked torch loading."""

import os

import pytest
import torch

from vocabseg.errors import InputError
from vocabseg.fileio import (
    atomic_path,
    file_digest,
    folder_digest,
    move_aside,
    read_json,
    read_rgb,
    torch_load_checked,
    torch_save_atomic,
    write_json_atomic,
)


def test_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_json_atomic({"a": 1}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text('{"half": ')
            raise RuntimeError("killed")
    assert read_json(target) == {"a": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]
    assert oct(target.stat().st_mode & 0o777) == "0o644"


def test_json_round_trip_and_torch_save(tmp_path):
    write_json_atomic({"b": [1, 2], "a": None}, tmp_path / "sub" / "x.json")
    assert (tmp_path / "sub" / "x.json").read_text().index('"a"') < (tmp_path / "sub" / "x.json").read_text().index('"b"')
    torch_save_atomic({"w": torch.ones(2)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.ones(2))


def test_unreadable_json_names_the_file(tmp_path):
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(InputError, match="bad.json"):
        read_json(tmp_path / "bad.json")
    with pytest.raises(InputError, match="absent.json"):
        read_json(tmp_path / "absent.json")


class _NotATensor:
    """A pickled custom class: refused by ``weights_only=True``."""


def test_torch_load_checked_reads_tensors_and_names_the_file_otherwise(tmp_path):
    torch_save_atomic({"model": {"w": torch.arange(3.0)}}, tmp_path / "ok.pt")
    data = torch_load_checked(tmp_path / "ok.pt", "test weights")
    assert data.keys() == {"model"} and torch.equal(data["model"]["w"], torch.arange(3.0))
    with pytest.raises(InputError, match=r"absent\.pt: test weights not found"):
        torch_load_checked(tmp_path / "absent.pt", "test weights")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(InputError, match=r"junk\.pt: cannot read test weights \("):
        torch_load_checked(tmp_path / "junk.pt", "test weights")
    torch.save({"obj": _NotATensor()}, tmp_path / "code.pt")  # loads only with weights_only=False
    with pytest.raises(InputError, match=r"code\.pt: cannot read test weights \(UnpicklingError"):
        torch_load_checked(tmp_path / "code.pt", "test weights")


def test_digests_follow_contents_or_listing(tmp_path):
    root = tmp_path / "gt"
    (root / "city").mkdir(parents=True)
    (root / "city" / "a.png").write_bytes(b"abc")
    (root / "b.png").write_bytes(b"xyz")
    full, listing = folder_digest(root), folder_digest(root, contents=False)
    assert file_digest(root / "b.png") == "3608bca1e44ea6c4d268eb6db02260269892c0b42b86bbf1e77a6fa16c3c9282"
    (root / "b.png").write_bytes(b"xyw")  # same size, other bytes: only the full digest sees it
    assert folder_digest(root) != full and folder_digest(root, contents=False) == listing
    os.replace(root / "b.png", root / "c.png")  # a renamed file changes both
    assert folder_digest(root, contents=False) != listing
    with pytest.raises(InputError, match="missing: folder not found"):
        folder_digest(tmp_path / "missing")
    with pytest.raises(InputError, match="nothing.pt: cannot read"):
        file_digest(tmp_path / "nothing.pt")


def test_move_aside_keeps_everything_and_takes_the_next_free_number(tmp_path):
    for n in (1, 2):
        (tmp_path / "ckpt").mkdir()
        (tmp_path / "ckpt" / "ckpt_5.pt").write_text(str(n))
        assert move_aside(tmp_path / "ckpt", ".stale", f"run {n}") == tmp_path / f"ckpt.stale-{n}"
    assert not (tmp_path / "ckpt").exists()
    assert [(tmp_path / f"ckpt.stale-{n}" / "ckpt_5.pt").read_text() for n in (1, 2)] == ["1", "2"]
    assert (tmp_path / "ckpt.stale-2" / "why.txt").read_text() == "run 2\n"


def test_read_rgb_gives_three_channels_and_names_a_broken_file(tmp_path):
    import numpy as np
    from PIL import Image

    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb = read_rgb(tmp_path / "grey.png")
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.uint8
    assert (rgb == grey[..., None]).all()

    broken = tmp_path / "broken.png"
    broken.write_bytes((tmp_path / "grey.png").read_bytes()[:20])
    with pytest.raises(InputError, match=r"broken\.png: unreadable image"):
        read_rgb(broken)
