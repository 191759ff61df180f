"""The label set as data: Cityscapes' equals the official table's views, a COCO-panoptic
``categories`` list (+ synonyms file) builds another, and the file round-trips."""

import json
import re

import numpy as np
from cityscapesscripts.helpers.labels import labels as official_labels
import pytest

from vocabseg.cli import main
from vocabseg.data import labels as cityscapes_table
from vocabseg.data.labelset import LabelSet, labelset_from_files, read_labelset
from vocabseg.errors import InputError

CATEGORIES = [
    {"id": 40, "name": "lane", "isthing": 0, "color": [10, 20, 30], "supercategory": "flat"},
    {"id": 3, "name": "walker", "isthing": 1, "color": [200, 0, 0]},
    {"id": 17, "name": "cart", "isthing": 1},
]


def test_cityscapes_label_set_is_the_official_table():
    ls = LabelSet.cityscapes()
    # as csCreatePanopticImgs writes them
    official = [
        {"id": lb.id, "name": lb.name, "color": list(lb.color), "supercategory": lb.category, "isthing": int(lb.hasInstances)}
        for lb in official_labels
        if not lb.ignoreInEval
    ]
    assert ls.categories() == official
    assert ls.eval_ids == cityscapes_table.EVAL_IDS and ls.num_classes == 19
    assert ls.thing_ids == cityscapes_table.THING_IDS and ls.stuff_ids == cityscapes_table.STUFF_IDS
    assert np.array_equal(ls.train_id_lut(), cityscapes_table.ID_TO_TRAIN_ID)
    assert ls.train_id_names() == cityscapes_table.TRAIN_ID_TO_NAME
    assert ls.synonyms([7, 33]) == [["road", "railroad"], ["bicycle", "bicycles", "bike", "bikes"]]
    assert ls.by_name("ground").evaluated is False  # the whole table, not only the 19


def test_coco_categories_build_a_label_set_in_id_order(tmp_path):
    gt = tmp_path / "panoptic_train.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": CATEGORIES}))
    synonyms = tmp_path / "synonyms.txt"
    synonyms.write_text("3:walker,pedestrian,person\n")
    ls = labelset_from_files("mine", gt, synonyms)
    assert ls.eval_ids == (3, 17, 40) and ls.thing_ids == (3, 17) and ls.stuff_ids == (40,)
    assert [c.train_id for c in ls.evaluated] == [0, 1, 2]
    assert ls.synonyms([3, 40]) == [["walker", "pedestrian", "person"], ["lane"]]
    assert ls.class_id("cart") == 17 and ls.class_id(40) == 40
    assert ls.categories()[2] == {"id": 40, "name": "lane", "color": [10, 20, 30], "supercategory": "flat", "isthing": 0}
    ls.write(tmp_path / "labelset.json")
    assert read_labelset(tmp_path / "labelset.json") == ls


@pytest.mark.parametrize(
    "categories, synonyms, expected",
    [
        ([{"id": 0, "name": "void"}], None, "categories[0]: id 0 is not an integer in 1..254"),
        ([{"id": 1, "name": "a"}, {"id": 2, "name": "a"}], None, "categories[1]: id 2 or name 'a' appears twice"),
        ([{"id": 1}], None, "categories[0]: expected an object with 'id' and 'name'"),
        ([{"id": 1, "name": "a", "color": [1, 2]}], None, "categories[0]: color [1, 2] is not [r, g, b]"),
        ([{"id": 1, "name": "a"}], "9:b\n", "synonyms.txt: synonyms of category ids [9]"),
        ([{"id": 1, "name": "a"}], "1 b\n", "synonyms.txt, line 1: expected '<id>:<name>"),
    ],
)
def test_bad_categories_and_synonyms_name_the_file(tmp_path, categories, synonyms, expected):
    gt = tmp_path / "panoptic_train.json"
    gt.write_text(json.dumps({"categories": categories}))
    path = None
    if synonyms is not None:
        path = tmp_path / "synonyms.txt"
        path.write_text(synonyms)
    with pytest.raises(InputError, match=re.escape(expected)) as err:
        labelset_from_files("mine", gt, path)
    assert str(err.value).startswith(str(tmp_path))  # names the file


def test_unknown_class_names_the_key():
    with pytest.raises(InputError, match=r"config key vocab_configs\.x: no evaluated class 'persn' in the Cityscapes"):
        LabelSet.cityscapes().class_id("persn", key="config key vocab_configs.x")


def test_a_class_by_train_id_or_name_names_the_key():
    cityscapes = LabelSet.cityscapes()
    assert cityscapes.train_id(17) == cityscapes.train_id("motorcycle") == 17
    mine = LabelSet.from_categories("mine", CATEGORIES, source="x")
    assert mine.train_id("lane") == 2 and mine.train_id(0) == 0  # train ids in id order: 3, 17, 40
    with pytest.raises(InputError, match=r"^config key openworld\.unknown\.1: no evaluated class with train id "
                                         r"or name 3 in the mine label set \(0 walker, 1 cart, 2 lane\)$"):
        mine.train_id(3, key="config key openworld.unknown.1")  # a category id, not a train id


def test_labelset_command_writes_both_kinds(tmp_path, capsys):
    assert main(["labelset", "--out", str(tmp_path / "cs.json")]) == 0
    assert read_labelset(tmp_path / "cs.json") == LabelSet.cityscapes()
    gt = tmp_path / "panoptic_val.json"
    gt.write_text(json.dumps({"categories": CATEGORIES}))
    assert main(["labelset", "--categories", str(gt), "--dataset", "mine", "--out", str(tmp_path / "m.json")]) == 0
    assert "mine: 3 evaluated classes (2 things)" in capsys.readouterr().out
    assert main(["labelset", "--synonyms", str(gt), "--out", str(tmp_path / "x.json")]) == 1
    assert "--synonyms and --dataset need --categories" in capsys.readouterr().err
