"""Tests of vocabseg.evaluation: exact agreement with cityscapesscripts, and more.

The ground truth and predictions are synthetic (vocabseg.evaluation.synthetic):
Cityscapes-like GT written the way csCreatePanopticImgs writes it, and predictions
with good and poor matches, wrong classes, crowd and VOID overlaps, classes
without GT and VOID-only images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.evaluation.evalPanopticSemanticLabeling import evaluatePanoptic
from PIL import Image

from vocabseg import cli
from vocabseg.data.labels import STUFF_IDS, THING_IDS
from vocabseg.errors import InputError
from vocabseg.evaluation import evaluate_panoptic, write_metrics
from vocabseg.evaluation import panoptic as pan
from vocabseg.data.panoptic_png import read_panoptic_png
from vocabseg.fileio import read_json
from vocabseg.evaluation.synthetic import gt_segments_info, ids_to_rgb, write_dataset

TOL = 1e-12
GROUPS = ("All", "Things", "Stuff")
DECODERS = ["auto", "pil"]


# --------------------------------------------------------------------------- helpers


def reference(ds, tmp_path: Path) -> dict:
    """cityscapesscripts' evaluatePanoptic on ``ds``, as written to its results file."""
    out = tmp_path / "reference_results.json"
    evaluatePanoptic(
        str(ds.gt_json), str(ds.gt_folder), str(ds.pred_json), str(ds.pred_folder), str(out)
    )
    return json.loads(out.read_text())


def ours(ds, **kwargs) -> dict:
    """vocabseg's evaluate_panoptic on ``ds``."""
    return evaluate_panoptic(ds.gt_json, ds.gt_folder, ds.pred_json, ds.pred_folder, **kwargs)


def assert_same_as_reference(mine: dict, ref: dict) -> None:
    """Every All/Things/Stuff/per_class field agrees to TOL (and n exactly)."""
    for group in GROUPS:
        assert set(mine[group]) == set(ref[group]) == {"pq", "sq", "rq", "n"}
        assert mine[group]["n"] == ref[group]["n"], group
        for key in ("pq", "sq", "rq"):
            assert abs(mine[group][key] - ref[group][key]) <= TOL, (group, key)
    assert set(mine["per_class"]) == set(ref["per_class"])
    for cat, values in ref["per_class"].items():
        assert set(mine["per_class"][cat]) == set(values)
        for key, value in values.items():
            assert abs(mine["per_class"][cat][key] - value) <= TOL, (cat, key)


def edit_json(path: Path, edit) -> None:
    """Apply ``edit`` to the parsed JSON at ``path`` and write it back."""
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def write_ids(path: Path, ids: np.ndarray) -> None:
    """Write (H, W) ids as a COCO-panoptic RGB PNG."""
    Image.fromarray(ids_to_rgb(ids), mode="RGB").save(path)


def stats_of(ds) -> tuple[pan.Categories, pan.ImageStats]:
    """Categories and accumulated per-category counts of ``ds`` (internal API)."""
    gt, pred = read_json(ds.gt_json), read_json(ds.pred_json)
    categories = pan.Categories.from_gt_json(gt)
    tasks = pan.build_tasks(gt, ds.gt_json, ds.gt_folder, pred, ds.pred_json, ds.pred_folder)
    return categories, pan.accumulate(tasks, len(categories.ids))


@pytest.fixture
def small_ds(tmp_path):
    """Three 64x128 image pairs."""
    return write_dataset(tmp_path / "data", n_images=3, seed=11)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize(
    "seed, options",
    [
        (0, {}),
        (1, {"large_ids": True}),  # random 24-bit predicted ids (binary-search path)
        (2, {"empty_images": 2}),  # two predictions with only VOID
        (3, {"n_images": 8, "height": 128, "width": 256}),
        (4, {"n_images": 3, "height": 256, "width": 512}),
    ],
)
def test_matches_cityscapesscripts(tmp_path, seed, options):
    kwargs = {"n_images": 5, "height": 64, "width": 128, **options}
    ds = write_dataset(tmp_path / "data", seed=seed, **kwargs)
    ref = reference(ds, tmp_path)
    mine = ours(ds)
    assert_same_as_reference(mine, ref)
    assert mine["Things"]["n"] > 0 and mine["Stuff"]["n"] > 0
    # the written file agrees too
    write_metrics(mine, tmp_path / "ours.json")
    assert_same_as_reference(json.loads((tmp_path / "ours.json").read_text()), ref)


