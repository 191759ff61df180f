"""Atomic writes, JSON reading and checked torch loading."""

import os

import pytest
import torch

from vocabseg.errors import InputError
from vocabseg.fileio import atomic_path, read_json, torch_load_checked, torch_save_atomic, write_json_atomic


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
