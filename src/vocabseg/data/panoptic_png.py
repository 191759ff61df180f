"""The panoptic PNG format: COCO-panoptic segment ids stored as RGB pixels.

A pixel holds the id of its segment as the colour ``id = R + 256 G + 256² B`` (id 0
is VOID, the largest id is 2**24 - 1), as ``csCreatePanopticImgs`` writes it and
``csEvalPanopticSemanticLabeling`` reads it. This module is the project's one place
that converts, writes and reads such images.

Writing: :func:`write_panoptic_png` writes an ordinary PNG that every tool reads:
8-bit RGB, not interlaced, filter type 0 (None) on every row, the rows compressed as
one zlib stream by zlib-ng at level 9, and nothing but IHDR, IDAT and IEND chunks.
Segmentation maps are long runs of one colour, which deflate compresses well without
filtering: a 1024x2048 map takes about as many bytes as with Pillow's default
(adaptive filters, zlib level 6), about 20 kB, and is written in about two thirds
of the time.

Reading: :func:`read_panoptic_png` decodes exactly such files (whoever wrote them)
without Pillow: it walks the chunks itself, inflates the IDAT stream with zlib-ng,
checks that every row's filter byte is 0 and reads each pixel's three bytes as one
id. With no rows to unfilter and zlib-ng inflating the long runs at memory speed,
that takes about 1.5 ms for a 1024x2048 map, over 10x less than Pillow. Any other
PNG (other chunks, filtered rows, palette, 16-bit, interlaced, RGBA, ...) is
decoded by Pillow and judged as by ``cityscapesscripts``: it must decode to mode
RGB or RGBA (alpha ignored). Both paths give identical ids.

Damage is an :class:`~vocabseg.errors.InputError` naming the file on both paths;
so is a file that is no PNG at all (a JPEG's lossy colours are no segment ids,
although cityscapesscripts would read one).
The default decoder checks more than Pillow does: the length and CRC of every chunk
of any PNG (Pillow skips the IDAT CRCs) and that the file reaches its IEND chunk;
for plain files also the zlib stream's Adler-32 and the exact amount of image data.
So it also rejects damaged files that Pillow would decode into wrong pixels or let
pass (about 2% of single bit flips in a small map).
"""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError
from zlib_ng import zlib_ng

from vocabseg.errors import InputError

__all__ = [
    "MAX_ID",
    "DECODERS",
    "rgb_to_id",
    "id_to_rgb",
    "read_panoptic_png",
    "segment_index",
    "write_panoptic_png",
]

MAX_ID = (1 << 24) - 1
# "auto": the fast path for plain files, Pillow for every other file; "pil": Pillow only
DECODERS = ("auto", "pil")

COMPRESSION_LEVEL = 9  # zlib-ng; 8: 10% larger files, 6: twice as large, inflate as fast
IDAT_SIZE = 1 << 20  # bytes of compressed data per IDAT chunk (PNG allows up to 2**31 - 1)

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CHUNK_HEAD = struct.Struct(">I4s")  # length, type
_IHDR = struct.Struct(">IIBBBBB")  # width, height, bit depth, colour type, 3 methods
_RGB8 = (8, 2, 0, 0, 0)  # 8 bits, truecolour, deflate, adaptive filtering, no interlace
_BYTES_PER_PIXEL = 3
_ID_MASK = np.uint32(MAX_ID)


# --------------------------------------------------------------------------- colours


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO-panoptic colour to segment id: ``(H, W, 3) uint8 -> (H, W) uint32``."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment id to COCO-panoptic colour: ``(H, W) int -> (H, W, 3) uint8``.

    Ids are taken modulo 2**24 (the three low bytes of the id as uint32).
    """
    as_bytes = np.ascontiguousarray(ids, dtype="<u4").view(np.uint8)
    return np.ascontiguousarray(as_bytes.reshape(*np.shape(ids), 4)[..., :3])


def segment_index(ids: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
    """Which listed segment each pixel belongs to: ``ids`` (H, W) segment ids,
    ``segment_ids`` (N,) the annotation's ids -> (H, W) int64 index into ``segment_ids``,
    -1 where the pixel's id is not listed (void). Of two equal listed ids the first wins."""
    index = np.full(np.shape(ids), -1, dtype=np.int64)
    if len(segment_ids):
        order = np.argsort(segment_ids, kind="stable")
        sorted_ids = np.asarray(segment_ids)[order]
        pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)
        hit = sorted_ids[pos] == ids
        index[hit] = order[pos[hit]]
    return index


