"""Prepare a Cityscapes-layout dataset for training and evaluation.

Runs the official cityscapesscripts conversions, the same code path for the real
Cityscapes download and for the synthetic city:

* ``json2labelImg(..., "trainIds")`` for every ``*_gtFine_polygons.json`` (what
  ``csCreateTrainIdLabelImgs`` does), written to a mirrored tree under the output
  folder instead of next to the raw data, so the download stays read-only;
* ``convert2panoptic`` (what ``csCreatePanopticImgs`` does, **label ids**, not
  train ids) for each split, its PNGs then rewritten pixel for pixel by
  :func:`~vocabseg.data.panoptic_png.write_panoptic_png` (same ids, a PNG layout
  that reads much faster).

Output layout (``out``)::

    gtFine/<split>/<city>/<stem>_gtFine_labelTrainIds.png
    cityscapes_panoptic_<split>.json
    cityscapes_panoptic_<split>/<stem>_gtFine_panoptic.png

The output folder is assembled in ``<out>.tmp`` and renamed into place at the end,
so an interrupted run never leaves a half-prepared dataset behind.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

from vocabseg.data.panoptic_png import read_panoptic_png, write_panoptic_png
from vocabseg.errors import InputError
from vocabseg.fileio import replace_dir

__all__ = ["prepare_dataset", "check_png", "list_split"]


def check_png(path: Path) -> None:
    """Fully decode ``path``; raise :class:`InputError` naming it if it is corrupt."""
    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: not a readable PNG ({err}); re-create or re-download it") from None


def list_split(raw: Path, split: str) -> list[Path]:
    """Return the sorted ``*_gtFine_polygons.json`` files of ``split`` under ``raw``.

    Raises :class:`InputError` if the split folder is missing or empty, or if an
    annotation has no matching ``leftImg8bit`` image or instance/label PNG.
    """
    folder = raw / "gtFine" / split
    polygons = sorted(folder.glob("*/*_gtFine_polygons.json"))
    if not polygons:
        raise InputError(f"{folder}: no *_gtFine_polygons.json files; is the dataset downloaded?")
    for poly in polygons:
        stem = poly.name[: -len("_gtFine_polygons.json")]
        city = poly.parent.name
        needed = [
            raw / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
            poly.with_name(f"{stem}_gtFine_instanceIds.png"),
            poly.with_name(f"{stem}_gtFine_labelIds.png"),
        ]
        for path in needed:
            if not path.is_file():
                raise InputError(f"{path}: missing (annotation {poly} has no matching file)")
    return polygons


def _check_images(raw: Path, polygons: list[Path], split: str) -> None:
    for poly in polygons:
        stem = poly.name[: -len("_gtFine_polygons.json")]
        check_png(raw / "leftImg8bit" / split / poly.parent.name / f"{stem}_leftImg8bit.png")
        check_png(poly.with_name(f"{stem}_gtFine_instanceIds.png"))


def _train_id_image(args: tuple[Path, Path]) -> None:
    from cityscapesscripts.preparation.json2labelImg import json2labelImg

    src, dst = args
    dst.parent.mkdir(parents=True, exist_ok=True)
    json2labelImg(str(src), str(dst), "trainIds")


def _reencode_panoptic(png: Path) -> None:
    """Rewrite one panoptic PNG with write_panoptic_png; the ids stay the same."""
    write_panoptic_png(png, read_panoptic_png(png))


def _run(work, jobs: list, threads: int) -> None:
    """Call ``work`` on every job, in ``threads`` worker processes if more than one."""
    if threads > 1:
        with ProcessPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work, jobs, chunksize=16))
    else:
        for job in jobs:
            work(job)


def prepare_dataset(
    raw: Path, out: Path, splits: tuple[str, ...] = ("train", "val"), threads: int = 1
) -> None:
    """Write trainId label images and COCO-panoptic ground truth for ``splits``.

    Args:
        raw: dataset root holding ``leftImg8bit/`` and ``gtFine/``.
        out: output folder (replaced atomically).
        splits: the splits to convert.
        threads: worker processes for the trainId conversion (the job's threads).
    """
    from cityscapesscripts.preparation.createPanopticImgs import convert2panoptic

    raw, out = Path(raw), Path(out)
    per_split = {split: list_split(raw, split) for split in splits}
    for split, polygons in per_split.items():
        _check_images(raw, polygons, split)

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    jobs = [
        (poly, tmp / poly.relative_to(raw).with_name(poly.name.replace("_polygons.json", "_labelTrainIds.png")))
        for polygons in per_split.values()
        for poly in polygons
    ]
    _run(_train_id_image, jobs, threads)

    # convert2panoptic prints a carriage-return progress bar; keep the log readable.
    with contextlib.redirect_stdout(io.StringIO()):
        convert2panoptic(
            cityscapesPath=str(raw / "gtFine"), outputFolder=str(tmp), useTrainId=False, setNames=list(splits)
        )
    panoptic_pngs = [png for split in splits for png in sorted((tmp / f"cityscapes_panoptic_{split}").glob("*.png"))]
    _run(_reencode_panoptic, panoptic_pngs, threads)
    replace_dir(tmp, out)
