"""The panoptic PNG format: writer, fast reader, Pillow fallback, damage, pipeline use."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct

import numpy as np
import pytest
from cityscapesscripts.evaluation import evalPanopticSemanticLabeling as reference
from PIL import Image
from zlib_ng import zlib_ng

from vocabseg.approaches.oracle import write_oracle_predictions
from vocabseg.data import panoptic_png as png
from vocabseg.data.panoptic_png import (
    MAX_ID,
    id_to_rgb,
    read_panoptic_png,
    rgb_to_id,
    write_panoptic_png,
)
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.errors import InputError
from vocabseg.evaluation import panoptic as pan
from vocabseg.evaluation.panoptic import evaluate_panoptic
from vocabseg.evaluation.synthetic import SyntheticDataset, write_dataset

SHAPES = [(1, 1), (1, 9), (6, 1), (17, 23), (64, 129)]


# --------------------------------------------------------------------------- helpers


def random_ids(shape, seed=0) -> np.ndarray:
    """Random 24-bit ids with 0 and MAX_ID included: (H, W) uint32."""
    ids = np.random.default_rng(seed).integers(0, MAX_ID + 1, size=shape, dtype=np.uint32)
    ids.flat[0] = 0
    ids.flat[-1] = MAX_ID
    return ids


def segment_ids(shape=(40, 56), seed=0) -> np.ndarray:
    """Blocks of constant ids, like a segmentation map: (H, W) uint32."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, MAX_ID + 1, size=(4, 7), dtype=np.uint32)
    return np.repeat(np.repeat(blocks, shape[0] // 4, 0), shape[1] // 7, 1)


def as_cityscapesscripts_reads(path) -> np.ndarray:
    """What csEvalPanopticSemanticLabeling makes of a PNG: (H, W) ids."""
    return reference.rgb2id(np.array(Image.open(path), dtype=np.uint32))


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, body) of every chunk of a well-formed PNG."""
    out, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        out.append((kind, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return out


def build_png(header: tuple, rows: bytes, extra: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A PNG from IHDR fields, raw (filtered) rows and extra chunks before IDAT."""
    parts = [png._SIGNATURE, png._chunk(b"IHDR", struct.pack(">IIBBBBB", *header))]
    parts += [png._chunk(kind, body) for kind, body in extra]
    parts += [png._chunk(b"IDAT", zlib_ng.compress(rows)), png._chunk(b"IEND", b"")]
    return b"".join(parts)


def takes_fast_path(path) -> bool:
    """True if read_panoptic_png decodes ``path`` without Pillow."""
    return png._decode_plain(path.read_bytes(), path) is not None


# --------------------------------------------------------------------------- writing and reading


def test_rgb_id_conversions():
    ids = np.array([[0, 7, 26001], [33999, MAX_ID, 255 + 256 * 3]], dtype=np.uint32)
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    np.testing.assert_array_equal(rgb[0, 2], [26001 % 256, 26001 // 256, 0])
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)
    np.testing.assert_array_equal(rgb_to_id(rgb), reference.rgb2id(rgb))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.uint32, np.int64])
def test_round_trip_takes_the_fast_path(tmp_path, shape, dtype):
    ids = random_ids(shape, seed=sum(shape))
    path = tmp_path / "ids.png"
    write_panoptic_png(path, ids.astype(dtype))
    assert takes_fast_path(path)
    got = read_panoptic_png(path)
    assert got.dtype == np.uint32 and got.shape == shape
    np.testing.assert_array_equal(got, ids)
    np.testing.assert_array_equal(read_panoptic_png(path, "pil"), ids)


