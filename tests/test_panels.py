"""Qualitative panels: overlay colours by hand, the grid geometry, and real files.

The file test uses a 3-image synthetic city at 64x128 prepared the official way,
the oracle (ground truth written as a prediction) and a relabelled copy of it: both
must paint exactly the ground-truth overlay, which must itself differ from the photo.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vocabseg.approaches.oracle import write_oracle_predictions
from vocabseg.cli import main
from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.errors import InputError
from vocabseg.report.panels import (
    BOUNDARY,
    GAP,
    TITLE_PX,
    Prediction,
    compose_panel,
    overlay,
    segment_colors,
    write_panels,
)

ROAD, CAR = (128, 64, 128), (0, 0, 142)  # Cityscapes colours of ids 7 and 26


# --------------------------------------------------------------------------- colours


def test_stuff_keeps_its_colour_and_instances_get_shades_by_first_pixel():
    ids = np.array([[7, 7, 900, 900], [26001, 26001, 0, 5]])
    # 900 is a car starting at pixel 2, 26001 a car starting at pixel 4; 5 is unlisted
    colors = segment_colors(ids, {7: 7, 900: 26, 26001: 26, 77: 26})
    assert colors[7] == ROAD
    assert colors[900] == CAR  # first car instance: t = 0
    assert colors[26001] == (89, 89, 182)  # t = 0.35: c + 0.35 (255 - c): 89.25, 181.55
    assert set(colors) == {7, 900, 26001}  # VOID, unlisted and absent ids get no colour
    # the rank follows the pixels, not the ids: swap the ids, same picture
    swapped = np.where(ids == 900, 26001, np.where(ids == 26001, 900, ids))
    recoloured = segment_colors(swapped, {7: 7, 900: 26, 26001: 26})
    assert recoloured[26001] == CAR and recoloured[900] == (89, 89, 182)


def test_third_instance_is_darker():
    ids = np.array([[1, 2, 3]])
    colors = segment_colors(ids, {1: 26, 2: 26, 3: 26})
    assert colors[3] == (0, 0, 92)  # t = -0.35: 142 * 0.65 = 92.3


def test_overlay_blends_keeps_void_and_draws_boundaries():
    photo = np.full((3, 4, 3), 100, dtype=np.uint8)
    ids = np.array([[7, 7, 7, 7], [7, 7, 7, 7], [0, 0, 0, 0]])
    out = overlay(photo, ids, {7: 7}, alpha=0.5)
    # row 0: road blended 0.5/0.5 with grey 100, no other id around
    assert out[0].tolist() == [[114, 82, 114]] * 4
    assert out[1].tolist() == [list(BOUNDARY)] * 4  # road pixels next to VOID
    assert out[2].tolist() == [list(BOUNDARY)] * 4  # VOID pixels next to road
    void_only = overlay(photo, np.zeros((3, 4), dtype=np.int64), {}, alpha=0.5)
    assert (void_only == photo).all()
    unlisted = overlay(photo, np.full((3, 4), 9), {7: 7}, alpha=0.5)
    assert (unlisted == photo).all()


def test_unknown_category_is_an_input_error():
    with pytest.raises(InputError, match="category_id 99"):
        segment_colors(np.array([[1]]), {1: 99})


# --------------------------------------------------------------------------- grid


def test_grid_geometry_and_cells_drawn_one_to_one(tmp_path):
    rng = np.random.default_rng(0)
    cells = [(f"cell {i}", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)) for i in range(4)]
    size = compose_panel(cells, tmp_path / "p.png", columns=3)
    png = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert size == (3 * 30 + 4 * GAP, 2 * (20 + TITLE_PX) + 3 * GAP) == (106, 88)
    assert png.shape == (88, 106, 3)
    for i, (_, image) in enumerate(cells):
        r, c = divmod(i, 3)
        top, left = GAP + r * (20 + TITLE_PX + GAP) + TITLE_PX, GAP + c * (30 + GAP)
        assert (png[top : top + 20, left : left + 30] == image).all(), i
    assert (png[-GAP:, :] == 255).all()  # white margin
    # fewer cells than columns: one row, as wide as the cells
    assert compose_panel(cells[:2], tmp_path / "q.png", columns=3) == (2 * 30 + 3 * GAP, 20 + TITLE_PX + 2 * GAP)


# --------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """A prepared 3-image synthetic validation set, its oracle and a relabelled oracle."""
    root = tmp_path_factory.mktemp("city")
    generate_city(root / "raw", split_sizes={"val": 3}, height=64, width=128)
    prepare_dataset(root / "raw", root / "prep", ("val",))
    gt_json, gt_folder = root / "prep/cityscapes_panoptic_val.json", root / "prep/cityscapes_panoptic_val"
    write_oracle_predictions(gt_json, gt_folder, root / "oracle.json", root / "oracle")
    # the same segments under other ids, in reverse order
    oracle = json.loads((root / "oracle.json").read_text())
    (root / "relabelled").mkdir()
    for ann in oracle["annotations"]:
        ids = read_panoptic_png(root / "oracle" / ann["file_name"]).astype(np.int64)
        new = lambda s: (1 << 20) - s  # noqa: E731
        write_panoptic_png(root / "relabelled" / ann["file_name"], np.where(ids > 0, new(ids), 0))
        for seg in ann["segments_info"]:
            seg["id"] = int(new(seg["id"]))
    (root / "relabelled.json").write_text(json.dumps(oracle))
    return root, gt_json, gt_folder


def _cell(png: np.ndarray, i: int, h: int = 64, w: int = 128, columns: int = 3) -> np.ndarray:
    r, c = divmod(i, columns)
    top, left = GAP + r * (h + TITLE_PX + GAP) + TITLE_PX, GAP + c * (w + GAP)
    return png[top : top + h, left : left + w]


def test_panels_of_the_oracle_equal_the_ground_truth(city, tmp_path):
    root, gt_json, gt_folder = city
    preds = [Prediction("oracle", root / "oracle.json", root / "oracle"),
             Prediction("relabelled", root / "relabelled.json", root / "relabelled")]
    written = write_panels(gt_json, gt_folder, root / "raw/leftImg8bit/val", preds, tmp_path / "panels", count=2)
    ids = [im["id"] for im in json.loads(gt_json.read_text())["images"]]
    assert written == [tmp_path / "panels" / f"panel_{i}.png" for i in ids[:2]]
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == sorted(p.name for p in written)
    for image_id, path in zip(ids, written):
        png = np.asarray(Image.open(path).convert("RGB"))
        assert png.shape == (2 * (64 + TITLE_PX) + 3 * GAP, 3 * 128 + 4 * GAP, 3)  # 4 cells, 3 columns
        city_dir = root / "raw/leftImg8bit/val" / image_id.split("_")[0]
        photo = np.asarray(Image.open(city_dir / f"{image_id}_leftImg8bit.png").convert("RGB"))
        gt = read_panoptic_png(gt_folder / f"{image_id}_gtFine_panoptic.png")
        ann = next(a for a in json.loads(gt_json.read_text())["annotations"] if a["image_id"] == image_id)
        expected = overlay(photo, gt, {s["id"]: s["category_id"] for s in ann["segments_info"]})
        assert (_cell(png, 0) == photo).all()
        assert (_cell(png, 1) == expected).all()
        assert (_cell(png, 2) == expected).all() and (_cell(png, 3) == expected).all()
        assert (expected != photo).any(axis=-1).mean() > 0.5  # the overlay covers the labelled image


def test_cli_count_downscaling_and_missing_prediction(city, tmp_path, capsys):
    root, gt_json, gt_folder = city
    out = tmp_path / "cli"
    args = ["panels", "--gt-json", str(gt_json), "--gt-folder", str(gt_folder),
            "--image-root", str(root / "raw/leftImg8bit/val"), "--out-dir", str(out),
            "--pred", "oracle", str(root / "oracle.json"), str(root / "oracle"), "--max-width", "64"]
    assert main(args) == 0
    pngs = sorted(out.glob("panel_*.png"))
    assert len(pngs) == 3  # default count 3: every image of this set
    assert Image.open(pngs[0]).size == (3 * 64 + 4 * GAP, 32 + TITLE_PX + 2 * GAP)  # halved, one row
    broken = json.loads((root / "oracle.json").read_text())
    broken["annotations"] = broken["annotations"][1:]
    (tmp_path / "short.json").write_text(json.dumps(broken))
    args[args.index(str(root / "oracle.json"))] = str(tmp_path / "short.json")
    assert main(args) == 1
    assert "short.json: no prediction for image" in capsys.readouterr().err
    broken = json.loads((root / "oracle.json").read_text())
    broken["annotations"][0]["segments_info"][0]["category_id"] = 99
    (tmp_path / "short.json").write_text(json.dumps(broken))
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "short.json: image" in err and "unknown Cityscapes category_id 99" in err
