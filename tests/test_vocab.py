"""Vocabulary configurations and the filtered training ground truth."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from vocabseg.data.labels import EVAL_IDS, STUFF_IDS, THING_IDS
from vocabseg.data.panoptic_png import id_to_rgb, rgb_to_id
from vocabseg.data.vocab import VOCAB_CONFIGS, make_split, write_vocab_split
from vocabseg.errors import InputError

# The seed's table, verbatim.
SEED_TABLE = {
    "000": set(),
    "001": {24},
    "002": {24, 25},
    "003": {24, 25, 26},
    "004": {24, 25, 26, 27},
    "005": {24, 25, 26, 27, 28},
    "006": {24, 25, 26, 27, 28, 31},
    "007": {24, 25, 26, 27, 28, 31, 32},
    "008": {24, 25, 26, 27, 28, 31, 32, 33},
}


@pytest.mark.parametrize("conf", sorted(SEED_TABLE))
def test_split_matches_seed_table(conf):
    split = make_split(conf)
    assert set(split["deleted_ids"]) == SEED_TABLE[conf]
    assert set(split["out_ids"]) == SEED_TABLE[conf]
    assert set(split["in_ids"]) | set(split["out_ids"]) == set(EVAL_IDS)
    assert not set(split["in_ids"]) & set(split["out_ids"])
    assert len(split["in_names"]) == len(split["in_ids"])


def test_008_is_stuff_in_things_out():
    split = make_split("008")
    assert tuple(split["in_ids"]) == STUFF_IDS
    assert tuple(split["out_ids"]) == THING_IDS
    assert split["out_names"][0] == "person"


def test_unknown_configuration_names_the_choices():
    with pytest.raises(InputError, match="009.*000"):
        make_split("009")
    assert sorted(VOCAB_CONFIGS) == sorted(SEED_TABLE)


def test_rgb_id_round_trip():
    ids = np.array([[0, 7, 26001], [33999, 24000, 255 + 256 * 3]], dtype=np.uint32)
    assert np.array_equal(rgb_to_id(id_to_rgb(ids)), ids)


def _write_gt(tmp_path):
    """Two training images: one with a person, a car and road; one with road only."""
    folder = tmp_path / "gt"
    folder.mkdir()
    a = np.zeros((8, 8), np.uint32)
    a[:4] = 7  # road
    a[4:, :4] = 24001  # person
    a[4:, 4:] = 26  # car crowd group
    b = np.full((8, 8), 7, np.uint32)
    Image.fromarray(id_to_rgb(a)).save(folder / "a_gtFine_panoptic.png")
    Image.fromarray(id_to_rgb(b)).save(folder / "b_gtFine_panoptic.png")
    seg = lambda i, c, area, crowd=0: {"id": i, "category_id": c, "area": area, "bbox": [0, 0, 1, 1], "iscrowd": crowd}  # noqa: E731
    gt = {
        "images": [{"id": "a"}, {"id": "b"}],
        "categories": [{"id": 7, "isthing": 0}, {"id": 24, "isthing": 1}, {"id": 26, "isthing": 1}],
        "annotations": [
            {"image_id": "a", "file_name": "a_gtFine_panoptic.png",
             "segments_info": [seg(7, 7, 32), seg(24001, 24, 16), seg(26, 26, 16, 1)]},
            {"image_id": "b", "file_name": "b_gtFine_panoptic.png", "segments_info": [seg(7, 7, 64)]},
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    return tmp_path / "gt.json", folder, a


@pytest.mark.parametrize("conf, kept", [("000", {7, 24001, 26}), ("001", {7, 26}), ("008", {7})])
def test_training_ground_truth_turns_out_classes_void(tmp_path, conf, kept):
    gt_json, folder, a = _write_gt(tmp_path)
    out = tmp_path / conf
    out.mkdir()
    split = write_vocab_split(gt_json, folder, conf, out / "split.json", out / "train.json", out / "train")
    assert json.loads((out / "split.json").read_text()) == split
    filtered = json.loads((out / "train.json").read_text())
    seg_ids = {s["id"] for s in filtered["annotations"][0]["segments_info"]}
    assert seg_ids == kept
    ids = rgb_to_id(np.asarray(Image.open(out / "train" / "a_gtFine_panoptic.png")))
    assert set(np.unique(ids)) - {0} == kept
    # pixels of deleted segments became VOID, every kept pixel is unchanged
    keep_mask = np.isin(a, list(kept))
    assert np.array_equal(ids[keep_mask], a[keep_mask])
    assert (ids[~keep_mask] == 0).all()
    # an image that loses nothing is linked, not rewritten
    b_src, b_dst = folder / "b_gtFine_panoptic.png", out / "train" / "b_gtFine_panoptic.png"
    assert os.path.samefile(b_src, b_dst) or b_src.read_bytes() == b_dst.read_bytes()
    # the source ground truth is never modified
    assert np.array_equal(rgb_to_id(np.asarray(Image.open(folder / "a_gtFine_panoptic.png"))), a)


def test_corrupt_training_png_names_the_file(tmp_path):
    gt_json, folder, _ = _write_gt(tmp_path)
    png = folder / "a_gtFine_panoptic.png"
    png.write_bytes(png.read_bytes()[:40])
    out = tmp_path / "o"
    out.mkdir()
    with pytest.raises(InputError, match="a_gtFine_panoptic.png"):
        write_vocab_split(gt_json, folder, "008", out / "split.json", out / "t.json", out / "t")


def test_a_study_configuration_deletes_classes_by_name_or_id(tmp_path, capsys):
    from vocabseg.cli import main

    split = make_split("few", deleted=["person", "26", 33])
    assert split["deleted_ids"] == [24, 26, 33] and split["out_names"] == ["person", "car", "bicycle"]
    assert split["vocab"] == "few" and len(split["in_ids"]) == 16
    gt_json, folder, _ = _write_gt(tmp_path)
    out = tmp_path / "few"
    args = ["vocab-split", "--conf", "few", "--deleted", "car", "--train-json", str(gt_json),
            "--train-folder", str(folder), "--split-out", str(out / "split.json"),
            "--gt-json-out", str(out / "train.json"), "--gt-folder-out", str(out / "train")]
    assert main(args) == 0
    kept = json.loads((out / "train.json").read_text())["annotations"][0]["segments_info"]
    assert {s["category_id"] for s in kept} == {7, 24}  # the car is void now
    assert main([*args[:4], "--deleted", "persn", *args[5:]]) == 1
    assert "error: config key vocab_configs.few: no evaluated class 'persn' in the Cityscapes label set" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "deleted, expected",
    [
        ([24, "person"], "config key vocab_configs.x: a class is deleted twice"),
        (list(EVAL_IDS), "config key vocab_configs.x: deletes every class"),
        ([4], "config key vocab_configs.x: no evaluated class 4"),  # 'dynamic': not evaluated
    ],
)
def test_bad_deleted_classes_name_the_key(deleted, expected):
    with pytest.raises(InputError, match=expected):
        make_split("x", deleted=deleted)
