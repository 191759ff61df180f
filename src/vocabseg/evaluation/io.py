"""Reading the evaluator's inputs (panoptic PNGs, JSON files) and writing metrics.

Panoptic PNGs are read by :func:`vocabseg.data.panoptic_png.read_panoptic_png`
(re-exported here with :data:`DECODERS`): a fast path for the plain PNGs that the
project writes, Pillow for every other file, identical ids either way. As in
``cityscapesscripts``, a PNG must decode to mode RGB or RGBA; the alpha channel is
ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from vocabseg.data.panoptic_png import DECODERS, read_panoptic_png
from vocabseg.errors import InputError

__all__ = ["DECODERS", "read_panoptic_png", "load_json", "write_json_atomic"]


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
