"""A user's COCO-panoptic dataset: prepared for the pipeline, or every problem listed."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from coco_export import NAMES, coco_id, export_coco
from vocabseg.cli import main
from vocabseg.data.coco_panoptic import CocoLayout, prepare_coco_panoptic, train_id_map
from vocabseg.data.labelset import LabelSet, labelset_from_files
from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.data.photos import photo_path, train_id_label_path
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.errors import InputError
from vocabseg.openworld.dataset import SemanticDataset


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
    # ContMAV's semantic labels (train ids of the label set): those Cityscapes' own
    # preparation draws from the polygons, at the photos' relative folders
    ours = sorted((tmp_path / "prepared/gtFine").rglob("*.png"))
    theirs = sorted((city / "prepared/gtFine").rglob("*_labelTrainIds.png"))
    assert len(ours) == 3 and [p.relative_to(tmp_path / "prepared") for p in ours] == [
        p.relative_to(city / "prepared") for p in theirs
    ]
    for mine, cs_labels in zip(ours, theirs):
        assert np.array_equal(np.asarray(Image.open(mine)), np.asarray(Image.open(cs_labels)))


def test_contmav_reads_flat_photo_folders_with_the_label_sets_class_count(tmp_path):
    labels = LabelSet.from_categories(
        "mine", [{"id": 40, "name": "lane"}, {"id": 3, "name": "walker", "isthing": 1}, {"id": 17, "name": "cart"}],
        source="categories",
    )
    ids = np.array([[0, 5, 5], [7, 7, 9]])
    segments = [{"id": 5, "category_id": 40}, {"id": 9, "category_id": 17, "iscrowd": 1}, {"id": 7, "category_id": 3}]
    semantic = train_id_map(ids, segments, labels)
    assert semantic.tolist() == [[255, 2, 2], [0, 0, 1]]  # train ids in id order: 3, 17, 40
    (tmp_path / "images").mkdir()
    Image.new("RGB", (3, 2)).save(tmp_path / "images/a.jpg")  # no <city>/ folder, as COCO's photos
    label = train_id_label_path(tmp_path / "gtFine", "a.jpg")
    assert label == tmp_path / "gtFine/a_gtFine_labelTrainIds.png"
    label.parent.mkdir()
    Image.fromarray(semantic, mode="L").save(label)
    dataset = SemanticDataset(tmp_path / "images", tmp_path / "gtFine", [0, 2], num_classes=3)
    assert dataset.raw(0)[1].tolist() == semantic.tolist() and dataset.space.unknown == (1,)
    with pytest.raises(InputError, match=r"value 2 is not a train id \(0\.\.1\) or 255"):
        SemanticDataset(tmp_path / "images", tmp_path / "gtFine", [0], num_classes=2).raw(0)


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
