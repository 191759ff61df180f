"""The panoptic training dataset and its Cityscapes augmentation."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vocabseg.data.labels import EVAL_IDS
from vocabseg.data.panoptic_dataset import PanopticTrainDataset
from vocabseg.data.prepare import prepare_dataset
from vocabseg.data.synth import generate_city
from vocabseg.data.transforms import TINY_AUGMENT, AugmentConfig, TrainAugment, color_jitter_ssd
from vocabseg.data.panoptic_png import id_to_rgb, read_panoptic_png
from vocabseg.errors import InputError

# A hand-made 48x96 image: (segment id, label id, iscrowd, rows, cols, photo colour).
# Painted in order, later ones on top; everything unpainted is VOID (id 0).
STEM = "handcity_000000_000019"
SEGMENTS = [
    (7, 7, 0, (24, 48), (0, 96), (128, 64, 128)),  # road
    (23, 23, 0, (0, 12), (0, 96), (70, 130, 180)),  # sky
    (11, 11, 0, (12, 24), (0, 48), (200, 120, 40)),  # building
    (26000, 26, 0, (28, 40), (10, 30), (0, 0, 142)),  # car
    (26001, 26, 0, (26, 44), (60, 86), (250, 250, 20)),  # car
    (24, 24, 1, (14, 23), (50, 59), (220, 20, 60)),  # person crowd: dropped
    (27000, 27, 0, (13, 23), (70, 91), (0, 180, 70)),  # truck: not in the vocabulary
]
VOID_COLOR = (40, 40, 40)
CLASS_IDS = (26, 7, 23, 11, 24)  # order defines the indices; no truck (27)


def _write_handmade(root):
    ids = np.zeros((48, 96), np.uint32)
    photo = np.empty((48, 96, 3), np.uint8)
    photo[:] = VOID_COLOR
    for sid, _, _, (r0, r1), (c0, c1), color in SEGMENTS:
        ids[r0:r1, c0:c1] = sid
        photo[r0:r1, c0:c1] = color
    (root / "images" / "handcity").mkdir(parents=True)
    (root / "pan").mkdir()
    Image.fromarray(photo).save(root / "images" / "handcity" / f"{STEM}_leftImg8bit.png")
    Image.fromarray(id_to_rgb(ids)).save(root / "pan" / f"{STEM}_gtFine_panoptic.png")
    segments_info = [
        {
            "id": sid,
            "category_id": cat,
            "iscrowd": crowd,
            "area": int((ids == sid).sum()),
            "bbox": [0, 0, 1, 1],
        }
        for sid, cat, crowd, *_ in SEGMENTS
    ]
    gt = {
        "images": [{"id": STEM, "file_name": f"{STEM}_gtFine_leftImg8bit.png", "height": 48, "width": 96}],
        "annotations": [
            {"image_id": STEM, "file_name": f"{STEM}_gtFine_panoptic.png", "segments_info": segments_info}
        ],
        "categories": [{"id": c, "name": str(c), "isthing": int(c >= 24)} for c in EVAL_IDS],
    }
    (root / "pan.json").write_text(json.dumps(gt))
    return ids, photo


@pytest.fixture()
def handmade(tmp_path):
    ids, photo = _write_handmade(tmp_path)

    def make(transform=None, root=tmp_path):
        return PanopticTrainDataset(root / "pan.json", root / "pan", root / "images", CLASS_IDS, transform)

    return make, ids, photo, tmp_path


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    root = tmp_path_factory.mktemp("city")
    generate_city(root / "raw", split_sizes={"train": 3}, height=64, width=128, seed=4)
    prepare_dataset(root / "raw", root / "prepared", ("train",))
    return root


def test_handmade_targets_drop_crowd_and_out_of_vocabulary_segments(handmade):
    make, ids, photo, _ = handmade
    ds = make()
    assert len(ds) == 1 and ds.num_classes == 5 and ds.image_ids == [STEM]
    image, target = ds.get(0, seed=11)
    assert image.dtype == torch.float32 and image.shape == (3, 48, 96)
    assert torch.equal(image, torch.from_numpy(photo).permute(2, 0, 1).float())
    assert target["seed"] == 11
    assert target["labels"].tolist() == [1, 2, 3, 0, 0]  # road, sky, building, car, car
    kept = [7, 23, 11, 26000, 26001]
    assert target["masks"].dtype == torch.bool and target["masks"].shape == (5, 48, 96)
    for mask, sid in zip(target["masks"], kept):
        assert torch.equal(mask, torch.from_numpy(ids == sid))
    covered = target["masks"].any(0).numpy()
    assert not covered[(ids == 24) | (ids == 27000) | (ids == 0)].any()  # crowd, truck and void: no mask


def test_synthetic_city_targets_match_the_panoptic_png(city):
    prepared = city / "prepared"
    class_ids = [c for c in reversed(EVAL_IDS) if c not in (24, 26)]  # drop person and car
    ds = PanopticTrainDataset(
        prepared / "cityscapes_panoptic_train.json",
        prepared / "cityscapes_panoptic_train",
        city / "raw" / "leftImg8bit" / "train",
        class_ids,
    )
    gt = json.loads((prepared / "cityscapes_panoptic_train.json").read_text())
    seen_crowd = seen_dropped = 0
    for index, ann in enumerate(gt["annotations"]):
        image, target = ds.get(index, seed=index)
        png = read_panoptic_png(prepared / "cityscapes_panoptic_train" / ann["file_name"])
        kept = [s for s in ann["segments_info"] if not s["iscrowd"] and s["category_id"] in class_ids]
        seen_crowd += sum(s["iscrowd"] for s in ann["segments_info"])
        seen_dropped += sum(s["category_id"] in (24, 26) and not s["iscrowd"] for s in ann["segments_info"])
        assert target["labels"].tolist() == [class_ids.index(s["category_id"]) for s in kept]
        assert image.shape[1:] == png.shape
        for mask, seg in zip(target["masks"], kept):
            assert torch.equal(mask, torch.from_numpy(png == seg["id"]))
            assert int(mask.sum()) == seg["area"]
        assert int(target["masks"].sum(0).max()) <= 1  # disjoint
    assert seen_crowd > 0 and seen_dropped > 0  # the fixture exercises both filters


def test_augmentation_is_deterministic_per_seed_and_leaves_global_rng_alone(city):
    prepared = city / "prepared"
    cfg = AugmentConfig(crop_size=(48, 96), min_scale=0.5, max_scale=2.0)
    ds = PanopticTrainDataset(
        prepared / "cityscapes_panoptic_train.json",
        prepared / "cityscapes_panoptic_train",
        city / "raw" / "leftImg8bit" / "train",
        EVAL_IDS,
        TrainAugment(cfg),
    )
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    a_img, a = ds.get(1, seed=7)
    b_img, b = ds.get(1, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert a_img.shape == (3, 48, 96) and a["masks"].shape[1:] == (48, 96)
    assert (
        torch.equal(a_img, b_img)
        and torch.equal(a["labels"], b["labels"])
        and torch.equal(a["masks"], b["masks"])
    )
    others = [ds.get(1, seed=s)[0] for s in (8, 9, 10)]
    assert all(not torch.equal(a_img, o) for o in others)
    assert a["masks"].flatten(1).any(1).all()  # segments cropped away are dropped


def _erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels whose (2r+1)^2 neighbourhood lies in the mask; the crop border counts as outside,
    as the image there also blends pixels that were cropped away."""
    m = F.pad(mask.float()[:, None], (radius,) * 4, value=0.0)
    return (-F.max_pool2d(-m, 2 * radius + 1, stride=1))[:, 0] > 0.5