def test_written_file_is_a_plain_8bit_rgb_png(tmp_path):
    ids = segment_ids()
    path = tmp_path / "ids.png"
    write_panoptic_png(str(path), ids)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    parts = chunks(data)
    assert [kind for kind, _ in parts] == [b"IHDR", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", parts[0][1]) == (56, 40, 8, 2, 0, 0, 0)
    rows = np.frombuffer(zlib_ng.decompress(parts[1][1]), np.uint8).reshape(40, 1 + 3 * 56)
    assert not rows[:, 0].any()  # filter type 0 on every row
    with Image.open(path) as image:
        image.verify()  # Pillow checks the chunk CRCs
    with Image.open(path) as image:
        assert image.mode == "RGB" and image.size == (56, 40)


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")
@pytest.mark.parametrize("shape", SHAPES)
def test_other_decoders_read_identical_pixels(tmp_path, shape):
    from torchvision.io import decode_png, read_file  # libpng

    ids = random_ids(shape, seed=1 + sum(shape))
    path = tmp_path / "ids.png"
    write_panoptic_png(path, ids)
    np.testing.assert_array_equal(as_cityscapesscripts_reads(path), ids)
    libpng = decode_png(read_file(str(path))).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(rgb_to_id(libpng), ids)


def test_several_idat_chunks(tmp_path, monkeypatch):
    ids = random_ids((20, 30), seed=3)
    monkeypatch.setattr(png, "IDAT_SIZE", 7)
    path = tmp_path / "ids.png"
    write_panoptic_png(path, ids)
    kinds = [kind for kind, _ in chunks(path.read_bytes())]
    assert kinds.count(b"IDAT") > 100 and kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
    assert takes_fast_path(path)
    np.testing.assert_array_equal(read_panoptic_png(path), ids)
    np.testing.assert_array_equal(as_cityscapesscripts_reads(path), ids)


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 2, 3), np.uint32), np.zeros((0, 4), np.uint32), np.zeros((2, 2))]
)
def test_writer_rejects_non_id_arrays(tmp_path, bad):
    with pytest.raises(ValueError, match="2-D integer"):
        write_panoptic_png(tmp_path / "x.png", bad)


@pytest.mark.parametrize("value", [-1, MAX_ID + 1])
def test_writer_rejects_ids_out_of_range(tmp_path, value):
    with pytest.raises(ValueError, match="0..16777215"):
        write_panoptic_png(tmp_path / "x.png", np.array([[0, value]], dtype=np.int64))
    assert not (tmp_path / "x.png").exists()


# --------------------------------------------------------------------------- Pillow fallback


def pillow_files(tmp_path, ids: np.ndarray) -> dict:
    """PNGs of ``ids`` that the fast path declines, each as {name: path}."""
    rgb = id_to_rgb(ids)
    h, w = ids.shape
    files = {name: tmp_path / f"{name}.png" for name in ("default", "optimized", "rgba", "text")}
    Image.fromarray(rgb).save(files["default"])  # adaptive filters
    Image.fromarray(rgb).save(files["optimized"], optimize=True)
    alpha = np.random.default_rng(5).integers(0, 256, (h, w, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], -1), mode="RGBA").save(files["rgba"])
    # ours, plus an ancillary chunk that Pillow interprets
    files["text"].write_bytes(
        build_png((w, h, 8, 2, 0, 0, 0), _filter_rows(rgb, [0] * h), [(b"tEXt", b"k\0v")])
    )
    # filter type 0 on every row but one, which uses Sub (1)
    files["one_sub_row"] = tmp_path / "sub.png"
    files["one_sub_row"].write_bytes(
        build_png((w, h, 8, 2, 0, 0, 0), _filter_rows(rgb, [0, 0, 1] + [0] * (h - 3)))
    )
    # 16 bits per channel: Pillow (and so cityscapesscripts) keeps the high bytes
    wide = rgb.astype(">u2") * 257
    rows = b"".join(b"\0" + wide[y].tobytes() for y in range(h))
    files["16bit"] = tmp_path / "16bit.png"
    files["16bit"].write_bytes(build_png((w, h, 16, 2, 0, 0, 0), rows))
    return files


def _filter_rows(rgb: np.ndarray, filters: list[int]) -> bytes:
    """Raw PNG rows of (H, W, 3) uint8 with filter 0 (None) or 1 (Sub) per row."""
    out = []
    for row, kind in zip(rgb.reshape(rgb.shape[0], -1), filters):
        if kind == 1:
            row = (row.astype(np.int16) - np.concatenate([np.zeros(3, np.int16), row[:-3]])) % 256
        out.append(bytes([kind]) + row.astype(np.uint8).tobytes())
    return b"".join(out)


def test_other_pngs_are_read_by_pillow(tmp_path):
    ids = segment_ids(seed=2)
    for name, path in pillow_files(tmp_path, ids).items():
        assert not takes_fast_path(path), name
        np.testing.assert_array_equal(read_panoptic_png(path), ids, err_msg=name)
        np.testing.assert_array_equal(as_cityscapesscripts_reads(path), ids, err_msg=name)


def test_palette_png_is_rejected_like_cityscapesscripts(tmp_path):
    path = tmp_path / "palette.png"
    Image.fromarray(id_to_rgb(segment_ids(seed=4))).convert("P").save(path)
    with pytest.raises(InputError, match="palette.png.*mode 'P'"):
        read_panoptic_png(path)
    with pytest.raises(Exception):  # its rgb2id cannot take a 2-D palette image
        as_cityscapesscripts_reads(path)


