"""Dataset preparation on the synthetic city, and its errors on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vocabseg.data.labels import EVAL_IDS, ID_TO_TRAIN_ID
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.errors import InputError


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city") / "raw"
    generate_city(root, split_sizes={"train": 3, "val": 2}, height=64, width=128, seed=1)
    return root


def test_prepare_writes_train_ids_and_panoptic_ground_truth(city, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(city, out, ("train", "val"), threads=2)
    for split, n in (("train", 3), ("val", 2)):
        gt = json.loads((out / f"cityscapes_panoptic_{split}.json").read_text())
        assert len(gt["annotations"]) == n
        assert {c["id"] for c in gt["categories"]} == set(EVAL_IDS)  # label ids, not train ids
        assert len(list((out / f"cityscapes_panoptic_{split}").glob("*_gtFine_panoptic.png"))) == n
    label_png = next((city / "gtFine/train").glob("*/*_gtFine_labelIds.png"))
    train_png = out / label_png.relative_to(city).with_name(label_png.name.replace("labelIds", "labelTrainIds"))
    assert np.array_equal(np.asarray(Image.open(train_png)), ID_TO_TRAIN_ID[np.asarray(Image.open(label_png))])
    assert not list(city.rglob("*labelTrainIds.png"))  # the raw data stays untouched
    assert not out.with_name("prepared.tmp").exists()


def test_truncated_png_is_named_and_earlier_output_survives(city, tmp_path):
    broken = tmp_path / "raw"
    subprocess.run(["cp", "-r", str(city), str(broken)], check=True)
    victim = next((broken / "leftImg8bit/val").glob("*/*.png"))
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "earlier.json").write_text("keep")
    with pytest.raises(InputError, match=victim.name):
        prepare_dataset(broken, out, ("train", "val"))
    assert (out / "earlier.json").read_text() == "keep"

    res = subprocess.run(
        [sys.executable, "-m", "vocabseg.cli", "prepare", "--raw", str(broken), "--out", str(out)],
        capture_output=True, text=True,
    )
    assert res.returncode == 1
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ") and victim.name in res.stderr
    assert "Traceback" not in res.stderr


def test_missing_split_folder_is_named(tmp_path):
    with pytest.raises(InputError, match="gtFine/val"):
        prepare_dataset(tmp_path, tmp_path / "out", ("val",))


def test_missing_image_for_annotation_is_named(city, tmp_path):
    broken = tmp_path / "raw"
    subprocess.run(["cp", "-r", str(city), str(broken)], check=True)
    image = next((broken / "leftImg8bit/train").glob("*/*.png"))
    image.unlink()
    with pytest.raises(InputError, match=image.name):
        prepare_dataset(broken, tmp_path / "out", ("train",))
