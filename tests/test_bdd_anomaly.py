"""BDD-Anomaly built from a tiny fake BDD100K download (both layouts)."""

import numpy as np
import pytest
from PIL import Image

from vocabseg import cli
from vocabseg.data import bdd_anomaly
from vocabseg.data.bdd_anomaly import build_bdd_anomaly
from vocabseg.errors import InputError
from vocabseg.fileio import link_or_copy

H, W = 32, 64
# stem -> train ids in its mask (None: image without a label)
TRAIN = {
    "t0": [0, 10], "t1": [13, 255], "t2": [16, 0], "t3": [17, 1], "t4": [18, 2],
    "t5": [0, 18, 255], "t6": [11, 12], "t7": None,
}
VAL = {"v0": [0], "v1": [2, 8], "v2": [17, 18], "v3": [18, 9]}
LONE_LABEL = "v9"  # a val label without an image
EXPECTED = {
    "1+16": {"train": {"t0", "t1", "t6"}, "val": {"v0", "v1"}, "test": {"t2", "t3", "t4", "t5", "v2", "v3"}},
    "1+17": {"train": {"t0", "t1", "t4", "t5", "t6"}, "val": {"v0", "v1", "v3"}, "test": {"t2", "t3", "v2"}},
}


def _mask(classes, seed):
    """(H, W) uint8 mask holding exactly ``classes`` (random layout)."""
    rng = np.random.default_rng(seed)
    mask = rng.choice(np.array(classes, dtype=np.uint8), size=(H, W))
    mask.ravel()[: len(classes)] = classes  # every class present at least once
    return mask


def make_bdd(root, layout):
    """Fake BDD100K download under ``root``; returns {(split, stem): (image, label or None)}."""
    if layout == "10k":
        img_dir = {s: root / "images" / "10k" / s for s in ("train", "val")}
        lab_dir = {s: root / "labels" / "sem_seg" / "masks" / s for s in ("train", "val")}
        suffix = ".png"
    else:
        img_dir = {s: root / "seg" / "images" / s for s in ("train", "val")}
        lab_dir = {s: root / "seg" / "labels" / s for s in ("train", "val")}
        suffix = "_train_id.png"
    files = {}
    for i, (split, stems) in enumerate((("train", TRAIN), ("val", VAL))):
        img_dir[split].mkdir(parents=True)
        lab_dir[split].mkdir(parents=True)
        for j, (stem, classes) in enumerate(stems.items()):
            image = img_dir[split] / f"{stem}.jpg"
            Image.fromarray(np.full((H, W, 3), 10 * j, np.uint8)).save(image, quality=90)
            label = None
            if classes is not None:
                label = lab_dir[split] / f"{stem}{suffix}"
                Image.fromarray(_mask(classes, 100 * i + j), mode="L").save(label)
            files[split, stem] = (image, label)
    Image.fromarray(_mask([0], 7), mode="L").save(lab_dir["val"] / f"{LONE_LABEL}{suffix}")
    return files


@pytest.fixture(params=["10k", "seg"])
def bdd(request, tmp_path):
    root = tmp_path / "download" / "bdd100k"
    return root, make_bdd(root, request.param), request.param


def _stems(out, split):
    labels = sorted((out / "gtFine" / split / "bdd").glob("*_gtFine_labelTrainIds.png"))
    images = sorted((out / "leftImg8bit" / split / "bdd").glob("*_leftImg8bit.jpg"))
    stems = {p.name.removesuffix("_gtFine_labelTrainIds.png") for p in labels}
    assert stems == {p.name.removesuffix("_leftImg8bit.jpg") for p in images}
    return stems


@pytest.mark.parametrize("variant", ["1+16", "1+17"])
def test_split_rule_and_byte_identical_files(bdd, tmp_path, variant):
    root, files, layout = bdd
    out = tmp_path / "bdd_anomaly"
    summary = build_bdd_anomaly(root, out, variant)

    for split, stems in EXPECTED[variant].items():
        assert _stems(out, split) == stems
    assert summary["images"] == {s: len(v) for s, v in EXPECTED[variant].items()}
    assert summary["layout"] == layout
    assert summary["unknown_train_ids"] == ([16, 17, 18] if variant == "1+16" else [16, 17])
    assert summary["left_out"]["train"]["images_without_label"] == ["t7.jpg"]
    assert summary["left_out"]["val"]["labels_without_image"][0].startswith(LONE_LABEL)
    assert bdd_anomaly.read_json(out / "bdd_anomaly.json") == summary

    # labels and photos are the downloaded files, byte for byte, train ids unchanged
    for split, stems in EXPECTED[variant].items():
        for stem in stems:
            image, label = files["train" if stem.startswith("t") else "val", stem]
            got_label = out / "gtFine" / split / "bdd" / f"{stem}_gtFine_labelTrainIds.png"
            assert got_label.read_bytes() == label.read_bytes()
            assert (out / "leftImg8bit" / split / "bdd" / f"{stem}_leftImg8bit.jpg").read_bytes() == image.read_bytes()

    # pixel counts: recomputed from the masks; unknown classes only in test
    for split, stems in EXPECTED[variant].items():
        hist = np.zeros(256, np.int64)
        for stem in stems:
            label = files["train" if stem.startswith("t") else "val", stem][1]
            hist += np.bincount(np.asarray(Image.open(label)).ravel(), minlength=256)
        assert summary["pixels"][split] == {"per_train_id": hist[:19].tolist(), "void": int(hist[255])}
    unknown = summary["unknown_train_ids"]
    for split in ("train", "val"):
        assert all(summary["pixels"][split]["per_train_id"][t] == 0 for t in unknown)
    assert all(summary["pixels"]["test"]["per_train_id"][t] > 0 for t in unknown)
    if variant == "1+17":
        assert summary["pixels"]["train"]["per_train_id"][18] > 0  # bicycle images stayed in train
    assert not out.with_name("bdd_anomaly.tmp").exists()