# --------------------------------------------------------------------------- writing


def _chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body, CRC-32 of type and body."""
    crc = zlib_ng.crc32(body, zlib_ng.crc32(kind))
    return _CHUNK_HEAD.pack(len(body), kind) + body + crc.to_bytes(4, "big")


def write_panoptic_png(path: Path | str, ids: np.ndarray) -> None:
    """Write (H, W) integer segment ids (0..MAX_ID) as a panoptic PNG at ``path``.

    Raises ValueError if ``ids`` is not a non-empty 2-D integer array in range.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"panoptic ids must be a non-empty 2-D integer array, got {ids.dtype} {ids.shape}"
        )
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high > MAX_ID:
        raise ValueError(f"panoptic ids must lie in 0..{MAX_ID}, got {low}..{high}")
    height, width = ids.shape
    rows = np.zeros((height, 1 + _BYTES_PER_PIXEL * width), dtype=np.uint8)  # byte 0: filter 0
    rows[:, 1:] = id_to_rgb(ids).reshape(height, -1)
    stream = zlib_ng.compress(rows, COMPRESSION_LEVEL)
    parts = [_SIGNATURE, _chunk(b"IHDR", _IHDR.pack(width, height, *_RGB8))]
    parts += [_chunk(b"IDAT", stream[i : i + IDAT_SIZE]) for i in range(0, len(stream), IDAT_SIZE)]
    parts.append(_chunk(b"IEND", b""))
    Path(path).write_bytes(b"".join(parts))


# --------------------------------------------------------------------------- reading


def _ids_of_rows(buffer: bytes, height: int, width: int, stride: int) -> np.ndarray:
    """(H, W) uint32 ids of rows of RGB pixels, each row after one other byte.

    Pixel x of row y is at bytes ``y * stride + 1 + 3x`` to ``+ 3``. The little-endian
    uint32 at ``y * stride + 3x`` holds (the byte before the pixel, R, G, B), so its
    top 24 bits are the id; the last one ends at byte ``height * stride``.
    """
    shifted = np.ndarray(
        (height, width), dtype="<u4", buffer=buffer, strides=(stride, _BYTES_PER_PIXEL)
    )
    return np.right_shift(shifted, 8, dtype=np.uint32)


def _decode_error(path: Path, reason: str) -> InputError:
    """The error for a panoptic PNG that cannot be decoded."""
    return InputError(f"cannot decode panoptic PNG {path}: {reason}")