# --------------------------------------------------------------------------- damage


@pytest.fixture()
def good_png(tmp_path):
    path = tmp_path / "good_panoptic.png"
    write_panoptic_png(path, random_ids((24, 40), seed=6))
    return path


IDAT_BODY = 8 + 25 + 8  # signature, IHDR chunk, IDAT length and type


@pytest.mark.parametrize(
    "damage",
    ["empty", "signature", "in_ihdr", "in_idat", "before_iend", "no_iend_crc", "garbage"],
)
@pytest.mark.parametrize("decoder", ["auto", "pil"])
def test_truncated_or_garbage_files_name_the_file(good_png, damage, decoder):
    data = good_png.read_bytes()
    cut = {
        "empty": 0,
        "signature": 5,
        "in_ihdr": 20,
        "in_idat": len(data) // 2,
        "before_iend": len(data) - 12,
        "no_iend_crc": len(data) - 4,
    }
    ids = read_panoptic_png(good_png)
    if damage == "garbage":
        good_png.write_bytes(b"definitely not a PNG file")
    else:
        good_png.write_bytes(data[: cut[damage]])
    if decoder == "pil" and damage in ("before_iend", "no_iend_crc"):
        # Pillow stops reading once it has the image data; the fast path wants IEND
        np.testing.assert_array_equal(read_panoptic_png(good_png, decoder), ids)
        return
    with pytest.raises(InputError, match="good_panoptic.png"):
        read_panoptic_png(good_png, decoder)


@pytest.mark.parametrize("where", ["ihdr", "idat_start", "idat_middle", "idat_end", "crc", "iend"])
def test_bit_flips_name_the_file(good_png, where):
    data = bytearray(good_png.read_bytes())
    idat = IDAT_BODY
    idat_length = struct.unpack_from(">I", data, idat - 8)[0]
    position = {
        "ihdr": 8 + 8 + 9,  # the colour type
        "idat_start": idat + 2,
        "idat_middle": idat + idat_length // 2,
        "idat_end": idat + idat_length - 1,  # inside the Adler-32
        "crc": idat + idat_length,  # the IDAT CRC, which Pillow does not check
        "iend": len(data) - 1,
    }[where]
    data[position] ^= 0x10
    good_png.write_bytes(bytes(data))
    with pytest.raises(InputError, match="good_panoptic.png"):
        read_panoptic_png(good_png)


def test_damage_that_pillow_lets_pass_is_still_an_error(good_png):
    ids = read_panoptic_png(good_png)
    data = bytearray(good_png.read_bytes())
    data[-13] ^= 0x01  # last byte of the IDAT CRC
    good_png.write_bytes(bytes(data))
    np.testing.assert_array_equal(read_panoptic_png(good_png, "pil"), ids)
    with pytest.raises(InputError, match="good_panoptic.png: CRC mismatch in chunk IDAT"):
        read_panoptic_png(good_png)


@pytest.mark.parametrize("rows_kept", [5, 7])  # too few rows; one row too many
def test_image_data_of_the_wrong_size(tmp_path, rows_kept):
    rgb = id_to_rgb(random_ids((6, 5), seed=7))
    rgb = np.concatenate([rgb, rgb[:1]])[:rows_kept]
    path = tmp_path / "size.png"
    path.write_bytes(build_png((5, 6, 8, 2, 0, 0, 0), _filter_rows(rgb, [0] * rows_kept)))
    with pytest.raises(InputError, match="size.png: image data of the wrong size"):
        read_panoptic_png(path)


def test_missing_file_and_unknown_decoder(tmp_path):
    with pytest.raises(InputError, match="absent.png"):
        read_panoptic_png(tmp_path / "absent.png")
    with pytest.raises(ValueError, match="decoder"):
        read_panoptic_png(tmp_path / "absent.png", "vips")


# --------------------------------------------------------------------------- the pipeline


def test_prepare_rewrites_panoptic_gt_pixel_identically(tmp_path):
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    raw = tmp_path / "raw"
    generate_city(raw, split_sizes={"train": 2, "val": 2}, height=64, width=128, seed=4)
    official = tmp_path / "official"
    official.mkdir()
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(str(raw / "gtFine"), str(official), False, ["train", "val"])
    prepared = tmp_path / "prepared"
    prepare_dataset(raw, prepared, ("train", "val"))
    for split in ("train", "val"):
        folder = f"cityscapes_panoptic_{split}"
        written = sorted((official / folder).glob("*.png"))
        assert len(written) == 2
        for before in written:
            after = prepared / folder / before.name
            assert after.read_bytes() != before.read_bytes()
            assert takes_fast_path(after) and not takes_fast_path(before)
            np.testing.assert_array_equal(
                as_cityscapesscripts_reads(after), as_cityscapesscripts_reads(before)
            )
        gt_json = f"{folder}.json"
        assert (prepared / gt_json).read_text() == (official / gt_json).read_text()