def test_rerun_is_a_no_op_and_other_variant_rebuilds(tmp_path, monkeypatch):
    root = tmp_path / "download"
    make_bdd(root / "bdd100k", "10k")
    out = tmp_path / "out"
    first = build_bdd_anomaly(root, out, "1+16", threads=2)  # the parent of bdd100k/ works too
    marker = out / "bdd_anomaly.json"
    inode, mtime = marker.stat().st_ino, marker.stat().st_mtime_ns

    def must_not_run(*args):
        raise AssertionError("re-read a mask")

    monkeypatch.setattr(bdd_anomaly, "_pixel_counts", must_not_run)
    monkeypatch.setattr(bdd_anomaly, "link_or_copy", must_not_run)
    assert build_bdd_anomaly(root / "bdd100k", out, "1+16") == first
    assert (marker.stat().st_ino, marker.stat().st_mtime_ns) == (inode, mtime)
    monkeypatch.undo()

    second = build_bdd_anomaly(root, out, "1+17")
    assert second["images"] == {s: len(v) for s, v in EXPECTED["1+17"].items()}
    assert _stems(out, "test") == EXPECTED["1+17"]["test"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["download", "out"]  # no .tmp / .old debris


def test_interrupted_build_leaves_the_previous_output(tmp_path, monkeypatch):
    root = tmp_path / "bdd100k"
    make_bdd(root, "10k")
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        calls = []

        def dies_on_third(src, dst):
            calls.append(dst)
            if len(calls) == 3:
                raise KeyboardInterrupt
            link_or_copy(src, dst)

        m.setattr(bdd_anomaly, "link_or_copy", dies_on_third)
        with pytest.raises(KeyboardInterrupt):
            build_bdd_anomaly(root, out, "1+16")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bdd100k"]  # nothing half-done

    build_bdd_anomaly(root, out, "1+16")
    with monkeypatch.context() as m:
        m.setattr(bdd_anomaly, "link_or_copy", lambda src, dst: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            build_bdd_anomaly(root, out, "1+17")
    assert bdd_anomaly.read_json(out / "bdd_anomaly.json")["variant"] == "1+16"
    assert _stems(out, "test") == EXPECTED["1+16"]["test"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bdd100k", "out"]


def test_missing_folder_is_named_with_the_expected_layout(tmp_path):
    root = tmp_path / "bdd100k"
    make_bdd(root, "10k")
    missing = root / "labels" / "sem_seg" / "masks" / "val"
    for f in missing.iterdir():
        f.unlink()
    missing.rmdir()
    with pytest.raises(InputError) as err:
        build_bdd_anomaly(root, tmp_path / "out", "1+16")
    msg = str(err.value)
    assert msg.startswith(str(missing)) and "images/10k" in msg and "bdd-data.berkeley.edu" in msg
    assert not (tmp_path / "out").exists()

    with pytest.raises(InputError, match="bdd-data.berkeley.edu") as err:
        build_bdd_anomaly(tmp_path / "nowhere", tmp_path / "out", "1+16")
    assert str(err.value).startswith(str(tmp_path / "nowhere"))

    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no BDD100K semantic segmentation"):
        build_bdd_anomaly(tmp_path / "empty", tmp_path / "out", "1+16")


def test_bad_mask_values_are_named(tmp_path):
    root = tmp_path / "bdd100k"
    files = make_bdd(root, "10k")
    label = files["val", "v1"][1]
    Image.fromarray(np.full((H, W), 30, np.uint8), mode="L").save(label)
    with pytest.raises(InputError, match=r"v1\.png: values \[30\]"):
        build_bdd_anomaly(root, tmp_path / "out", "1+16")


def test_cli(tmp_path, capsys):
    root = tmp_path / "bdd100k"
    make_bdd(root, "seg")
    out = tmp_path / "out"
    argv = ["build-bdd-anomaly", "--bdd100k", str(root), "--out", str(out), "--variant", "1+17", "--threads", "2"]
    assert cli.main(argv) == 0
    assert "train 5, val 3, test 3" in capsys.readouterr().out
    argv[2] = str(tmp_path / "nope")
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {tmp_path / 'nope'}") and err.count("\n") == 1
