"""Loading and saving FC-CLIP weights in the detectron2 checkpoint layout.

Official FC-CLIP files hold ``{"model": state_dict, ...}`` with upstream's keys.
They lack the CLIP text tower and CLIP's ``logit_scale`` (open_clip's pretrained
weights provide those, as upstream), and carry the criterion's ``empty_weight``
buffer, which this implementation has no place for. Everything else must match
exactly: a checkpoint that does not fit is reported in one :class:`InputError`;
when its keys and shapes are those of another preset (an R50 file for a ConvNeXt-L
study, say) the message names both presets instead of listing keys.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import Tensor, nn

from vocabseg.errors import InputError
from vocabseg.fileio import torch_load_checked, torch_save_atomic

from .config import PRESETS, FCCLIPConfig, preset_config

__all__ = [
    "load_fcclip_checkpoint",
    "save_fcclip_checkpoint",
    "read_state_dict",
    "model_fingerprint",
    "backbone_differences",
    "preset_of",
    "config_signature",
    "check_checkpoint_fits",
    "LoadReport",
]

_IGNORED_KEYS = frozenset({"criterion.empty_weight"})
_CLIP_PREFIX = "backbone.clip_model."
_VISUAL_PREFIX = "backbone.clip_model.visual."
_SHOW = 3


def _kept_from_model(key: str) -> bool:
    """Keys a checkpoint may omit: the CLIP text tower and CLIP's logit scale/bias,
    i.e. everything of the CLIP model outside its vision tower."""
    return key.startswith(_CLIP_PREFIX) and not key.startswith(_VISUAL_PREFIX)


@dataclass
class LoadReport:
    """What :func:`load_fcclip_checkpoint` did besides loading the file's tensors."""

    kept_from_model: list[str] = field(default_factory=list)  # absent from the file, model values kept
    ignored: list[str] = field(default_factory=list)  # in the file, deliberately not loaded


def read_state_dict(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Tensor]:
    """The state dict of a ``{"model": state_dict}`` or bare-state-dict file (CPU).

    Read with :func:`~vocabseg.fileio.torch_load_checked` (``weights_only=True``);
    :class:`InputError` naming ``path`` if the file is missing, unreadable or not a
    ``{name: tensor}`` mapping. ``mmap`` maps the file instead of reading it.
    """
    data = torch_load_checked(path, "FC-CLIP checkpoint", mmap=mmap)
    if isinstance(data, Mapping) and isinstance(data.get("model"), Mapping):
        data = data["model"]
    if not isinstance(data, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise InputError(f"{path}: not a state dict (expected {{'model': {{name: tensor}}}} or {{name: tensor}})")
    return dict(data)


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_SHOW])
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return f"{len(items)} {title}: {shown}{more}"