def test_data_exercise_every_rule(tmp_path):
    """The synthetic data hit TP, FP, FN, crowd, VOID and classes without GT."""
    ds = write_dataset(tmp_path / "data", n_images=5, seed=0)
    _, total = stats_of(ds)
    assert total.tp.sum() > 0 and total.fp.sum() > 0 and total.fn.sum() > 0
    gt, pred = read_json(ds.gt_json), read_json(ds.pred_json)
    assert any(s["iscrowd"] for a in gt["annotations"] for s in a["segments_info"])
    without_gt = [
        {s["category_id"] for s in p["segments_info"]}
        - {s["category_id"] for s in g["segments_info"]}
        for g, p in zip(gt["annotations"], pred["annotations"])
    ]
    assert any(without_gt)  # predicted classes without ground truth in the image


def test_irregular_inputs_match_cityscapesscripts(tmp_path):
    """Odd but legal inputs behave like the reference."""
    ds = write_dataset(tmp_path / "data", n_images=3, seed=5)
    gt = read_json(ds.gt_json)
    first = gt["annotations"][0]
    # a GT PNG id that the GT JSON lacks (ignored, not VOID)
    ids = read_panoptic_png(ds.gt_folder / first["file_name"])
    ids[:4, :4] = 9999
    write_ids(ds.gt_folder / first["file_name"], ids)

    def edit_gt(data):
        segments = data["annotations"][1]["segments_info"]
        # a GT JSON segment missing from the PNG (a false negative)
        segments.append(
            {"id": 24999, "category_id": 24, "area": 50, "bbox": [0, 0, 5, 10], "iscrowd": 0}
        )
        # a GT segment of a category outside the GT categories
        segments[0]["category_id"] = 3

    edit_json(ds.gt_json, edit_gt)

    def edit_pred(data):
        segments = data["annotations"][2]["segments_info"]
        segments.insert(0, dict(segments[-1], category_id=7))  # repeated id: the last entry wins

    edit_json(ds.pred_json, edit_pred)
    assert_same_as_reference(ours(ds), reference(ds, tmp_path))


def test_last_crowd_segment_of_a_category_counts(tmp_path):
    """Two crowd segments of one category: only the last one can excuse a false positive.

    (csCreatePanopticImgs writes at most one crowd segment per category and image,
    COCO-style GT may have several.)
    """
    ds = write_dataset(tmp_path / "data", n_images=1, seed=6)
    gt_ann = read_json(ds.gt_json)["annotations"][0]
    pred_ann = read_json(ds.pred_json)["annotations"][0]
    gt_ids = read_panoptic_png(ds.gt_folder / gt_ann["file_name"])
    pred_ids = read_panoptic_png(ds.pred_folder / pred_ann["file_name"])
    gt_ids[10:30, 10:40] = 32  # first crowd region of "motorcycle"
    gt_ids[10:30, 60:90] = 32900  # second (last) crowd region of "motorcycle"
    pred_ids[12:28, 12:38] = 777001  # a motorcycle on the first crowd region only
    write_ids(ds.gt_folder / gt_ann["file_name"], gt_ids)
    write_ids(ds.pred_folder / pred_ann["file_name"], pred_ids)

    segments = gt_segments_info(gt_ids)
    for s in segments:
        if s["id"] == 32900:
            s["iscrowd"] = 1
    edit_json(ds.gt_json, lambda d: d["annotations"][0].update(segments_info=segments))
    present = set(np.unique(pred_ids).tolist())
    categories = {s["id"]: s["category_id"] for s in pred_ann["segments_info"]} | {777001: 32}
    pred_segments = [{"id": i, "category_id": categories[i]} for i in sorted(present - {0})]
    edit_json(ds.pred_json, lambda d: d["annotations"][0].update(segments_info=pred_segments))

    mine = ours(ds)
    assert_same_as_reference(mine, reference(ds, tmp_path))
    categories, total = stats_of(ds)
    assert total.fp[categories.index()[32]] == 1  # not excused by the first crowd region


def test_group_without_classes_is_none(tmp_path):
    """No thing in GT nor prediction: Things has n = 0 and pq/sq/rq None.

    cityscapesscripts divides by zero there.
    """
    ds = write_dataset(tmp_path / "data", n_images=3, seed=2, things=False)
    mine = ours(ds)
    assert mine["Things"] == {"pq": None, "sq": None, "rq": None, "n": 0}
    assert mine["Stuff"]["n"] > 0 and mine["All"] == {**mine["Stuff"]}
    assert all(mine["per_class"][str(c)] == {"pq": 0.0, "sq": 0.0, "rq": 0.0} for c in THING_IDS)
    with pytest.raises(ZeroDivisionError):
        reference(ds, tmp_path)
    write_metrics(mine, tmp_path / "m.json")
    assert json.loads((tmp_path / "m.json").read_text())["Things"]["pq"] is None


