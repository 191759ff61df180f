"""Where FC-CLIP's CLIP weights come from, checked before open_clip loads them.

``clip_pretrained`` (``model.clip_pretrained`` in a study config) is either a local
open_clip checkpoint file or an open_clip pretrained tag. open_clip itself reports a
file of another architecture with an ``AssertionError`` deep in its loader, and a tag
whose weights cannot be downloaded only after a minute of hub retries. This module
turns both into one :class:`~vocabseg.errors.InputError` naming
``model.clip_pretrained``, before anything is built:

* a file is compared, by key names and shapes, with the architecture the preset
  needs; a mismatch says which architecture the file holds;
* a tag is looked up in the local caches open_clip downloads into (Hugging Face hub,
  ``~/.cache/clip``); a cached file is used directly (no network at all), and when
  nothing is cached and the hub is offline (``HF_HUB_OFFLINE``) or its host cannot
  be reached within :data:`PROBE_TIMEOUT` seconds (not probed behind an HTTPS
  proxy), the error says to put a local checkpoint file there.

Architectures are compared through :func:`open_clip_signature`, an open_clip model
built on the ``meta`` device (no memory, no random numbers drawn).
"""

from __future__ import annotations

import functools
import os
import socket
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

import open_clip
import torch
from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

from vocabseg.errors import InputError
from vocabseg.fileio import torch_load_checked

__all__ = [
    "CONFIG_KEY",
    "PROBE_TIMEOUT",
    "Signature",
    "check_clip_file",
    "hub_cache_file",
    "hub_files",
    "open_clip_signature",
    "pretrained_cfg",
    "resolve_clip_pretrained",
    "url_sha256",
]

#: The study-config key every message names.
CONFIG_KEY = "model.clip_pretrained"
#: Seconds to wait for a TCP connection to the download host before calling it offline.
PROBE_TIMEOUT = 5.0

Signature = dict[str, tuple[int, ...]]
_TRUE = {"1", "on", "true", "yes"}
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def state_signature(state: Mapping[str, torch.Tensor]) -> Signature:
    """``{key: shape}`` of a state dict."""
    return {key: tuple(value.shape) for key, value in state.items()}


@functools.lru_cache(maxsize=None)
def open_clip_signature(model_name: str) -> Signature:
    """``{key: shape}`` of open_clip's ``model_name`` (built on the meta device; the
    random number generators are left untouched)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = open_clip.create_model(model_name, device="meta")
    return state_signature(model.state_dict())


def _family(signature: Mapping[str, tuple[int, ...]]) -> str:
    """The vision tower family and embedding width, read from key names."""
    if "visual.attnpool.c_proj.weight" in signature:
        tower = "ModifiedResNet"
    elif any(key.startswith("visual.trunk.") for key in signature):
        tower = "timm ConvNeXt" if any(".stages." in key for key in signature) else "timm"
    elif "visual.class_embedding" in signature:
        tower = "ViT"
    else:
        tower = "unknown"
    width = signature.get("text_projection", (None,))[-1]
    return f"{tower} vision tower, embedding width {width}"


def _candidates() -> list[str]:
    """open_clip models of the FC-CLIP presets (the files users are likely to mix up)."""
    from vocabseg.models.clip_tiny import register_tiny_clip

    from .config import PRESETS

    register_tiny_clip()
    return list(dict.fromkeys(preset["clip_model"] for preset in PRESETS.values()))


def _describe(signature: Signature) -> str:
    """What a file holds: a preset's open_clip model by name, or its family."""
    for name in _candidates():
        if open_clip_signature(name) == signature:
            return f"open_clip {name!r} weights ({_family(signature)})"
    return f"weights of another CLIP ({_family(signature)})"


