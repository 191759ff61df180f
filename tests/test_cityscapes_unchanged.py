"""Cityscapes studies and their outputs are unchanged by the label set (issue 15).

``tests/fixtures/cityscapes_chain.json`` is what the chain of ``tests/cityscapes_chain.py``
(prepare, vocabulary split, text classifiers, prediction, oracle, intersection, PQ and
mIoU evaluation, pseudo-labels, ContMAV class weights, training and evaluation, on a
synthetic city in the Cityscapes layout) gave with the code of commit d78b85f, the last
before ``LabelSet``; that script's docstring says how to record it again. Every field the
fixture has must still be there with the same value: file hashes exactly, the numbers a
network computes within a tolerance that covers another machine's floating point.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cityscapes_chain import chain_summary

FIXTURE = Path(__file__).parent / "fixtures/cityscapes_chain.json"


def differences(now, before, path: str = "", tolerant: bool = False) -> list[str]:
    """Where ``now`` lacks or changes a field of ``before`` (fields only ``now`` has are
    new outputs, not changes). ``tolerant``: floats within 1e-3 (absolute and relative),
    integers (pixel counts) within 1 % + 2."""
    if isinstance(before, dict):
        if not isinstance(now, dict):
            return [f"{path}: {now!r} instead of a mapping"]
        found = []
        for key, value in before.items():
            if key not in now:
                found.append(f"{path}/{key}: missing")
            else:
                found += differences(now[key], value, f"{path}/{key}", tolerant)
        return found
    if isinstance(before, list):
        if not isinstance(now, list) or len(now) != len(before):
            return [f"{path}: {now!r} instead of {before!r}"]
        return [d for i, (a, b) in enumerate(zip(now, before)) for d in differences(a, b, f"{path}[{i}]", tolerant)]
    numbers = (int, float)
    if tolerant and isinstance(before, numbers) and isinstance(now, numbers) and not isinstance(before, bool):
        slack = 0.01 * abs(before) + 2 if isinstance(before, int) else 1e-3 * (1 + abs(before))
        return [] if abs(now - before) <= slack else [f"{path}: {now!r} instead of {before!r}"]
    return [] if now == before else [f"{path}: {now!r} instead of {before!r}"]


def test_differences_keep_old_fields_and_allow_new_ones():
    before = {"a": {"pq": 0.5, "n": 100}, "h": "x", "l": [1, 2]}
    assert differences({"a": {"pq": 0.5, "n": 100, "new": 1}, "h": "x", "l": [1, 2], "b": 2}, before) == []
    assert differences({"a": {"pq": 0.5004, "n": 102}, "h": "x", "l": [1, 2]}, before, tolerant=True) == []
    assert differences({"a": {"pq": 0.5004, "n": 100}, "h": "y", "l": [1]}, before) == [
        "/a/pq: 0.5004 instead of 0.5", "/h: 'y' instead of 'x'", "/l: [1] instead of [1, 2]"
    ]
    assert differences({"a": {"pq": 0.51}, "h": "x", "l": [1, 2]}, before, tolerant=True) == [
        "/a/pq: 0.51 instead of 0.5", "/a/n: missing"
    ]


def test_the_cityscapes_chain_gives_what_it_gave_before_the_label_set(tmp_path):
    # 9-15 s on the 2-core development machine: every stage of the Cityscapes-format
    # path once, on 2 + 2 images of 64 x 128, in this process (no Snakemake, no start-ups).
    before = json.loads(FIXTURE.read_text())
    now = chain_summary(tmp_path)
    if differences(now["inputs"], before["inputs"]):
        pytest.fail(
            "the chain's inputs (the synthetic city or the seeded tiny models) are not those the fixture "
            "was recorded on: record it again with the code before the label set (tests/fixtures/README.md)"
        )
    found = differences(now["exact"], before["exact"], "exact") + differences(
        now["numbers"], before["numbers"], "numbers", tolerant=True
    )
    assert not found, f"{len(found)} outputs changed (fixture: {FIXTURE.name}):\n" + "\n".join(found[:20])
