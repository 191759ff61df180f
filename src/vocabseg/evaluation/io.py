"""Reading COCO-panoptic PNGs and JSON files, and writing metrics.

A COCO-panoptic PNG stores one segment id per pixel as an RGB colour,
``id = R + 256 G + 256² B``; id 0 is VOID. As in ``cityscapesscripts``, the image
must decode (with PIL) to mode RGB or RGBA; the alpha channel is ignored.

Two decoders give identical ids:

* ``"pil"``: Pillow, always available, and the arbiter of what is a valid file;
* ``"vips"``: libvips (>= 8.12) through the optional ``pyvips`` package (with its
  ``pyvips-binary`` wheel), about 3x faster on Cityscapes-sized PNGs, mostly because
  its zlib inflates the long runs of segmentation maps much faster. It is only a
  fast path: plain 8-bit RGB/RGBA PNGs that libvips decodes without any warning.
  Anything else (palette, grey, 16-bit, damaged, ...) is decoded again by PIL, so
  both decoders accept and reject exactly the same files. libvips runs
  single-threaded here and its operation cache is disabled (a rewritten file is
  always decoded afresh).

``"auto"`` (the default) uses libvips when ``pyvips`` can be imported, else PIL.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageFile

from vocabseg.errors import InputError

__all__ = ["DECODERS", "vips_available", "read_panoptic_png", "load_json", "write_json_atomic"]

DECODERS = ("auto", "pil", "vips")

# raw PIL packer per accepted mode: 4 bytes per pixel, R, G, B and one more byte
_PIL_PACKERS = {"RGB": "RGBX", "RGBA": "RGBA"}
_ID_MASK = np.uint32(0x00FFFFFF)


def _import_vips():
    """The configured ``pyvips`` module, or None if it (or a recent libvips) is unavailable."""
    try:
        import pyvips

        if (pyvips.version(0), pyvips.version(1)) < (8, 12):  # no "fail_on" before 8.12
            return None
    except Exception:  # ImportError, or OSError/Exception when libvips itself is missing
        return None
    pyvips.cache_set_max(0)
    pyvips.concurrency_set(1)
    return pyvips


_pyvips = _import_vips()


def vips_available() -> bool:
    """True if the ``"vips"`` decoder can be used."""
    return _pyvips is not None


def _ids_from_packed(packed: bytes, height: int, width: int) -> np.ndarray:
    """(H, W) uint32 ids from 4 bytes per pixel (R, G, B, ignored byte)."""
    as_uint32 = np.frombuffer(packed, dtype="<u4")
    return np.bitwise_and(as_uint32, _ID_MASK).reshape(height, width)


def _open_binary(path: Path):
    """``open(path, "rb")``; a missing or unreadable file is an InputError naming it."""
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot read panoptic PNG {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make PIL raise on truncated image data even if someone relaxed it globally."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _read_with_pil(path: Path) -> np.ndarray:
    """Decode with Pillow. Returns (H, W) uint32 ids."""
    with _open_binary(path) as fh:
        try:
            with _strict_truncation():
                image = Image.open(fh)
                image.load()  # the complete decode: truncation is detected here
        except Exception as exc:  # PIL raises OSError, SyntaxError, struct.error, ...
            raise InputError(f"cannot decode panoptic PNG {path}: {exc}") from exc
    packer = _PIL_PACKERS.get(image.mode)
    if packer is None:
        raise InputError(f"panoptic PNG {path} has mode {image.mode!r}; expected 8-bit RGB or RGBA")
    width, height = image.size
    return _ids_from_packed(image.tobytes("raw", packer), height, width)


def _read_with_vips(path: Path) -> np.ndarray | None:
    """Decode with libvips. Returns (H, W) uint32 ids, or None if PIL should decide."""
    with _open_binary(path) as fh:
        data = fh.read()
    try:
        image = _pyvips.Image.new_from_buffer(data, "", access="sequential", fail_on="warning")
        plain = (
            image.get("vips-loader") == "pngload_buffer"
            and image.format == "uchar"
            and image.bands in (3, 4)
            and "palette" not in image.get_fields()
        )
        if not plain:
            return None
        if image.bands == 3:
            image = image.bandjoin_const([0])
        packed = image.write_to_memory()  # the complete decode happens here
    except _pyvips.Error:
        return None  # damaged or unusual: PIL decides (and names the file if it fails)
    return _ids_from_packed(packed, image.height, image.width)


def read_panoptic_png(path: Path | str, decoder: str = "auto") -> np.ndarray:
    """Segment ids of a COCO-panoptic PNG. Returns an (H, W) uint32 array.

    The pixels are packed as 4 bytes (R, G, B, one ignored byte); viewed as
    little-endian uint32 and masked to 24 bits that is exactly ``R + 256 G + 256² B``.
    ``decoder`` is one of :data:`DECODERS`: ``"pil"`` only uses PIL; ``"vips"`` and
    ``"auto"`` try libvips first and fall back to PIL (``"vips"`` requires pyvips).

    Raises :class:`~vocabseg.errors.InputError` (a ValueError) naming ``path`` if the
    file is missing, damaged or not an RGB(A) image.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown PNG decoder {decoder!r}; choose one of {DECODERS}")
    if decoder == "vips" and _pyvips is None:
        raise ValueError("the 'vips' PNG decoder needs the pyvips package (and libvips)")
    path = Path(path)
    if decoder != "pil" and _pyvips is not None:
        ids = _read_with_vips(path)
        if ids is not None:
            return ids
    return _read_with_pil(path)


def load_json(path: Path | str) -> Any:
    """Parse the JSON file at ``path`` (InputError naming the file if that fails)."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{path}: unreadable JSON ({exc})") from None


def write_json_atomic(data: Any, out: Path | str) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``out`` atomically.

    The text goes to a temporary file in the same directory, which then replaces
    ``out`` with :func:`os.replace`; readers never see a half-written file.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True, indent=4)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; metrics are meant to be shared
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