# --------------------------------------------------------------------------- options


def test_threads_give_identical_results(tmp_path):
    ds = write_dataset(tmp_path / "data", n_images=6, seed=7)
    assert ours(ds, threads=2) == ours(ds, threads=1)


def test_binary_search_path_matches_lookup_tables(tmp_path, monkeypatch):
    ds = write_dataset(tmp_path / "data", n_images=3, seed=9)
    with_tables = ours(ds)
    monkeypatch.setattr(pan, "LUT_MAX_ID", 0)  # every id goes through np.searchsorted
    assert ours(ds) == with_tables


def test_invalid_arguments(small_ds):
    with pytest.raises(InputError, match="threads"):
        ours(small_ds, threads=0)
    with pytest.raises(ValueError, match="decoder"):
        ours(small_ds, decoder="magic")


# --------------------------------------------------------------------------- In / Out


def test_in_out_groups(small_ds):
    categories, total = stats_of(small_ds)
    split = {
        "vocab": "test",
        "in_ids": [7, 8, 11, 24, 26, 33, 3],  # 3 is not a GT category: ignored
        "out_ids": [12, 13, 17, 19, 20, 21, 22, 23, 25, 27, 28, 31, 32],
        "in_names": [],
        "out_names": [],
        "deleted_ids": [],
    }
    mine = ours(small_ds, split=split)
    present = {
        str(c): total.tp[k] + total.fp[k] + total.fn[k] > 0 for k, c in enumerate(categories.ids)
    }
    for group, ids in (("In", split["in_ids"]), ("Out", split["out_ids"])):
        members = [str(c) for c in ids if str(c) in present and present[str(c)]]
        assert mine[group]["n"] == len(members)
        for key in ("pq", "sq", "rq"):
            expected = sum(mine["per_class"][c][key] for c in members) / len(members)
            assert abs(mine[group][key] - expected) <= TOL
    # the vocabulary split of the study: In = Stuff, Out = Things
    study = {"in_ids": list(STUFF_IDS), "out_ids": list(THING_IDS)}
    mine = ours(small_ds, split=study)
    assert mine["In"] == mine["Stuff"] and mine["Out"] == mine["Things"]
    assert "In" not in ours(small_ds)


# --------------------------------------------------------------------------- semantic


def semantic_confusion_direct(ds, category_ids: list[int]) -> np.ndarray:
    """(K, K + 1) confusion from per-pixel category maps built straight from the files."""
    k = len(category_ids)
    index = {c: i for i, c in enumerate(category_ids)}
    gt, pred = read_json(ds.gt_json), read_json(ds.pred_json)
    predictions = {a["image_id"]: a for a in pred["annotations"]}
    confusion = np.zeros((k, k + 1), dtype=np.int64)
    for gt_ann in gt["annotations"]:
        pred_ann = predictions[gt_ann["image_id"]]
        rgb_gt = np.asarray(Image.open(ds.gt_folder / gt_ann["file_name"]), dtype=np.int64)
        rgb_pred = np.asarray(Image.open(ds.pred_folder / pred_ann["file_name"]), dtype=np.int64)
        id_gt = rgb_gt[..., 0] + 256 * rgb_gt[..., 1] + 65536 * rgb_gt[..., 2]
        id_pred = rgb_pred[..., 0] + 256 * rgb_pred[..., 1] + 65536 * rgb_pred[..., 2]
        gt_class = np.full(id_gt.shape, -1)
        for s in gt_ann["segments_info"]:  # crowd segments included
            gt_class[id_gt == s["id"]] = index.get(s["category_id"], -1)
        pred_class = np.full(id_pred.shape, k)  # VOID
        for s in pred_ann["segments_info"]:
            pred_class[id_pred == s["id"]] = index[s["category_id"]]
        valid = gt_class >= 0
        cells = gt_class[valid] * (k + 1) + pred_class[valid]
        confusion += np.bincount(cells, minlength=k * (k + 1)).reshape(k, k + 1)
    return confusion


