"""Tests of the synthetic city: Cityscapes layout, determinism, content, and that the
official cityscapesscripts tools run on it unchanged."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.helpers.labels import name2label
from cityscapesscripts.preparation import createTrainIdLabelImgs
from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage, json2labelImg
from PIL import Image

from vocabseg.data.labels import EVAL_IDS, ID_TO_TRAIN_ID, THING_IDS
from vocabseg.data.synth import generate_city, render_image

GT_SUFFIXES = ("_gtFine_polygons.json", "_gtFine_labelIds.png", "_gtFine_instanceIds.png",
               "_gtFine_color.png")
NAME = re.compile(r"^([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png$")


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _gt(photo: Path, suffix: str) -> Path:
    """The gtFine file of a leftImg8bit path."""
    name = photo.name.replace("_leftImg8bit.png", suffix)
    return Path(str(photo.parent).replace("leftImg8bit", "gtFine", 1)) / name


def _all_files(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> tuple[Path, list[Path]]:
    """The default split sizes (24 train + 8 val) at 128x256."""
    root = tmp_path_factory.mktemp("city")
    return root, generate_city(root, height=128, width=256, seed=0)


@pytest.fixture(scope="module")
def split_stats(city) -> dict[str, dict]:
    """Per split: label ids present, visible instances per thing id, crowd pixel count."""
    root, _ = city
    stats = {}
    for split in ("train", "val"):
        present, instances, crowd = set(), Counter(), 0
        for f in sorted(root.glob(f"gtFine/{split}/*/*_gtFine_instanceIds.png")):
            ids = _read(f).astype(np.int64)
            labels = _read(Path(str(f).replace("instanceIds", "labelIds")))
            present |= set(np.unique(labels).tolist())
            for seg in np.unique(ids):
                if seg >= 1000:
                    instances[seg // 1000] += 1
            crowd += int(np.isin(ids, THING_IDS).sum())  # values < 1000 of a thing class
        stats[split] = {"present": present, "instances": instances, "crowd": crowd}
    return stats


# -- layout ----------------------------------------------------------------------------


def test_layout_and_file_names(tmp_path):
    paths = generate_city(tmp_path, split_sizes={"train": 3, "val": 2}, height=64, width=128)
    assert len(paths) == 5 and all(p.is_file() for p in paths)
    cities = {}
    for photo in paths:
        split, city = photo.parent.parent.name, photo.parent.name
        assert photo.parent.parent.parent == tmp_path / "leftImg8bit"
        m = NAME.match(photo.name)
        assert m and m.group(1) == city and "_" not in city
        cities.setdefault(split, set()).add(city)
        for suffix in GT_SUFFIXES:
            assert _gt(photo, suffix).is_file()
        rgb = Image.open(photo)
        assert rgb.mode == "RGB" and rgb.size == (128, 64)
        assert Image.open(_gt(photo, "_gtFine_labelIds.png")).mode == "L"
        assert Image.open(_gt(photo, "_gtFine_instanceIds.png")).mode == "I;16"
        assert Image.open(_gt(photo, "_gtFine_color.png")).size == (128, 64)
    assert set(cities) == {"train", "val"} and len(cities["train"]) == len(cities["val"]) == 2
    assert not cities["train"] & cities["val"]
    # nothing else is written: 1 photo + 4 gtFine files per image
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 5 * len(paths)


def test_polygons_are_valid_cityscapes_json(tmp_path):
    sizes = {"train": 4, "val": 2}
    paths = generate_city(tmp_path, split_sizes=sizes, height=64, width=128, seed=3)
    for photo in paths:
        doc = json.loads(_gt(photo, "_gtFine_polygons.json").read_text())
        assert (doc["imgHeight"], doc["imgWidth"]) == (64, 128)
        labels = set()
        for obj in doc["objects"]:
            label = obj["label"]
            if label not in name2label and label.endswith("group"):
                label = label[: -len("group")]  # crowd group, as cityscapesscripts reads it
            assert label in name2label and name2label[label].id >= 0
            labels.add(obj["label"])
            pts = obj["polygon"]
            assert all(isinstance(v, int) for p in pts for v in p)
            assert len({tuple(p) for p in pts}) >= 3
            assert all(0 <= x < 128 and 0 <= y < 64 for x, y in pts)
        assert {"sky", "road", "ego vehicle", "out of roi"} <= labels
        ids = _read(_gt(photo, "_gtFine_instanceIds.png")).astype(np.int64)
        assert (ids >= 1000).any(), "every image, even a tiny one, shows thing instances"


# -- determinism -----------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path):
    kwargs = dict(split_sizes={"train": 2, "val": 1}, height=64, width=128, seed=7)
    generate_city(tmp_path / "a", **kwargs)
    generate_city(tmp_path / "b", **kwargs)
    a, b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert a.keys() == b.keys() and a == b


def test_different_seed_or_index_gives_different_images(tmp_path):
    kwargs = dict(split_sizes={"train": 2, "val": 2}, height=64, width=128)
    first = generate_city(tmp_path / "a", seed=0, **kwargs)
    second = generate_city(tmp_path / "b", seed=1, **kwargs)
    for p, q in zip(first, second):
        assert p.relative_to(tmp_path / "a") == q.relative_to(tmp_path / "b")
        assert not np.array_equal(_read(p), _read(q))
    photos = [_read(p) for p in first]
    assert all(not np.array_equal(photos[i], photos[j]) for i in range(4) for j in range(i))


# -- content (default split sizes at 128x256) ------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_every_split_has_all_19_classes(split_stats, split):
    assert set(EVAL_IDS) <= split_stats[split]["present"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_several_instances_per_thing_class(split_stats, split):
    counts = split_stats[split]["instances"]
    assert {i: counts[i] for i in THING_IDS if counts[i] < 2} == {}


@pytest.mark.parametrize("split", ["train", "val"])
def test_crowd_groups_and_void_regions(split_stats, split):
    stats = split_stats[split]
    assert stats["crowd"] > 0
    assert {1, 3, 29} <= stats["present"]  # ego vehicle, out of roi, caravan
    assert len(stats["present"] & {4, 9, 14, 30}) >= 2  # static, parking, guard rail, trailer


def _heights(root: Path, label: str, width: int) -> list[int]:
    """Pixel height of every ``label`` polygon (before occlusion) in the city at ``root``
    that the left and right image borders do not cut."""
    heights = []
    for f in sorted(root.glob("gtFine/*/*/*_gtFine_polygons.json")):
        for obj in json.loads(f.read_text())["objects"]:
            xs = [x for x, _ in obj["polygon"]]
            if obj["label"] == label and min(xs) > 0 and max(xs) < width - 1:
                ys = [y for _, y in obj["polygon"]]
                heights.append(max(ys) - min(ys))
    return heights


@pytest.mark.parametrize("style", ["target", "source"])
def test_pedestrians_are_tall_enough_to_learn(city, style, tmp_path):
    """Every whole pedestrian is at least 4/15 of the image height (34 px at 128, within a
    pixel of rounding): at 15 % (19 px) the tiny model's stride-4 masks found none."""
    root = city[0] if style == "target" else tmp_path
    if style == "source":
        generate_city(root, split_sizes={"train": 16}, height=128, width=256, seed=1, style="source")
    people = _heights(root, "person", 256)
    assert len(people) >= 10
    assert min(people) >= 128 * 4 / 15 - 1