def _plain_stream(data: bytes, path: Path) -> tuple[int, int, bytes] | None:
    """(width, height, zlib stream) of a PNG made of IHDR (8-bit RGB), IDAT+ and IEND.

    None for any other file, which Pillow then judges. Raises InputError naming
    ``path`` if a chunk is cut short or fails its CRC, whatever the chunks are.
    """
    if not data.startswith(_SIGNATURE):
        return None
    view = memoryview(data)
    chunks, pos = [], len(_SIGNATURE)  # (type, body) pairs, up to IEND
    while not chunks or chunks[-1][0] != b"IEND":
        if pos + 12 > len(data):
            raise _decode_error(path, "truncated (the file ends before its IEND chunk)")
        length, kind = _CHUNK_HEAD.unpack_from(data, pos)
        name = kind.decode("ascii", "replace")
        end = pos + 8 + length
        if end + 4 > len(data):
            raise _decode_error(path, f"truncated (the file ends inside chunk {name})")
        if zlib_ng.crc32(view[pos + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            raise _decode_error(path, f"CRC mismatch in chunk {name}")
        chunks.append((kind, view[pos + 8 : end]))
        pos = end + 4
    kinds = [kind for kind, _ in chunks]
    if kinds[0] != b"IHDR" or len(kinds) < 3 or set(kinds[1:-1]) != {b"IDAT"}:
        return None  # other chunks: Pillow interprets them
    header = chunks[0][1]
    if len(header) != _IHDR.size:
        return None
    width, height, *layout = _IHDR.unpack(header)
    if tuple(layout) != _RGB8 or width == 0 or height == 0:
        return None
    limit = Image.MAX_IMAGE_PIXELS  # Pillow warns or refuses above it: let it do so
    if limit is not None and width * height > limit:
        return None
    return width, height, b"".join(body for _, body in chunks[1:-1])


def _decode_plain(data: bytes, path: Path) -> np.ndarray | None:
    """(H, W) uint32 ids of a plain panoptic PNG (see the module docstring), else None.

    Raises InputError naming ``path`` if the file is damaged (see :func:`_plain_stream`)
    or if its image data does not inflate to exactly the expected rows.
    """
    plain = _plain_stream(data, path)
    if plain is None:
        return None
    width, height, stream = plain
    stride = 1 + _BYTES_PER_PIXEL * width
    size = height * stride
    inflater = zlib_ng.decompressobj()
    try:
        rows = inflater.decompress(stream, size + 1)  # one spare byte: no more is produced
    except zlib_ng.error as exc:
        raise _decode_error(path, f"broken image data ({exc})") from None
    if len(rows) != size or not inflater.eof or inflater.unused_data:
        raise _decode_error(path, f"image data of the wrong size (expected {size} bytes of rows)")
    if np.frombuffer(rows, dtype=np.uint8)[::stride].any():
        return None  # filtered rows: Pillow undoes the filters
    return _ids_of_rows(rows, height, width, stride)  # each row starts with its filter byte


@contextlib.contextmanager
def _strict_truncation() -> Iterator[None]:
    """Make Pillow raise on truncated image data even if someone relaxed it globally."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def _decode_with_pil(data: bytes, path: Path) -> np.ndarray:
    """(H, W) uint32 ids of any PNG that Pillow decodes to mode RGB or RGBA."""
    try:
        with _strict_truncation(), Image.open(io.BytesIO(data)) as image:
            image.load()  # the complete decode: truncation is detected here
            mode, (width, height) = image.mode, image.size
            if mode not in ("RGB", "RGBA"):
                raise InputError(
                    f"panoptic PNG {path} has mode {mode!r}; expected 8-bit RGB or RGBA"
                )
            pixels = image.tobytes()  # R, G, B (, A) per pixel, row after row
    except InputError:
        raise
    except UnidentifiedImageError:  # its message names the BytesIO object, not the file
        raise _decode_error(path, "not an image Pillow can identify") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, struct.error, ...
        raise _decode_error(path, str(exc)) from exc
    if mode == "RGBA":  # little-endian uint32 (R, G, B, A): the id is in the low 24 bits
        return (np.frombuffer(pixels, dtype="<u4") & _ID_MASK).reshape(height, width)
    return _ids_of_rows(b"\0" + pixels, height, width, _BYTES_PER_PIXEL * width)


def _what_it_is(data: bytes) -> str:
    """A short description of a file that lacks the PNG signature."""
    if not data:
        return "the file is empty"
    try:
        with Image.open(io.BytesIO(data)) as image:
            return f"it is a {image.format} image"
    except Exception:  # noqa: BLE001 - anything Pillow cannot open is described by its bytes
        return f"it starts with {data[:8]!r}"


def read_panoptic_png(path: Path | str, decoder: str = "auto") -> np.ndarray:
    """Segment ids of the panoptic PNG at ``path``: an (H, W) uint32 array.

    ``decoder`` is one of :data:`DECODERS`: ``"auto"`` takes the fast path for plain
    files and Pillow for all others; ``"pil"`` always uses Pillow. Both give the
    same ids; ``"auto"`` also rejects the damage that Pillow lets pass (see the
    module docstring).

    Raises :class:`~vocabseg.errors.InputError` (a ValueError) naming ``path`` if
    the file is missing, not a PNG (a JPEG's lossy colours are no segment ids),
    damaged or not an RGB(A) image.
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown PNG decoder {decoder!r}; choose one of {DECODERS}")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read panoptic PNG {path}: {exc.strerror or exc}") from None
    if not data.startswith(_SIGNATURE):
        raise InputError(f"panoptic PNG {path} is not a PNG file ({_what_it_is(data)})")
    ids = _decode_plain(data, path) if decoder == "auto" else None
    return ids if ids is not None else _decode_with_pil(data, path)