def test_semantic_iou_matches_direct_computation(tmp_path):
    ds = write_dataset(tmp_path / "data", n_images=4, seed=3, empty_images=1)
    categories = [c["id"] for c in read_json(ds.gt_json)["categories"]]
    confusion = semantic_confusion_direct(ds, categories)
    k = len(categories)
    tp = np.diag(confusion[:, :k])
    denominator = confusion.sum(axis=1) + confusion[:, :k].sum(axis=0) - tp
    mine = ours(ds)["semantic"]
    expected = {}
    for i, cat in enumerate(categories):
        expected[str(cat)] = None if denominator[i] == 0 else tp[i] / denominator[i]
    assert mine["per_class"].keys() == expected.keys()
    for cat, value in expected.items():
        if value is None:
            assert mine["per_class"][cat] is None
        else:
            assert abs(mine["per_class"][cat] - value) <= TOL
    values = [v for v in expected.values() if v is not None]
    assert abs(mine["miou"] - sum(values) / len(values)) <= TOL


def test_semantic_void_prediction_is_a_false_negative(tmp_path):
    ds = write_dataset(tmp_path / "data", n_images=2, seed=4, empty_images=2)
    semantic = ours(ds)["semantic"]
    assert semantic["miou"] == 0.0
    assert all(v in (0.0, None) for v in semantic["per_class"].values())


# --------------------------------------------------------------------------- sanity errors


def test_missing_prediction_names_file_and_image(small_ds):
    edit_json(small_ds.pred_json, lambda d: d["annotations"].pop(1))
    with pytest.raises(InputError, match="no prediction") as err:
        ours(small_ds)
    assert small_ds.pred_json.name in str(err.value) and small_ds.image_ids[1] in str(err.value)


def test_png_id_missing_from_json(small_ds):
    dropped = {}

    def drop(data):
        dropped.update(data["annotations"][0]["segments_info"].pop(0))

    edit_json(small_ds.pred_json, drop)
    with pytest.raises(InputError, match="in the PNG but not in its segments_info") as err:
        ours(small_ds)
    png = read_json(small_ds.pred_json)["annotations"][0]["file_name"]
    assert png in str(err.value) and str(dropped["id"]) in str(err.value)


def test_json_segment_missing_from_png(small_ds):
    def add(data):
        data["annotations"][0]["segments_info"].append({"id": 4242, "category_id": 7})

    edit_json(small_ds.pred_json, add)
    with pytest.raises(InputError, match="not in the PNG") as err:
        ours(small_ds)
    png = read_json(small_ds.pred_json)["annotations"][0]["file_name"]
    assert png in str(err.value) and "4242" in str(err.value)


def test_unknown_category(small_ds):
    edit_json(
        small_ds.pred_json, lambda d: d["annotations"][2]["segments_info"][0].update(category_id=99)
    )
    with pytest.raises(InputError, match="category_id 99") as err:
        ours(small_ds)
    assert small_ds.pred_json.name in str(err.value) and small_ds.image_ids[2] in str(err.value)


def test_size_mismatch(small_ds):
    pred = read_json(small_ds.pred_json)["annotations"][0]
    path = small_ds.pred_folder / pred["file_name"]
    write_ids(path, read_panoptic_png(path)[:, :-1])
    with pytest.raises(InputError, match="size") as err:
        ours(small_ds)
    assert pred["file_name"] in str(err.value)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("damage", ["truncated", "garbage", "bitflip"])