def test_oracle_writes_the_gt_ids_in_the_project_format(tmp_path):
    ds = write_dataset(tmp_path / "data", n_images=2, seed=3)  # GT written by Pillow
    out = tmp_path / "oracle"
    assert write_oracle_predictions(ds.gt_json, ds.gt_folder, tmp_path / "oracle.json", out) == 2
    for gt in sorted(ds.gt_folder.glob("*.png")):
        assert takes_fast_path(out / gt.name)
        np.testing.assert_array_equal(read_panoptic_png(out / gt.name), read_panoptic_png(gt))


def rewrite(ds: SyntheticDataset, root) -> SyntheticDataset:
    """``ds`` with every PNG rewritten by write_panoptic_png (same JSON files)."""
    folders = []
    for folder in (ds.gt_folder, ds.pred_folder):
        target = root / folder.name
        shutil.copytree(folder, target)
        for path in target.glob("*.png"):
            write_panoptic_png(path, read_panoptic_png(path))
        folders.append(target)
    return SyntheticDataset(ds.gt_json, folders[0], ds.pred_json, folders[1], ds.image_ids)


def reference_results(ds: SyntheticDataset) -> dict:
    """cityscapesscripts' single-core evaluation of ``ds``."""
    gt, pred = json.loads(ds.gt_json.read_text()), json.loads(ds.pred_json.read_text())
    categories = {c["id"]: c for c in gt["categories"]}
    by_image = {a["image_id"]: a for a in pred["annotations"]}
    pairs = [(a, by_image[a["image_id"]]) for a in gt["annotations"]]
    with contextlib.redirect_stdout(io.StringIO()):
        stats = reference.pq_compute_single_core(
            0, pairs, str(ds.gt_folder), str(ds.pred_folder), categories
        )
    return json.loads(json.dumps(reference.average_pq(stats, categories)))


@pytest.mark.parametrize("large_ids", [False, True])
def test_evaluator_on_project_pngs_matches_cityscapesscripts(tmp_path, large_ids):
    pillow = write_dataset(tmp_path / "data", n_images=4, seed=11, large_ids=large_ids)
    ours_format = rewrite(pillow, tmp_path / "rewritten")
    assert all(takes_fast_path(p) for p in ours_format.pred_folder.glob("*.png"))
    ref = reference_results(ours_format)
    mine = evaluate_panoptic(
        ours_format.gt_json, ours_format.gt_folder, ours_format.pred_json, ours_format.pred_folder
    )
    for group in ("All", "Things", "Stuff"):
        assert mine[group]["n"] == ref[group]["n"]
        for key in ("pq", "sq", "rq"):
            assert abs(mine[group][key] - ref[group][key]) <= 1e-12, (group, key)
    for cat, values in ref["per_class"].items():
        for key, value in values.items():
            assert abs(mine["per_class"][cat][key] - value) <= 1e-12, (cat, key)
    assert mine == evaluate_panoptic(
        pillow.gt_json, pillow.gt_folder, pillow.pred_json, pillow.pred_folder, decoder="pil"
    )


@pytest.mark.parametrize("kind", ["segments", "noise", "one_pixel"])
def test_joint_histogram_counts_every_pixel_pair(kind):
    rng = np.random.default_rng(8)
    if kind == "segments":
        gt, pred = segment_ids(seed=1).ravel(), segment_ids(seed=2).ravel()
    elif kind == "noise":  # every pixel its own run
        gt = rng.integers(0, 5, 999).astype(np.uint32)
        pred = rng.integers(0, 4, 999).astype(np.uint32)
    else:
        gt, pred = np.array([3], np.uint32), np.array([0], np.uint32)
    gt_slots = pan.SlotMap.of(np.unique(gt).astype(np.int64))
    pred_slots = pan.SlotMap.of(np.unique(pred).astype(np.int64))
    hist = pan.joint_histogram(gt, gt_slots, pred, pred_slots)
    assert hist.dtype == np.int64 and hist.sum() == gt.size
    for g_slot, g_id in enumerate([0, *gt_slots.keys]):
        for p_slot, p_id in enumerate([0, *pred_slots.keys]):
            assert hist[g_slot, p_slot] == np.count_nonzero((gt == g_id) & (pred == p_id))
