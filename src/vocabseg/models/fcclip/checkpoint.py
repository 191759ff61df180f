"""Loading and saving FC-CLIP weights in the detectron2 checkpoint layout.

Official FC-CLIP files hold ``{"model": state_dict, ...}`` with upstream's keys.
They lack the CLIP text tower and CLIP's ``logit_scale`` (open_clip's pretrained
weights provide those, as upstream), and carry the criterion's ``empty_weight``
buffer, which this implementation has no place for. Everything else must match
exactly: a checkpoint that does not fit is reported in one :class:`InputError`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from vocabseg.errors import InputError
from vocabseg.fileio import torch_load_checked, torch_save_atomic

__all__ = ["load_fcclip_checkpoint", "save_fcclip_checkpoint", "read_state_dict", "model_fingerprint", "LoadReport"]

_IGNORED_KEYS = frozenset({"criterion.empty_weight"})
_CLIP_PREFIX = "backbone.clip_model."
_VISUAL_PREFIX = "backbone.clip_model.visual."
_SHOW = 10


def _kept_from_model(key: str) -> bool:
    """Keys a checkpoint may omit: the CLIP text tower and CLIP's logit scale/bias,
    i.e. everything of the CLIP model outside its vision tower."""
    return key.startswith(_CLIP_PREFIX) and not key.startswith(_VISUAL_PREFIX)


@dataclass
class LoadReport:
    """What :func:`load_fcclip_checkpoint` did besides loading the file's tensors."""

    kept_from_model: list[str] = field(default_factory=list)  # absent from the file, model values kept
    ignored: list[str] = field(default_factory=list)  # in the file, deliberately not loaded


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of a ``{"model": state_dict}`` or bare-state-dict file (CPU).

    Read with :func:`~vocabseg.fileio.torch_load_checked` (``weights_only=True``);
    :class:`InputError` naming ``path`` if the file is missing, unreadable or not a
    ``{name: tensor}`` mapping.
    """
    data = torch_load_checked(path, "FC-CLIP checkpoint")
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise InputError(f"{path}: not a state dict (expected {{'model': {{name: tensor}}}} or {{name: tensor}})")
    return dict(data)


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {title}: {shown}{more}"


def load_fcclip_checkpoint(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a detectron2-format FC-CLIP checkpoint into ``model`` (in place).

    ``path`` holds ``{"model": state_dict}`` or a bare state dict (read with
    ``torch.load(weights_only=True, map_location="cpu")``). Keys of the CLIP text
    tower and ``backbone.clip_model.logit_scale`` may be absent: the model keeps its
    own values (open_clip's pretrained weights). ``criterion.empty_weight`` is
    ignored. Any other missing, unexpected or mis-shaped key raises one
    :class:`InputError` that names the file, lists up to 10 keys of each kind and
    gives the counts.
    """
    path = os.fspath(path)
    state = read_state_dict(path)
    ignored = sorted(k for k in state if k in _IGNORED_KEYS)
    for key in ignored:
        del state[key]

    own = model.state_dict()
    missing = [k for k in own if k not in state]
    kept = [k for k in missing if _kept_from_model(k)]
    missing = [k for k in missing if not _kept_from_model(k)]
    unexpected = [k for k in state if k not in own]
    misshaped = [
        f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or misshaped:
        parts = [
            _listing(title, items)
            for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
            if items
        ]
        raise InputError(f"{path}: checkpoint does not fit the FC-CLIP model: " + "; ".join(parts))

    merged = {k: state[k] if k in state else own[k] for k in own}
    model.load_state_dict(merged, strict=True)
    return LoadReport(kept_from_model=kept, ignored=ignored)


def save_fcclip_checkpoint(model: nn.Module, path: str | os.PathLike, *, include_text_tower: bool = True) -> None:
    """Write ``{"model": state_dict}`` atomically (temp file in the same folder, then
    ``os.replace``). ``include_text_tower=False`` leaves out the keys a checkpoint
    may omit (CLIP text tower and logit scale), like the official files."""
    state = {
        k: v.detach().to("cpu") for k, v in model.state_dict().items() if include_text_tower or not _kept_from_model(k)
    }
    torch_save_atomic({"model": state}, path)


def model_fingerprint(state_dict: Mapping[str, Tensor], length: int = 16) -> str:
    """Short sha256 hex of a state dict: key names, dtypes, shapes and raw bytes, in
    sorted key order. Equal tensors give equal fingerprints on any device."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]