# -- official tools ----------------------------------------------------------------------


def test_gt_images_are_what_cityscapesscripts_makes(city, tmp_path):
    _, paths = city
    for photo in paths[::7]:
        polygons = _gt(photo, "_gtFine_polygons.json")
        out = tmp_path / "labelIds.png"
        json2labelImg(str(polygons), str(out), "ids")
        assert np.array_equal(_read(out), _read(_gt(photo, "_gtFine_labelIds.png")))
        annotation = Annotation()
        annotation.fromJsonFile(str(polygons))
        instances = np.asarray(createInstanceImage(annotation, "ids"))
        assert np.array_equal(instances, _read(_gt(photo, "_gtFine_instanceIds.png")))
        colors = np.asarray(createLabelImage(annotation, "color"))
        assert np.array_equal(colors, _read(_gt(photo, "_gtFine_color.png")))


def test_convert2panoptic_runs_and_sees_crowds_and_all_categories(city, tmp_path):
    root, _ = city
    convert2panoptic(cityscapesPath=str(root / "gtFine"), outputFolder=str(tmp_path),
                     setNames=["train", "val"])
    for split, n in (("train", 24), ("val", 8)):
        doc = json.loads((tmp_path / f"cityscapes_panoptic_{split}.json").read_text())
        assert len(doc["images"]) == len(doc["annotations"]) == n
        segments = [s for a in doc["annotations"] for s in a["segments_info"]]
        assert any(s["iscrowd"] == 1 for s in segments)
        assert {s["category_id"] for s in segments} == set(EVAL_IDS)
        pngs = list((tmp_path / f"cityscapes_panoptic_{split}").glob("*_gtFine_panoptic.png"))
        assert len(pngs) == n


def test_create_train_id_label_imgs_runs(tmp_path, monkeypatch):
    generate_city(tmp_path, split_sizes={"train": 2, "val": 1}, height=64, width=128)
    monkeypatch.setenv("CITYSCAPES_DATASET", str(tmp_path))
    createTrainIdLabelImgs.main()
    label_files = sorted(tmp_path.glob("gtFine/*/*/*_gtFine_labelIds.png"))
    assert len(label_files) == 3
    for f in label_files:
        train_ids = _read(Path(str(f).replace("_labelIds", "_labelTrainIds")))
        assert np.array_equal(train_ids, ID_TO_TRAIN_ID[_read(f)])


# -- styles ----------------------------------------------------------------------------


def test_styles_differ_for_the_same_label_map(city):
    _, paths = city
    labels = _read(_gt(paths[0], "_gtFine_labelIds.png"))
    instances = _read(_gt(paths[0], "_gtFine_instanceIds.png")).astype(np.int32)
    target = render_image(labels, instances, style="target", rng=np.random.default_rng(1))
    source = render_image(labels, instances, style="source", rng=np.random.default_rng(1))
    assert target.shape == source.shape == (*labels.shape, 3)
    assert target.dtype == source.dtype == np.uint8
    differing = 0
    for label_id in (7, 8, 11, 21, 23):  # road, sidewalk, building, vegetation, sky
        m = labels == label_id
        if m.sum() > 50:
            gap = np.abs(target[m].mean(0).astype(float) - source[m].mean(0).astype(float)).max()
            differing += gap > 20
    assert differing >= 3
    assert np.abs(target.astype(float) - source.astype(float)).mean() > 20


def test_source_style_keeps_label_semantics(tmp_path):
    paths = generate_city(tmp_path, split_sizes={"train": 2}, height=64, width=128, style="source")
    for photo in paths:
        present = set(np.unique(_read(_gt(photo, "_gtFine_labelIds.png"))).tolist())
        assert {1, 3, 7, 23} <= present


def test_bad_style_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="'source', 'target'"):
        generate_city(tmp_path, split_sizes={"train": 1}, height=64, width=128, style="night")
    with pytest.raises(ValueError, match="style"):
        render_image(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.int32), style="night")
    assert not any(tmp_path.iterdir())
