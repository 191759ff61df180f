"""A user's COCO-panoptic dataset: prepared for the pipeline, or every problem listed."""

import json
import os
import shutil

import numpy as np
import pytest

from coco_export import NAMES, coco_id, export_coco
from vocabseg.cli import main
from vocabseg.data.coco_panoptic import CocoLayout, prepare_coco_panoptic
from vocabseg.data.labelset import labelset_from_files
from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.data.photos import photo_path
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.errors import InputError


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """A tiny synthetic city, prepared as Cityscapes (2 training and 1 validation image)."""
    root = tmp_path_factory.mktemp("city")
    generate_city(root / "raw", split_sizes={"train": 2, "val": 1}, height=64, width=128, seed=3)
    prepare_dataset(root / "raw", root / "prepared", ("train", "val"))
    return root


@pytest.fixture
def dataset(city, tmp_path):
    return export_coco(city / "raw", city / "prepared", tmp_path / "mine")


def test_an_exported_city_is_prepared_with_its_own_ids_and_paths(city, dataset, tmp_path):
    counts = prepare_coco_panoptic(CocoLayout(dataset), tmp_path / "raw", tmp_path / "prepared")
    assert counts == {"train": 2, "val": 1}
    gt = json.loads((tmp_path / "prepared/cityscapes_panoptic_train.json").read_text())
    cs = json.loads((city / "prepared/cityscapes_panoptic_train.json").read_text())
    image = gt["images"][0]
    assert image["id"] == "1" and gt["annotations"][0]["image_id"] == "1"  # ids as strings
    photo = photo_path(tmp_path / "raw/leftImg8bit/train", image["id"], image)
    assert photo.is_file() and photo.name.endswith(".jpg")
    # the areas the JSON lacked are counted from the PNG, as cityscapesscripts counts them
    areas = {s["id"]: (s["category_id"], s["area"]) for s in gt["annotations"][0]["segments_info"]}
    assert areas == {s["id"]: (coco_id(s["category_id"]), s["area"]) for s in cs["annotations"][0]["segments_info"]}
    png = tmp_path / "prepared/cityscapes_panoptic_train" / gt["annotations"][0]["file_name"]
    assert np.array_equal(read_panoptic_png(png), read_panoptic_png(dataset / "annotations/panoptic_train/" / png.name))
    labels = labelset_from_files("mine", tmp_path / "prepared/cityscapes_panoptic_train.json")
    assert labels.eval_ids == tuple(range(100, 119)) and labels.name(111) == NAMES[11] == "pedestrian"
    assert labels.thing_ids == tuple(range(111, 119))


def test_every_problem_is_listed_one_per_line_and_nothing_is_written(dataset, tmp_path):
    train = json.loads((dataset / "annotations/panoptic_train.json").read_text())
    ann = train["annotations"][0]
    ann["segments_info"][0]["category_id"] = 999  # a category not in the list
    png = dataset / "annotations/panoptic_train" / ann["file_name"]
    ids = read_panoptic_png(png)
    ids[0, 0] = 4242  # a segment the JSON does not list
    write_panoptic_png(png, ids)
    (dataset / "annotations/panoptic_train.json").write_text(json.dumps(train))
    os.remove(dataset / "images/train" / train["images"][1]["file_name"])  # a missing photo
    val_png = dataset / "annotations/panoptic_val" / "x.png"
    val = json.loads((dataset / "annotations/panoptic_val.json").read_text())
    shutil.move(dataset / "annotations/panoptic_val" / val["annotations"][0]["file_name"], val_png)
    val_png.write_bytes(val_png.read_bytes()[:30])
    val["annotations"][0]["file_name"] = "x.png"  # an unreadable PNG
    (dataset / "annotations/panoptic_val.json").write_text(json.dumps(val))
    with pytest.raises(InputError) as err:
        prepare_coco_panoptic(CocoLayout(dataset), tmp_path / "raw", tmp_path / "prepared")
    lines = str(err.value).splitlines()
    assert lines[0] == f"COCO-panoptic dataset {dataset}: 4 problem(s)"
    problems = "\n".join(lines[1:])
    assert f"image '1', segment {ann['segments_info'][0]['id']}: category 999 is not in the 'categories' list" in problems
    assert f"{png}: segment id 4242 is not in the JSON's segments_info of '1'" in problems
    assert f"{dataset / 'images/train' / train['images'][1]['file_name']}: missing image" in problems
    assert f"{val_png}" in problems and "x.png" in problems
    assert not (tmp_path / "raw").exists() and not (tmp_path / "prepared").exists()


def test_splits_with_other_categories_and_a_broken_json_are_named(dataset, tmp_path, capsys):
    val = json.loads((dataset / "annotations/panoptic_val.json").read_text())
    val["categories"] = val["categories"][:-1]
    (dataset / "annotations/panoptic_val.json").write_text(json.dumps(val))
    args = ["prepare-coco", "--root", str(dataset), "--raw-out", str(tmp_path / "raw"), "--out", str(tmp_path / "p")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "panoptic_val.json: 'categories' differ from those of" in err
    (dataset / "annotations/panoptic_train.json").write_text("{")
    assert main(args) == 1
    assert "panoptic_train.json" in capsys.readouterr().err