def _file_signature(path: Path) -> Signature:
    """``{key: shape}`` of an open_clip checkpoint file, read without loading its tensors."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(path, "pt") as handle:
                return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
        except Exception as err:  # noqa: BLE001 - any parse failure is bad input
            raise InputError(f"{CONFIG_KEY}: cannot read {path} ({type(err).__name__}: {err})") from None
    data = torch_load_checked(path, f"open_clip checkpoint ({CONFIG_KEY})", mmap=True)
    if isinstance(data, Mapping) and isinstance(data.get("state_dict"), Mapping):
        data = data["state_dict"]
    if not isinstance(data, Mapping) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise InputError(f"{CONFIG_KEY}: {path} is not an open_clip state dict ({{name: tensor}})")
    if data and all(key.startswith("module.") for key in data):
        data = {key[len("module.") :]: value for key, value in data.items()}
    return state_signature(data)


def check_clip_file(model_name: str, path: Path) -> None:
    """InputError unless ``path`` holds every tensor of open_clip ``model_name`` in its shape."""
    have = _file_signature(path)
    want = open_clip_signature(model_name)
    if all(have.get(key) == shape for key, shape in want.items()):
        return
    raise InputError(
        f"{CONFIG_KEY}: {path} holds {_describe(have)}, but this FC-CLIP model needs open_clip "
        f"{model_name!r} ({_family(want)}); point {CONFIG_KEY} at a {model_name} checkpoint, "
        "or set it to null for the preset's own weights"
    )


def hub_files(cfg: Mapping) -> tuple[str, list[str]]:
    """(Hugging Face repo, file names in open_clip's order of preference) of a pretrained
    cfg with an ``hf_hub`` entry: safetensors first, then the named file."""
    repo, filename = os.path.split(cfg["hf_hub"])
    filename = filename or HF_WEIGHTS_NAME
    names = [HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else []
    if filename != HF_WEIGHTS_NAME and filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    return repo, [*names, filename]


def hub_cache_file(repo: str, names: list[str]) -> str | None:
    """The first of ``names`` in the local Hugging Face cache of ``repo`` (None: none)."""
    from huggingface_hub import try_to_load_from_cache

    for name in names:
        found = try_to_load_from_cache(repo, name)
        if isinstance(found, str):
            return found
    return None


def url_sha256(url: str) -> str:
    """The sha256 (or its leading part) that open_clip reads from a download URL: the
    folder name of OpenAI's files, the file-name suffix of mlfoundations' ("" if none)."""
    if "openaipublic" in url:
        return url.split("/")[-2]
    if "mlfoundations" in url:
        return os.path.splitext(os.path.basename(url))[0].split("-")[-1]
    return ""


def pretrained_cfg(model_name: str, tag: str) -> dict:
    """open_clip's pretrained cfg of ``tag`` for ``model_name``; InputError naming
    :data:`CONFIG_KEY` (and the model's tags) for an unknown tag."""
    cfg = open_clip.get_pretrained_cfg(model_name, tag)
    if not cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
        raise InputError(
            f"{CONFIG_KEY}: {tag!r} is neither a file nor an open_clip pretrained tag of "
            f"{model_name!r} (its tags: {tags})"
        )
    return cfg


def _cached_file(cfg: Mapping) -> tuple[str | None, str]:
    """(local file or None, where open_clip would download it from) for a pretrained cfg,
    looked up the way open_clip downloads: the Hugging Face hub first (safetensors, then
    the named file), else the URL into ``~/.cache/clip``."""
    if cfg.get("hf_hub", ""):
        repo, names = hub_files(cfg)
        found = hub_cache_file(repo, names)
        return found, f"Hugging Face repo {repo}" + ("" if found else f" (file {names[-1]})")
    url = cfg.get("url", "")
    local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    return (str(local) if local.is_file() else None), url


def _unreachable(cfg: Mapping) -> str | None:
    """Why the weights of ``cfg`` cannot be downloaded now, or None if they may be."""
    if cfg.get("hf_hub"):
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
            return "HF_HUB_OFFLINE is set"
        url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    else:
        url = cfg.get("url", "")
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None  # a direct connection says nothing about the way through the proxy
    host = urlparse(url).hostname or url
    try:
        socket.create_connection((host, 443), timeout=PROBE_TIMEOUT).close()
    except OSError as err:
        return f"{host} cannot be reached ({err.strerror or err})"
    return None


def resolve_clip_pretrained(model_name: str, pretrained: str | None) -> str | None:
    """The ``pretrained`` argument to give ``open_clip.create_model`` for ``model_name``.

    None stays None (random initialisation). A local file is returned after
    :func:`check_clip_file`. A pretrained tag becomes its cached file when open_clip's
    caches hold it, stays the tag when it can be downloaded, and is an InputError
    naming :data:`CONFIG_KEY` when it is neither cached nor downloadable, or unknown.
    """
    if not pretrained:
        return None
    path = Path(pretrained).expanduser()
    if path.is_file():
        check_clip_file(model_name, path)
        return str(path)
    cfg = pretrained_cfg(model_name, pretrained)
    cached, source = _cached_file(cfg)
    if cached is not None:
        return cached
    reason = _unreachable(cfg)
    if reason is not None:
        raise InputError(
            f"{CONFIG_KEY}: open_clip's {pretrained!r} weights of {model_name} (the preset's own when "
            f"{CONFIG_KEY} is null) are not in the local cache and cannot be downloaded from {source}: "
            f"{reason}; set {CONFIG_KEY} to a local open_clip checkpoint file of {model_name}, "
            "fetched where there is network (in the workflow the local rule fetch_clip does this)"
        )
    return pretrained