def test_damaged_png_names_the_file(small_ds, decoder, damage):
    pred = read_json(small_ds.pred_json)["annotations"][1]
    path = small_ds.pred_folder / pred["file_name"]
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(b"definitely not a PNG file")
    else:  # corrupt the compressed pixel data in the middle of the file
        data[len(data) // 2] ^= 0xFF
        data[len(data) // 2 + 1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(InputError) as err:
        ours(small_ds, decoder=decoder)
    assert pred["file_name"] in str(err.value)


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_png_raises_in_workers_too(small_ds, decoder):
    pred = read_json(small_ds.pred_json)["annotations"][2]
    path = small_ds.pred_folder / pred["file_name"]
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(InputError, match=pred["file_name"]):
        ours(small_ds, threads=2, decoder=decoder)


# --------------------------------------------------------------------------- PNG reading


@pytest.mark.parametrize("decoder", DECODERS)
def test_png_ids_rgb_and_rgba(tmp_path, decoder):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1 << 24, size=(17, 23), dtype=np.uint32)
    ids[0, :3] = [0, (1 << 24) - 1, 26001]
    write_ids(tmp_path / "rgb.png", ids)
    rgba = np.concatenate(
        [ids_to_rgb(ids), rng.integers(0, 256, (17, 23, 1), dtype=np.uint8)], axis=-1
    )
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    for name in ("rgb.png", "rgba.png"):
        got = read_panoptic_png(tmp_path / name, decoder)
        assert got.dtype == np.uint32 and got.shape == (17, 23)
        np.testing.assert_array_equal(got, ids)


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("mode", ["L", "P", "LA", "I;16"])
def test_png_non_rgb_modes_are_rejected(tmp_path, decoder, mode):
    image = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L").convert(mode)
    image.save(tmp_path / "x.png")
    with pytest.raises(InputError, match="x.png"):
        read_panoptic_png(tmp_path / "x.png", decoder)


def test_missing_files_are_input_errors(small_ds, tmp_path):
    with pytest.raises(InputError, match="absent.png"):
        read_panoptic_png(tmp_path / "absent.png")
    pred = read_json(small_ds.pred_json)["annotations"][0]
    (small_ds.pred_folder / pred["file_name"]).unlink()
    with pytest.raises(InputError, match=pred["file_name"]):
        ours(small_ds)
    with pytest.raises(InputError, match="nowhere.json"):
        evaluate_panoptic(
            tmp_path / "nowhere.json", small_ds.gt_folder, small_ds.pred_json, small_ds.pred_folder
        )
    small_ds.pred_json.write_text('{"images": []}')
    with pytest.raises(InputError, match=small_ds.pred_json.name):
        ours(small_ds)


def evaluate_cli(ds, capsys) -> tuple[int, str]:
    """``vocabseg evaluate-panoptic`` on ``ds`` as a user runs it: (exit status, stderr)."""
    out = ds.pred_json.parent / "metrics.json"
    argv = ["evaluate-panoptic", "--gt-json", str(ds.gt_json), "--gt-folder", str(ds.gt_folder),
            "--pred-json", str(ds.pred_json), "--pred-folder", str(ds.pred_folder), "--out", str(out)]
    status = cli.main(argv)
    assert not out.exists()
    return status, capsys.readouterr().err


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_duplicated_image_id_names_the_json_and_the_id(small_ds, capsys, which):
    """Two annotations for one image (e.g. predictions of two runs concatenated): one line
    naming the JSON and the image id, not a segment error about another image's PNG."""
    path = small_ds.pred_json if which == "pred" else small_ds.gt_json
    twice = small_ds.image_ids[1]
    edit_json(path, lambda d: d["annotations"].append(dict(d["annotations"][0], image_id=twice)))
    status, err = evaluate_cli(small_ds, capsys)
    assert status == 1
    assert err == f"error: {path}: image id {twice!r} is duplicated (annotations 1 and 3); each image needs exactly one annotation\n"


@pytest.mark.parametrize("content", ["jpeg", "text", "empty"])
def test_non_png_prediction_names_the_file(small_ds, capsys, content):
    pred = read_json(small_ds.pred_json)["annotations"][1]
    path = small_ds.pred_folder / pred["file_name"]
    if content == "jpeg":  # same size and colours as the PNG it replaces
        Image.open(path).convert("RGB").save(path, format="JPEG", quality=100)
    else:
        path.write_bytes(b"segment ids" if content == "text" else b"")
    status, err = evaluate_cli(small_ds, capsys)
    assert status == 1
    what = {"jpeg": "it is a JPEG image", "text": "it starts with b'segment '", "empty": "the file is empty"}[content]
    assert err == f"error: panoptic PNG {path} is not a PNG file ({what})\n"


def test_unidentifiable_png_does_not_print_a_buffer_object(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n")  # the signature and nothing else
    with pytest.raises(InputError) as err:
        read_panoptic_png(path, decoder="pil")
    assert str(path) in str(err.value) and "BytesIO" not in str(err.value)


# --------------------------------------------------------------------------- writing


def test_write_metrics_is_atomic_sorted_and_indented(tmp_path):
    out = tmp_path / "sub" / "metrics.json"
    results = {"b": {"pq": None, "n": 0}, "a": [1.5, 2]}
    write_metrics(results, out)
    text = out.read_text()
    assert json.loads(text) == results
    assert text.index('"a"') < text.index('"b"') and '\n    "a"' in text
    write_metrics({"c": 1}, out)  # replaces the file
    assert json.loads(out.read_text()) == {"c": 1}
    assert [p.name for p in out.parent.iterdir()] == ["metrics.json"]  # no temp file left