def test_masks_stay_aligned_with_the_image_under_scale_crop_flip(handmade):
    make, _, _, _ = handmade
    cfg = AugmentConfig(crop_size=(40, 80), min_scale=0.5, max_scale=2.0, color_jitter=False)
    ds = make(TrainAugment(cfg))
    colors_of = {}
    for _, cat, crowd, _, _, color in SEGMENTS:
        if not crowd and cat in CLASS_IDS:
            colors_of.setdefault(CLASS_IDS.index(cat), set()).add(color)
    checked = 0
    for seed in range(40):
        image, target = ds.get(0, seed)
        interior = _erode(target["masks"], 2)
        for mask, inner, label in zip(target["masks"], interior, target["labels"].tolist()):
            pixels = image[:, inner].T  # [P, 3]
            if len(pixels) == 0:
                continue
            color = tuple(round(v) for v in pixels[0].tolist())
            assert color in colors_of[label], (seed, label, color)
            assert (pixels - torch.tensor(color, dtype=torch.float32)).abs().max() <= 1.0, seed
            checked += len(pixels)
    assert checked > 2000


def test_ramp_image_and_index_map_stay_within_half_a_pixel():
    """The image encodes each pixel's source coordinates; the segmentation its source index."""
    h, w = 60, 110
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([2.0 * xs, 2.0 * ys, torch.zeros(h, w)]).float()
    index = (ys * w + xs + 1).int()  # 0 is the padding
    aug = TrainAugment(AugmentConfig(crop_size=(64, 96), min_scale=0.5, max_scale=2.0, color_jitter=False))
    flips = set()
    for seed in range(30):
        out, seg = aug(image, index, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 64, 96) and seg.shape == (64, 96)
        pad = seg == 0
        assert (out[:, pad] == 0).all()
        src = seg[~pad].long() - 1
        sy, sx = src // w, src % w
        away = (sy >= 3) & (sy < h - 3) & (sx >= 3) & (sx < w - 3)
        assert (out[0][~pad][away] / 2 - sx[away]).abs().max() <= 0.5 + 1e-3, seed
        assert (out[1][~pad][away] / 2 - sy[away]).abs().max() <= 0.5 + 1e-3, seed
        row = seg[0][seg[0] > 0].long() - 1
        flips.add(bool(row[-1] % w < row[0] % w))
    assert flips == {True, False}


