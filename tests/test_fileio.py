"""Atomic writes and JSON reading."""

import os

import pytest
import torch

from vocabseg.errors import InputError
from vocabseg.fileio import atomic_path, read_json, torch_save_atomic, write_json_atomic


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
