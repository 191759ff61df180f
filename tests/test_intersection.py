"""Tests of vocabseg.approaches.intersection: the per-image merge rule on hand-made
arrays, and end to end on files against vocabseg.evaluation (In PQ from the in model,
Out PQ from the out model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vocabseg.approaches import intersection
from vocabseg.approaches.intersection import intersect_predictions, merge_segments, split_ids
from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.data.vocab import make_split
from vocabseg.errors import InputError
from vocabseg.evaluation import evaluate_panoptic
from vocabseg.data.labelset import LabelSet
from vocabseg.evaluation.synthetic import gt_segments_info, make_prediction_ids, write_dataset
from vocabseg.fileio import read_json

TOL = 1e-12


# --------------------------------------------------------------------------- helpers


def segs(pairs) -> list[dict]:
    """``segments_info`` from (id, category_id) pairs."""
    return [{"id": i, "category_id": c} for i, c in pairs]


def write_prediction(root: Path, images: dict[str, tuple[np.ndarray, list[dict]]]) -> tuple[Path, Path]:
    """Write {image_id: (ids, segments_info)} as a prediction JSON + PNG folder."""
    folder = root / "pred"
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, (ids, segments) in images.items():
        name = f"{image_id}_pred.png"
        write_panoptic_png(folder / name, ids)
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})
    (root / "pred.json").write_text(json.dumps({"annotations": annotations}))
    return root / "pred.json", folder


def write_gt(root: Path, images: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """Write {image_id: GT ids} as a csCreatePanopticImgs-style GT JSON + PNG folder."""
    folder = root / "gt"
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, ids in images.items():
        name = f"{image_id}_gtFine_panoptic.png"
        write_panoptic_png(folder / name, ids)
        annotations.append({"image_id": image_id, "file_name": name, "segments_info": gt_segments_info(ids)})
    data = {"images": [{"id": i} for i in images], "annotations": annotations, "categories": LabelSet.cityscapes().categories()}
    (root / "gt.json").write_text(json.dumps(data))
    return root / "gt.json", folder


def only_present(ids: np.ndarray, segments: list[dict]) -> list[dict]:
    """The entries of ``segments`` whose id still has a pixel in ``ids``."""
    present = set(np.unique(ids).tolist())
    return [s for s in segments if s["id"] in present]


def assert_group_equal(a: dict, b: dict) -> None:
    assert a["n"] == b["n"]
    for key in ("pq", "sq", "rq"):
        assert abs(a[key] - b[key]) <= TOL, key


# --------------------------------------------------------------------------- per image


IN_IDS, OUT_IDS = [7, 8, 26], [24, 33]  # in: road, sidewalk, car; out: person, bicycle


@pytest.mark.parametrize("dense", [True, False])
def test_merge_rule_by_hand(monkeypatch, dense):
    """Overlap (out wins), an emptied segment dropped, discarded classes, VOID, renumbering.

    Both id-lookup paths: the dense table and np.unique (large ids).
    """
    if not dense:
        monkeypatch.setattr(intersection, "DENSE_MAX_ID", 0)
    in_map = np.array(
        [
            [1, 1, 2, 2],
            [1, 1, 2, 2],
            [3, 0, 4, 5],
        ],
        dtype=np.uint32,
    )
    # 1 road, 2 sidewalk, 3 person (out-class of the in model: discarded),
    # 4 car (in-class, fully covered by the out model's bicycle: dropped),
    # 5 building (in neither list: discarded)
    in_segments = segs([(1, 7), (2, 8), (3, 24), (4, 26), (5, 11)])
    out_map = np.array(
        [
            [0, 9, 9, 0],
            [0, 0, 0, 0],
            [0, 8, 4, 7],
        ],
        dtype=np.uint32,
    )
    # 9 person (kept, on top of road and sidewalk), 8 road and 7 car (in-classes of
    # the out model: discarded), 4 bicycle (kept; same id as the in model's car)
    out_segments = segs([(9, 24), (8, 7), (4, 33), (7, 26)])
    ids, segments = merge_segments(in_map, in_segments, out_map, out_segments, IN_IDS, OUT_IDS, overlap="out")
    expected = np.array(
        [
            [1, 3, 3, 2],
            [1, 1, 2, 2],
            [0, 0, 4, 0],
        ]
    )
    np.testing.assert_array_equal(ids, expected)
    assert ids.dtype == np.uint32
    assert segments == segs([(1, 7), (2, 8), (3, 24), (4, 33)])


# One overlap case for every rule: road (in model, score 0.6) and a person (out model)
# that covers two road pixels and one void pixel of the in model.
OVERLAP_IN = np.array([[1, 1, 1], [1, 1, 0]], dtype=np.uint32)
OVERLAP_OUT = np.array([[0, 2, 2], [0, 0, 2]], dtype=np.uint32)


@pytest.mark.parametrize(
    "overlap, person_score, expected",
    [
        ("in", 0.9, [[1, 1, 1], [1, 1, 2]]),  # the in model keeps the road; person only on its void
        ("out", 0.1, [[1, 2, 2], [1, 1, 2]]),  # the person is pasted on top
        ("score", 0.9, [[1, 2, 2], [1, 1, 2]]),  # 0.9 > 0.6: person
        ("score", 0.1, [[1, 1, 1], [1, 1, 2]]),  # 0.1 < 0.6: road
        ("score", 0.6, [[1, 1, 1], [1, 1, 2]]),  # a tie goes to the in model
    ],
)
def test_overlap_rules(overlap, person_score, expected):
    in_segments = [{"id": 1, "category_id": 7, "score": 0.6}]
    out_segments = [{"id": 2, "category_id": 24, "score": person_score}]
    ids, segments = merge_segments(OVERLAP_IN, in_segments, OVERLAP_OUT, out_segments, IN_IDS, OUT_IDS, overlap=overlap)
    np.testing.assert_array_equal(ids, expected)
    assert [s["category_id"] for s in segments] == [7, 24]


def test_overlap_in_drops_an_out_segment_the_in_model_covers_and_score_needs_scores():
    in_map = np.ones((2, 2), dtype=np.uint32)
    out_map = np.array([[0, 5], [0, 5]], dtype=np.uint32)
    ids, segments = merge_segments(in_map, segs([(1, 7)]), out_map, segs([(5, 24)]), IN_IDS, OUT_IDS, overlap="in")
    np.testing.assert_array_equal(ids, np.ones((2, 2)))
    assert segments == segs([(1, 7)])
    with pytest.raises(InputError, match="B.png: segment 5 has no numeric 'score'"):
        merge_segments(
            in_map, [{"id": 1, "category_id": 7, "score": 0.5}], out_map, segs([(5, 24)]), IN_IDS, OUT_IDS,
            overlap="score", names=("A.png", "B.png"),
        )
    with pytest.raises(InputError, match="overlap rule 'max' is not one of"):
        merge_segments(in_map, segs([(1, 7)]), out_map, segs([(5, 24)]), IN_IDS, OUT_IDS, overlap="max")


def test_merge_without_out_segments_is_the_in_models_in_classes():
    in_map = np.array([[5, 5, 6], [7, 7, 0]], dtype=np.uint32)
    in_segments = segs([(7, 8), (5, 7), (6, 24)])  # segments_info order decides the new ids
    out_map = np.array([[1, 1, 1], [1, 1, 1]], dtype=np.uint32)
    ids, segments = merge_segments(in_map, in_segments, out_map, segs([(1, 7)]), IN_IDS, OUT_IDS)
    np.testing.assert_array_equal(ids, [[2, 2, 0], [1, 1, 0]])
    assert segments == segs([(1, 8), (2, 7)])


def test_merge_conventions_of_the_evaluator():
    """A repeated id takes its last entry; an id-0 entry owns nothing; an empty entry is
    dropped; other fields (predict's score) are kept, area and bbox dropped."""
    in_map = np.array([[3, 3], [0, 0]], dtype=np.uint32)
    in_segments = segs([(3, 24), (0, 7), (42, 8)]) + [{"id": 3, "category_id": 7, "score": 0.9, "area": 2}]
    out_map = np.array([[0, 0], [0, 2]], dtype=np.uint32)
    out_segments = [{"id": 2, "category_id": 33, "score": 0.5, "bbox": [1, 1, 1, 1]}]
    ids, segments = merge_segments(in_map, in_segments, out_map, out_segments, IN_IDS, OUT_IDS)
    np.testing.assert_array_equal(ids, [[1, 1], [0, 2]])
    assert segments == [{"id": 1, "category_id": 7, "score": 0.9}, {"id": 2, "category_id": 33, "score": 0.5}]


def test_merge_errors_name_the_inputs():
    a = np.ones((2, 3), dtype=np.uint32)
    with pytest.raises(InputError, match="A.png has size \\(3, 2\\), B.png has size \\(2, 3\\)"):
        merge_segments(a, segs([(1, 7)]), a.T, segs([(1, 24)]), IN_IDS, OUT_IDS, names=("A.png", "B.png"))
    with pytest.raises(InputError, match=r"B.png: segment id\(s\) \[1\] are in the PNG"):
        merge_segments(a, segs([(1, 7)]), a, segs([(2, 24)]), IN_IDS, OUT_IDS, names=("A.png", "B.png"))


def test_split_ids():
    assert split_ids(make_split("008")) == (
        [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23],
        [24, 25, 26, 27, 28, 31, 32, 33],
    )
    with pytest.raises(InputError, match="26"):
        split_ids({"in_ids": [7, 26], "out_ids": [24, 26]})
    with pytest.raises(InputError, match="out_ids"):
        split_ids({"in_ids": [7]})


# --------------------------------------------------------------------------- files


def test_hand_computed_overlap_end_to_end(tmp_path):
    """A 4x6 image: GT road with a 2x2 person; the in model sees road everywhere (and a
    spurious car), the out model a 2x3 person that spills onto the road.

    Merged: road = 24 - 2 (car: VOID) - 6 (person) = 16 px, all on GT road (area 20):
    IoU 16/20 = 0.8; person: intersection 4, union 6 + 4 - 4 = 6, IoU 2/3.
    """
    gt = np.full((4, 6), 7, dtype=np.uint32)
    gt[1:3, 2:4] = 24000
    gt_json, gt_folder = write_gt(tmp_path / "gt", {"img": gt})
    in_map = np.ones((4, 6), dtype=np.uint32)
    in_map[0, :2] = 3  # a car, out-class of the split below: discarded
    in_json, in_folder = write_prediction(tmp_path / "in", {"img": (in_map, segs([(1, 7), (3, 26)]))})
    out_map = np.full((4, 6), 6, dtype=np.uint32)
    out_map[1:3, 2:5] = 5
    out_json, out_folder = write_prediction(tmp_path / "out", {"img": (out_map, segs([(5, 24), (6, 7)]))})
    split = {"in_ids": [7], "out_ids": [24, 26]}

    n = intersect_predictions(
        in_json, in_folder, out_json, out_folder, split, tmp_path / "m.json", tmp_path / "m", overlap="out"
    )
    assert n == 1
    merged = read_json(tmp_path / "m.json")
    assert merged == {
        "annotations": [{"image_id": "img", "file_name": "img_panoptic.png", "segments_info": segs([(1, 7), (2, 24)])}]
    }
    expected = np.array(
        [
            [0, 0, 1, 1, 1, 1],
            [1, 1, 2, 2, 2, 1],
            [1, 1, 2, 2, 2, 1],
            [1, 1, 1, 1, 1, 1],
        ]
    )
    np.testing.assert_array_equal(read_panoptic_png(tmp_path / "m" / "img_panoptic.png"), expected)

    result = evaluate_panoptic(gt_json, gt_folder, tmp_path / "m.json", tmp_path / "m", split=split)
    assert abs(result["In"]["pq"] - 0.8) <= TOL and result["In"]["n"] == 1
    assert abs(result["Out"]["pq"] - 2 / 3) <= TOL and result["Out"]["n"] == 1
    assert abs(result["All"]["pq"] - (0.8 + 2 / 3) / 2) <= TOL
    # the in model alone: road 22 px, 18 on GT road: IoU 18 / (22 + 20 - 18) = 0.75;
    # person a false negative, car a false positive
    alone = evaluate_panoptic(gt_json, gt_folder, in_json, in_folder, split=split)
    assert abs(alone["per_class"]["7"]["pq"] - 0.75) <= TOL
    assert alone["Out"]["pq"] == 0.0 and alone["Out"]["n"] == 2


def _two_models(tmp_path: Path, split: dict, *, overlap: bool):
    """GT and two synthetic predictions of it (A = in model, B = out model).

    Without ``overlap``, B is made VOID wherever A has an in-class segment.
    """
    ds = write_dataset(tmp_path / "data", n_images=3, height=64, width=128, seed=21)
    in_classes = set(split["in_ids"])
    a_anns = {a["image_id"]: a for a in read_json(ds.pred_json)["annotations"]}
    rng = np.random.default_rng(1234)
    b_images = {}
    for gt_ann in read_json(ds.gt_json)["annotations"]:
        gt_ids = read_panoptic_png(ds.gt_folder / gt_ann["file_name"])
        b_ids, b_segments = make_prediction_ids(rng, gt_ids, gt_ann["segments_info"])
        if not overlap:
            a_ann = a_anns[gt_ann["image_id"]]
            a_ids = read_panoptic_png(ds.pred_folder / a_ann["file_name"])
            a_in = [s["id"] for s in a_ann["segments_info"] if s["category_id"] in in_classes]
            b_ids[np.isin(a_ids, a_in)] = 0
            b_segments = only_present(b_ids, b_segments)
        b_images[gt_ann["image_id"]] = (b_ids, b_segments)
    b_json, b_folder = write_prediction(tmp_path / "b", b_images)
    return ds, b_json, b_folder


def test_in_wins_keeps_the_in_models_in_pq_exactly(tmp_path):
    """The seed's rule: with overlaps, In PQ (every in-class) is the in model's."""
    split = make_split("004")
    ds, b_json, b_folder = _two_models(tmp_path, split, overlap=True)
    merged_json, merged_folder = tmp_path / "merged.json", tmp_path / "merged"
    intersect_predictions(ds.pred_json, ds.pred_folder, b_json, b_folder, split, merged_json, merged_folder, overlap="in")
    a = evaluate_panoptic(ds.gt_json, ds.gt_folder, ds.pred_json, ds.pred_folder, split=split)
    m = evaluate_panoptic(ds.gt_json, ds.gt_folder, merged_json, merged_folder, split=split)
    assert m["In"]["n"] > 5
    assert_group_equal(m["In"], a["In"])
    for c in split["in_ids"]:
        assert m["per_class"][str(c)] == a["per_class"][str(c)]


@pytest.mark.parametrize("overlap", [False, True])
def test_in_from_in_model_out_from_out_model(tmp_path, overlap):
    """Out PQ (every out-class) is the out model's; without overlap In PQ is the in model's."""
    split = make_split("004")  # out: person, rider, car, truck; in: the rest
    ds, b_json, b_folder = _two_models(tmp_path, split, overlap=overlap)
    merged_json, merged_folder = tmp_path / "merged.json", tmp_path / "merged"
    n = intersect_predictions(
        ds.pred_json, ds.pred_folder, b_json, b_folder, split, merged_json, merged_folder, overlap="out"
    )
    assert n == 3

    def evaluate(pred_json, pred_folder):
        return evaluate_panoptic(ds.gt_json, ds.gt_folder, pred_json, pred_folder, split=split)

    a, b, m = evaluate(ds.pred_json, ds.pred_folder), evaluate(b_json, b_folder), evaluate(merged_json, merged_folder)
    assert m["In"]["n"] > 5 and m["Out"]["n"] >= 3
    assert_group_equal(m["Out"], b["Out"])
    for c in split["out_ids"]:
        assert m["per_class"][str(c)] == b["per_class"][str(c)]
    if not overlap:
        assert_group_equal(m["In"], a["In"])
        for c in split["in_ids"]:
            assert m["per_class"][str(c)] == a["per_class"][str(c)]
    # not vacuous: the two models differ on both groups
    assert abs(a["Out"]["pq"] - b["Out"]["pq"]) > 0.01 and abs(a["In"]["pq"] - b["In"]["pq"]) > 0.01
    # the merged files: ids 1..n per image, in JSON order, every class in its model's list
    for ann in read_json(merged_json)["annotations"]:
        ids = read_panoptic_png(merged_folder / ann["file_name"])
        assert [s["id"] for s in ann["segments_info"]] == list(range(1, len(ann["segments_info"]) + 1))
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
        assert all(s["category_id"] in split["in_ids"] + split["out_ids"] for s in ann["segments_info"])


def test_missing_image_and_size_mismatch_name_the_file(tmp_path):
    a = np.ones((2, 3), dtype=np.uint32)
    in_json, in_folder = write_prediction(tmp_path / "in", {"x": (a, segs([(1, 7)])), "y": (a, segs([(1, 7)]))})
    out_json, out_folder = write_prediction(tmp_path / "out", {"x": (a.T.copy(), segs([(1, 24)]))})
    split = {"in_ids": [7], "out_ids": [24]}
    args = (split, tmp_path / "m.json", tmp_path / "m")
    with pytest.raises(InputError, match=r"out/pred.json: no prediction for image id\(s\) \['y'\]"):
        intersect_predictions(in_json, in_folder, out_json, out_folder, *args)
    # the other way round (the file without 'y' supplies the in-classes): same file named
    with pytest.raises(InputError, match=r"out/pred.json: no prediction for image id\(s\) \['y'\] of .*in/pred.json"):
        intersect_predictions(out_json, out_folder, in_json, in_folder, *args)
    edit = read_json(in_json)
    edit["annotations"].pop()
    in_json.write_text(json.dumps(edit))
    with pytest.raises(InputError, match="x_pred.png .*has size") as err:
        intersect_predictions(in_json, in_folder, out_json, out_folder, *args)
    assert str(out_folder / "x_pred.png") in str(err.value)
    assert not (tmp_path / "m.json").exists()