def test_small_images_are_padded_to_the_crop(handmade):
    make, ids, photo, _ = handmade
    cfg = AugmentConfig(crop_size=(64, 128), min_scale=1.0, max_scale=1.0, flip=False, color_jitter=False)
    image, target = make(TrainAugment(cfg)).get(0, seed=0)
    assert image.shape == (3, 64, 128) and target["masks"].shape == (5, 64, 128)
    assert torch.equal(image[:, :48, :96], torch.from_numpy(photo).permute(2, 0, 1).float())
    assert (image[:, 48:] == 0).all() and (image[:, :, 96:] == 0).all()
    assert not target["masks"][:, 48:].any() and not target["masks"][:, :, 96:].any()
    assert torch.equal(target["masks"][0, :48, :96], torch.from_numpy(ids == 7))


def test_color_jitter_is_seeded_and_bounded():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 16, 16, generator=g) * 255
    outs = [color_jitter_ssd(image, torch.Generator().manual_seed(s)) for s in range(12)]
    assert torch.equal(outs[0], color_jitter_ssd(image, torch.Generator().manual_seed(0)))
    assert all(o.min() >= 0 and o.max() <= 255 for o in outs)
    assert sum(not torch.allclose(o, image, atol=1e-3) for o in outs) >= 10
    assert TINY_AUGMENT.crop_size == (128, 256)
    with pytest.raises(InputError, match="min_scale"):
        AugmentConfig(min_scale=2.0, max_scale=1.0)


def test_unreadable_files_raise_input_error_naming_them(handmade):
    make, _, _, root = handmade
    png = root / "pan" / f"{STEM}_gtFine_panoptic.png"
    photo = root / "images" / "handcity" / f"{STEM}_leftImg8bit.png"
    backup = png.read_bytes()
    png.write_bytes(backup[: len(backup) // 2])
    with pytest.raises(InputError, match=png.name):
        make().get(0, seed=0)
    png.write_bytes(backup)
    photo.write_bytes(b"not a png")
    with pytest.raises(InputError, match=photo.name):
        make().get(0, seed=0)
    photo.unlink()
    with pytest.raises(InputError, match=photo.name):
        make().get(0, seed=0)
    shutil.copy(root / "pan.json", root / "pan.bak")
    (root / "pan.json").write_text("{")
    with pytest.raises(InputError, match="pan.json"):
        make()