def _signature(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of the keys every FC-CLIP checkpoint carries (no CLIP text tower,
    no ignored keys): what tells the presets apart."""
    return {
        key: tuple(value.shape)
        for key, value in state.items()
        if not _kept_from_model(key) and key not in _IGNORED_KEYS
    }


@functools.lru_cache(maxsize=None)
def _config_signature(config_json: str) -> dict[str, tuple[int, ...]]:
    from vocabseg.models.clip_tiny import TINY_CLIP_NAME, register_tiny_clip

    from .fcclip import FCCLIP  # fcclip imports this module's neighbours; import when needed

    cfg = FCCLIPConfig.from_dict(json.loads(config_json))
    if cfg.clip_model == TINY_CLIP_NAME:
        register_tiny_clip()
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = FCCLIP(cfg)
    return _signature(model.state_dict())


def config_signature(config: FCCLIPConfig) -> dict[str, tuple[int, ...]]:
    """The checkpoint signature (``{key: shape}`` without the CLIP text tower) of the
    models ``config`` builds; built once per config on the meta device (no memory, no
    download, random number generators untouched)."""
    values = {**config.to_dict(), "clip_pretrained": None}
    return _config_signature(json.dumps(values, sort_keys=True))


def preset_of(signature: Mapping[str, tuple[int, ...]]) -> str | None:
    """The preset whose models have exactly this checkpoint signature, or None (another
    architecture, or a preset with overrides)."""
    return next((name for name in PRESETS if config_signature(preset_config(name)) == signature), None)


def _mismatch_message(path: str, have: Mapping, want: Mapping, parts: list[str]) -> str:
    """One line: both presets when the file (signature ``have``) is another preset's than
    the model (``want``), else the key listing ``parts``."""
    file_preset, model_preset = preset_of(have), preset_of(want)
    if file_preset is not None:
        head = f"{path}: this is an FC-CLIP {file_preset!r} checkpoint (by its keys and shapes), but "
        if model_preset is not None:
            return head + f"model.preset is {model_preset!r}; use a {model_preset} checkpoint, or set model.preset: {file_preset}"
        return head + (
            "model.preset with model.overrides gives another architecture; use a checkpoint of that "
            f"architecture, or set model.preset: {file_preset} without overrides"
        )
    model = f"preset {model_preset!r}" if model_preset else "a preset with overrides"
    return f"{path}: checkpoint does not fit the FC-CLIP model ({model}; the file is of no preset): " + "; ".join(parts)


def check_checkpoint_fits(path: str | os.PathLike, config: FCCLIPConfig) -> dict[str, Tensor]:
    """The (memory-mapped) state dict of ``path`` if it fits the models of ``config``;
    else the :class:`InputError` of :func:`load_fcclip_checkpoint`, raised before any
    model (or CLIP download) is made."""
    path = os.fspath(path)
    state = read_state_dict(path, mmap=True)
    have, want = _signature(state), config_signature(config)
    if have != want:
        missing = [k for k in want if k not in have]
        unexpected = [k for k in have if k not in want]
        misshaped = [f"{k} (file {list(have[k])}, model {list(want[k])})" for k in want if k in have and have[k] != want[k]]
        raise InputError(_mismatch_message(path, have, want, _parts(missing, unexpected, misshaped)))
    return state


def _parts(missing: list[str], unexpected: list[str], misshaped: list[str]) -> list[str]:
    return [
        _listing(title, items)
        for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if items
    ]


def load_fcclip_checkpoint(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load a detectron2-format FC-CLIP checkpoint into ``model`` (in place).

    ``path`` holds ``{"model": state_dict}`` or a bare state dict (read with
    ``torch.load(weights_only=True, map_location="cpu")``). Keys of the CLIP text
    tower and ``backbone.clip_model.logit_scale`` may be absent: the model keeps its
    own values (open_clip's pretrained weights). ``criterion.empty_weight`` is
    ignored. Any other missing, unexpected or mis-shaped key raises one
    :class:`InputError` that names the file and either both presets (a checkpoint of
    another preset, see :func:`preset_of`) or up to 3 keys of each kind with the counts.
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
        parts = _parts(missing, unexpected, misshaped)
        raise InputError(_mismatch_message(path, _signature(state), _signature(own), parts))

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


def backbone_differences(a: nn.Module, b: nn.Module) -> list[str]:
    """Keys of the CLIP backbone state dicts of FC-CLIP models ``a`` and ``b`` that are
    missing on one side or hold different tensors (empty: the same frozen backbone)."""
    sa, sb = a.backbone.state_dict(), b.backbone.state_dict()
    differ = [k for k in sa if k not in sb or sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k].to(sa[k].device))]
    return differ + [k for k in sb if k not in sa]


def model_fingerprint(state_dict: Mapping[str, Tensor], length: int = 16) -> str:
    """Short sha256 hex of a state dict: key names, dtypes, shapes and raw bytes, in
    sorted key order. Equal tensors give equal fingerprints on any device."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(f"{key}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]
