"""Reading JSON and torch files, writing result files atomically: the one home of file I/O helpers.

A job killed half-way (preemption, walltime, Ctrl-C) must never leave a truncated
file under its final name, since Snakemake and the next attempt would trust it. So
everything is written to a temporary file in the same folder, flushed to disk and
then renamed over the target with :func:`os.replace`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from vocabseg.errors import InputError

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "read_json",
    "torch_load_checked",
    "file_digest",
    "folder_digest",
    "move_aside",
    "atomic_path",
    "write_json_atomic",
    "write_text_atomic",
    "torch_save_atomic",
    "replace_dir",
    "write_npz_atomic",
    "read_npz",
    "read_rgb",
]


def read_json(path: Path | str) -> Any:
    """Parse the JSON file at ``path``; :class:`InputError` naming the file if that fails."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise InputError(f"{path}: unreadable JSON ({exc})") from None


def torch_load_checked(path: Path | str, what: str, *, mmap: bool = False) -> Any:
    """The object of the torch file at ``path``, read safely onto the CPU.

    ``torch.load(path, map_location="cpu", weights_only=True)``: tensors and plain
    containers only, never arbitrary pickled code. ``what`` names the expected content
    in the errors (e.g. ``"FC-CLIP checkpoint"``): :class:`InputError`
    ``"<path>: <what> not found"`` if there is no such file, ``"<path>: cannot read
    <what> (<error>)"`` if it does not load. Checking the structure of the result is
    the caller's job. ``mmap`` maps the file instead of reading it (for a peek at the keys).
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"{path}: {what} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is bad input
        raise InputError(f"{path}: cannot read {what} ({type(err).__name__}: {err})") from None


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    The file is made readable by everyone (``mkstemp`` creates it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(text: str, path: Path | str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(data: Any, path: Path | str, *, indent: int = 4) -> None:
    """Write ``data`` as key-sorted JSON to ``path`` atomically."""
    write_text_atomic(json.dumps(data, sort_keys=True, indent=indent) + "\n", path)


def write_npz_atomic(arrays: dict, path: Path | str) -> None:
    """Write plain numpy ``arrays`` as a compressed ``.npz`` to ``path`` atomically."""
    import numpy as np

    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def read_npz(path: Path | str, required: Any, what: str) -> dict:
    """The arrays of a ``.npz`` (never unpickled); a missing or damaged file, or one
    without every ``required`` name, is an :class:`InputError` naming it and ``what``."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise InputError(f"{path}: cannot read {what} ({err})") from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise InputError(f"{path}: {what} lack {', '.join(missing)}")
    return arrays


def read_rgb(path: Path | str) -> np.ndarray:
    """Fully decode an image file to (H, W, 3) uint8 RGB; :class:`InputError` naming it if unreadable."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{path}: unreadable image ({err})") from None


def torch_save_atomic(obj: Any, path: Path | str) -> None:
    """``torch.save`` to ``path`` atomically (plain tensors and containers only)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def link_or_copy(src: Path | str, dst: Path | str) -> None:
    """Hard-link ``src`` to ``dst``, copying where links are impossible (other file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def replace_dir(new: Path | str, target: Path | str) -> None:
    """Rename the finished folder ``new`` to ``target``; an existing ``target`` is moved
    aside first and deleted after, so ``target`` is at every moment either the old or
    the new folder (debris of a run killed between the renames is removed next time)."""
    new, target = Path(new), Path(target)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def file_digest(path: Path | str) -> str:
    """sha256 hex of the bytes of the file at ``path``, read in a stream; :class:`InputError`
    naming the file if it cannot be read."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def folder_digest(path: Path | str, *, contents: bool = True) -> str:
    """sha256 hex of the files under the folder ``path`` (recursively, hidden ones included).

    Each file adds its relative POSIX path and then either the sha256 of its bytes
    (``contents``) or, cheaply, only its size in bytes (for big image folders: a file
    rewritten with other bytes of the same size goes unnoticed). Files are taken in
    sorted path order, so the digest does not depend on the file system's order.
    :class:`InputError` naming the folder if it is missing.
    """
    root = Path(path)
    if not root.is_dir():
        raise InputError(f"{root}: folder not found")
    digest = hashlib.sha256()
    files = sorted(
        os.path.relpath(os.path.join(top, name), root)
        for top, _, names in os.walk(root)
        for name in names
    )
    for rel in files:
        full = root / rel
        summary = file_digest(full) if contents else str(full.stat().st_size)
        digest.update(f"{Path(rel).as_posix()}\0{summary}\n".encode())
    return digest.hexdigest()


def move_aside(folder: Path | str, suffix: str, note: str) -> Path:
    """Rename ``folder`` to the first free ``<folder><suffix>-<n>`` (n = 1, 2, ...) beside it
    and write ``note`` to ``why.txt`` in it; return the new path. Nothing is deleted."""
    folder = Path(folder)
    n = 1
    while (aside := folder.with_name(f"{folder.name}{suffix}-{n}")).exists():
        n += 1
    os.replace(folder, aside)
    write_text_atomic(note.rstrip("\n") + "\n", aside / "why.txt")
    return aside
