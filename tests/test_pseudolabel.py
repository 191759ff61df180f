"""FTZS pseudo-labels: in-class ground truth + the teacher's out-class segments."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from vocabseg.approaches.study_model import vocab_ids
from vocabseg.approaches.pseudolabel import build_pseudo_labels, pseudo_segments
from vocabseg.data.labels import EVAL_IDS
from vocabseg.data.panoptic_dataset import PanopticTrainDataset
from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.data.vocab import make_split
from vocabseg.errors import InputError

SPLIT = make_split("002")  # out: person (24), rider (25); car (26) is an in-class
IMG_A, IMG_B = "cityA_000000_000001", "cityA_000000_000002"


def _gt_map() -> np.ndarray:
    """16x32 ground truth: road on top, building bottom-left, a car crowd, the rest VOID."""
    ids = np.zeros((16, 32), np.uint32)
    ids[0:8, :] = 7
    ids[8:16, 0:8] = 11
    ids[8:12, 8:16] = 26
    return ids


# teacher segments of image A: (id, category, score, rows, cols)
TEACHER_A = [
    (1, 24, 0.9, (4, 16), (16, 24)),  # A: person, half on road -> keeps rows 8-15 (64 px)
    (2, 25, 0.3, (8, 16), (24, 28)),  # B: rider, low score -> dropped by score
    (3, 24, 0.8, (8, 16), (0, 9)),  # C: person on the building -> 4 void px -> dropped by size
    (4, 26, 0.99, (8, 16), (28, 32)),  # D: car = in-class -> ignored, stays VOID
    (5, 25, 0.5, (12, 16), (9, 16)),  # E: rider, score exactly at the threshold -> kept (28 px)
    (6, 24, 0.95, (0, 4), (0, 32)),  # F: person entirely on road -> 0 px -> dropped by size
]


def _teacher_map(segments) -> np.ndarray:
    ids = np.zeros((16, 32), np.uint32)
    for sid, _, _, (r0, r1), (c0, c1) in segments:
        ids[r0:r1, c0:c1] = sid
    return ids


def _seg(sid, cat, area, crowd=0):
    return {"id": sid, "category_id": cat, "area": area, "bbox": [0, 0, 1, 1], "iscrowd": crowd}


def _write(tmp_path, teacher_a=TEACHER_A, size_b=(16, 32), with_score=True):
    gt_folder, t_folder, img_root = tmp_path / "gt", tmp_path / "teacher", tmp_path / "img" / "cityA"
    for d in (gt_folder, t_folder, img_root):
        d.mkdir(parents=True)
    gt_a, gt_b = _gt_map(), np.full((16, 32), 7, np.uint32)
    write_panoptic_png(gt_folder / f"{IMG_A}_gtFine_panoptic.png", gt_a)
    write_panoptic_png(gt_folder / f"{IMG_B}_gtFine_panoptic.png", gt_b)
    gt = {
        "images": [{"id": IMG_A, "file_name": "a.png"}, {"id": IMG_B, "file_name": "b.png"}],
        "categories": [{"id": 7, "isthing": 0}],
        "annotations": [
            {"image_id": IMG_A, "file_name": f"{IMG_A}_gtFine_panoptic.png",
             "segments_info": [_seg(7, 7, 256), _seg(11, 11, 64), _seg(26, 26, 32, crowd=1)]},
            {"image_id": IMG_B, "file_name": f"{IMG_B}_gtFine_panoptic.png", "segments_info": [_seg(7, 7, 512)]},
        ],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))

    write_panoptic_png(t_folder / f"{IMG_A}_panoptic.png", _teacher_map(teacher_a))
    t_b = np.ones(size_b, np.uint32)  # one road segment (in-class)
    write_panoptic_png(t_folder / f"{IMG_B}_panoptic.png", t_b)

    def info(sid, cat, score):
        return {"id": sid, "category_id": cat, **({"score": score} if with_score else {})}

    teacher = {"annotations": [
        {"image_id": IMG_B, "file_name": f"{IMG_B}_panoptic.png", "segments_info": [info(1, 7, 0.7)]},
        {"image_id": IMG_A, "file_name": f"{IMG_A}_panoptic.png",
         "segments_info": [info(s, c, p) for s, c, p, *_ in teacher_a]},
    ]}
    (tmp_path / "teacher.json").write_text(json.dumps(teacher))
    for image_id in (IMG_A, IMG_B):
        Image.fromarray(np.full((16, 32, 3), 100, np.uint8)).save(img_root / f"{image_id}_leftImg8bit.png")
    return {
        "gt_json": tmp_path / "gt.json", "gt_folder": gt_folder,
        "teacher_json": tmp_path / "teacher.json", "teacher_folder": t_folder,
        "split": SPLIT, "out_json": tmp_path / "out.json", "out_folder": tmp_path / "out",
    }


def _expected_a():
    ids = _gt_map()
    ids[8:16, 16:24] = 24000  # A
    ids[12:16, 9:16] = 25000  # E
    return ids


def test_pseudo_labels_default_rule(tmp_path):
    paths = _write(tmp_path)
    stats = build_pseudo_labels(**paths)
    assert stats == {"images": 2, "images_with_pseudo": 1, "pseudo_kept": 2, "dropped_score": 1,
                     "dropped_size": 2, "ignored_in_class": 2, "pseudo_pixels": 64 + 28}
    out = json.loads((tmp_path / "out.json").read_text())
    ann_a, ann_b = out["annotations"]
    ids = read_panoptic_png(tmp_path / "out" / ann_a["file_name"])
    assert np.array_equal(ids, _expected_a())
    # ground truth untouched: every GT pixel keeps its id, GT segments_info kept verbatim
    gt = _gt_map()
    assert np.array_equal(ids[gt != 0], gt[gt != 0])
    assert ann_a["segments_info"][:3] == [_seg(7, 7, 256), _seg(11, 11, 64), _seg(26, 26, 32, crowd=1)]
    assert ann_a["segments_info"][3:] == [
        {"id": 24000, "category_id": 24, "iscrowd": 0, "area": 64, "bbox": [16, 8, 8, 8], "pseudo": True},
        {"id": 25000, "category_id": 25, "iscrowd": 0, "area": 28, "bbox": [9, 12, 7, 4], "pseudo": True},
    ]
    # image B gained nothing: its PNG is the ground truth's
    assert ann_b["segments_info"] == [_seg(7, 7, 512)]
    assert (tmp_path / "out" / ann_b["file_name"]).read_bytes() == (
        tmp_path / "gt" / f"{IMG_B}_gtFine_panoptic.png").read_bytes()
    assert [c["id"] for c in out["categories"]] == list(EVAL_IDS)
    assert out["images"] == json.loads((tmp_path / "gt.json").read_text())["images"]
    assert not (tmp_path / "out.tmp").exists()


def test_threshold_and_min_pixels_are_honoured(tmp_path):
    paths = _write(tmp_path)
    stats = build_pseudo_labels(**paths, threshold=0.25, min_pixels=4)
    # B (score 0.3) and C (4 void px) now pass; ids are given in teacher order, the
    # smallest free one per class: A 24000, B 25000, C 24001, E 25001
    assert (stats["pseudo_kept"], stats["dropped_score"], stats["dropped_size"]) == (4, 0, 1)
    ids = read_panoptic_png(tmp_path / "out" / f"{IMG_A}_gtFine_panoptic.png")
    expected = _gt_map()
    expected[8:16, 16:24] = 24000
    expected[8:16, 24:28] = 25000
    expected[12:16, 8:9] = 24001
    expected[12:16, 9:16] = 25001
    assert np.array_equal(ids, expected)
    # B and E fail the score, A (64 px), C and F the size
    stats = build_pseudo_labels(**paths, threshold=0.51, min_pixels=65)
    assert (stats["pseudo_kept"], stats["dropped_score"], stats["dropped_size"]) == (0, 2, 3)
    assert np.array_equal(read_panoptic_png(tmp_path / "out" / f"{IMG_A}_gtFine_panoptic.png"), _gt_map())


def test_in_class_ground_truth_is_never_overwritten():
    rng = np.random.default_rng(0)
    gt = rng.choice([0, 7, 11, 26], size=(24, 40), p=[0.4, 0.2, 0.2, 0.2]).astype(np.uint32)
    teacher = rng.integers(1, 6, size=(24, 40)).astype(np.uint32)
    t_segments = [{"id": i, "category_id": 24 if i % 2 else 25, "score": 0.9} for i in range(1, 6)]
    ids, segments, counts = pseudo_segments(
        gt, [_seg(7, 7, 1), _seg(11, 11, 1), _seg(26, 26, 1, 1)], teacher, t_segments, {24, 25}, min_pixels=1)
    assert np.array_equal(ids[gt != 0], gt[gt != 0])
    assert counts["kept"] == 5 and (ids[gt == 0] != 0).all()  # every void pixel got a pseudo label
    pseudo = [s for s in segments if s.get("pseudo")]
    assert len({s["id"] for s in segments}) == len(segments) == 8
    for s in pseudo:
        assert s["area"] == int((ids == s["id"]).sum()) and s["iscrowd"] == 0


def test_dataset_reads_the_pseudo_segments_as_targets(tmp_path):
    paths = _write(tmp_path)
    build_pseudo_labels(**paths)
    all_ids = vocab_ids(None)
    ds = PanopticTrainDataset(tmp_path / "out.json", tmp_path / "out", tmp_path / "img", all_ids)
    _, target = ds.get(0, seed=3)
    index = {c: k for k, c in enumerate(all_ids)}
    # road, building, then the pseudo person and rider; the car crowd is dropped as usual
    assert target["labels"].tolist() == [index[7], index[11], index[24], index[25]]
    expected = _expected_a()
    for mask, sid in zip(target["masks"], (7, 11, 24000, 25000)):
        assert np.array_equal(mask.numpy(), expected == sid)
    # with the in-vocabulary only, the pseudo segments are not targets
    ds_in = PanopticTrainDataset(tmp_path / "out.json", tmp_path / "out", tmp_path / "img", SPLIT["in_ids"])
    assert len(ds_in.get(0, seed=3)[1]["labels"]) == 2


def test_bad_inputs_name_the_file(tmp_path):
    paths = _write(tmp_path / "a")
    teacher = json.loads(paths["teacher_json"].read_text())
    teacher["annotations"] = teacher["annotations"][1:]  # image B has no prediction
    paths["teacher_json"].write_text(json.dumps(teacher))
    with pytest.raises(InputError, match=f"teacher.json.*{IMG_B}"):
        build_pseudo_labels(**paths)

    paths = _write(tmp_path / "b")
    os.remove(paths["teacher_folder"] / f"{IMG_A}_panoptic.png")
    with pytest.raises(InputError, match=f"{IMG_A}_panoptic.png"):
        build_pseudo_labels(**paths)

    paths = _write(tmp_path / "c", size_b=(16, 31))
    with pytest.raises(InputError, match=f"{IMG_B}_panoptic.png.*differs"):
        build_pseudo_labels(**paths)

    paths = _write(tmp_path / "d", with_score=False)
    with pytest.raises(InputError, match="teacher.json.*'score'"):
        build_pseudo_labels(**paths)

    paths = _write(tmp_path / "e")
    with pytest.raises(InputError, match="threshold"):
        build_pseudo_labels(**paths, threshold=1.5)
    with pytest.raises(InputError, match="min_pixels"):
        build_pseudo_labels(**paths, min_pixels=0)
    assert not paths["out_json"].exists()


def test_a_bad_split_is_an_input_error(tmp_path):
    paths = _write(tmp_path)
    with pytest.raises(InputError, match="out_ids"):
        build_pseudo_labels(**{**paths, "split": {"in_ids": [7]}})
    with pytest.raises(InputError, match="both"):
        build_pseudo_labels(**{**paths, "split": {"in_ids": [7, 24], "out_ids": [24]}})
