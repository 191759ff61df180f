"""Downloads of a study, made on the submit host so that no job needs the network.

Compute nodes of many clusters have no internet. The workflow's local rules
``fetch_clip`` and ``official_weights`` (docs/clusters.md, "Offline compute nodes") run
these functions where Snakemake runs; every job then reads the files under
``resources/weights/``:

* :func:`fetch_url` downloads one file over HTTP(S) into ``<out>.part``, resumes it
  there after an interruption (``Range``), compares its sha256 with the expected one
  and only then renames it to ``out``.
* :func:`fetch_clip` downloads open_clip's pretrained weights of a study's CLIP from
  where open_clip itself would (the Hugging Face hub, else the tag's URL), checks them
  against the checksum the source publishes (the hub's sha256 of an LFS file or git
  blob id of a small one; the sha256 in OpenAI's and mlfoundations' URLs), checks
  their architecture and stores them as one safetensors file.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import requests

from vocabseg.data.download import (
    CORRUPT_SUFFIX,
    PART_SUFFIX,
    TIMEOUT,
    TransientDownloadError,
    save_resumed_body,
)
from vocabseg.errors import InputError
from vocabseg.fileio import atomic_path, file_digest

__all__ = ["ATTEMPTS", "RETRY_DELAY", "fetch_clip", "fetch_url", "hub_checksum"]

#: Tries of one download before giving up (the partial file stays for the next run).
ATTEMPTS = 4
#: Seconds before the second try (doubling after).
RETRY_DELAY = 10.0

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_GIT_SHA1 = re.compile(r"^[0-9a-f]{40}$")


def _print(line: str) -> None:
    print(line, flush=True)


def fetch_url(
    url: str,
    out: Path | str,
    sha256: str | None = None,
    *,
    what: str = "model.weights_url",
    sha_key: str = "model.weights_sha256",
    log: Callable[[str], None] = _print,
    attempts: int = ATTEMPTS,
    retry_delay: float = RETRY_DELAY,
) -> str:
    """Download ``url`` to ``out``; return the file's sha256.

    ``sha256`` (or its leading part) is compared with the downloaded bytes; a mismatch
    moves them to ``<out>.corrupt`` and is an InputError naming ``sha_key``. Network
    failures are retried ``attempts`` times; the last one keeps ``<out>.part``, which the
    next call resumes. An HTTP error answer is an InputError naming ``what``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + PART_SUFFIX)
    delay = retry_delay
    for attempt in range(1, attempts + 1):
        offset = part.stat().st_size if part.exists() else 0
        # raw bytes only: a compressed answer could not be resumed byte-exactly
        headers = {"Accept-Encoding": "identity"} | ({"Range": f"bytes={offset}-"} if offset else {})
        try:
            with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as answer:
                save_resumed_body(answer, part, offset, f"{what}: GET {url}", out.name, log, refused=f"check {what}")
            break
        except (requests.RequestException, TransientDownloadError) as err:
            if attempt == attempts:
                raise TransientDownloadError(
                    f"{what}: GET {url} failed {attempts} times ({err}); the partial file {part} "
                    "is kept and the next run resumes it"
                ) from None
            log(f"{out.name}: {err}; trying again in {delay:.0f} s")
            time.sleep(delay)
            delay *= 2
    digest = file_digest(part)
    if sha256 and not digest.startswith(sha256.lower()):
        corrupt = out.with_name(out.name + CORRUPT_SUFFIX)
        os.replace(part, corrupt)
        raise InputError(
            f"{sha_key}: {url} gave a file of sha256 {digest}, not {sha256} (kept as {corrupt}); "
            f"check {what} and {sha_key}"
        )
    os.replace(part, out)
    log(f"{out}: sha256 {digest}" + (" (verified)" if sha256 else f" (not verified: no {sha_key})"))
    return digest


def _git_blob_sha1(path: Path) -> str:
    """Git's object id of a file (what the hub reports for files not in LFS)."""
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hub_checksum(path: Path | str, etag: str | None, what: str) -> str:
    """Check a file downloaded from the Hugging Face hub against the hub's ETag: the
    sha256 of an LFS file, the git blob id of a small one. Returns the file's sha256."""
    path, etag = Path(path), (etag or "").strip('"').removeprefix("W/").strip('"').lower()
    digest = file_digest(path)
    if _SHA256.match(etag):
        have = digest
    elif _GIT_SHA1.match(etag):
        have = _git_blob_sha1(path)
    else:
        raise InputError(f"{what}: the hub gave no checksum for {path.name} (ETag {etag!r}); cannot verify it")
    if have != etag:
        raise InputError(
            f"{what}: {path} does not match the hub's checksum ({have} != {etag}); delete it and fetch again"
        )
    return digest


def _from_hub(cfg: dict, what: str, log: Callable[[str], None]) -> tuple[Path, str]:
    """(local file, sha256) of a pretrained cfg's hub weights, in the hub's cache."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    from vocabseg.models.fcclip.clip_weights import hub_cache_file, hub_files

    repo, names = hub_files(cfg)
    for name in names:
        try:
            meta = get_hf_file_metadata(hf_hub_url(repo, name))
        except EntryNotFoundError:
            continue
        except Exception as err:  # noqa: BLE001 - no answer from the hub, whatever the cause
            path = hub_cache_file(repo, names)
            if path is None:
                raise InputError(
                    f"{what}: the Hugging Face hub did not answer about {repo}/{name} "
                    f"({type(err).__name__}: {' '.join(str(err).split())}); run Snakemake on a host with internet"
                ) from None
            # the hub cache names a file's blob by its ETag: verifiable without the hub
            digest = hub_checksum(path, Path(path).resolve().name, what)
            log(f"{path}: no answer from the hub ({type(err).__name__}); the cached file matches its sha256")
            return Path(path), digest
        path = Path(hf_hub_download(repo, name))  # resumes an interrupted download itself
        digest = hub_checksum(path, meta.etag, what)
        log(f"{repo}/{name}: sha256 {digest} (verified against the hub)")
        return path, digest
    raise InputError(f"{what}: the Hugging Face repo {repo} has none of {', '.join(names)}")


def _store_safetensors(source: Path, out: Path) -> None:
    """``source`` (safetensors, or a torch state dict open_clip reads) as safetensors at ``out``."""
    with atomic_path(out) as tmp:
        if source.suffix == ".safetensors":
            shutil.copyfile(source, tmp)
            return
        from open_clip.factory import load_state_dict
        from safetensors.torch import save_file

        state = load_state_dict(str(source))
        save_file({key: value.detach().clone().contiguous() for key, value in state.items()}, tmp)


def fetch_clip(spec, out: Path | str, *, log: Callable[[str], None] = _print) -> Path:
    """Fetch the pretrained CLIP weights of a study's model (``spec``: a
    :class:`~vocabseg.approaches.study_model.ModelSpec` whose ``clip_pretrained`` is an
    open_clip tag, or None for the preset's) into the safetensors file ``out``."""
    import open_clip

    from vocabseg.models.fcclip.clip_weights import CONFIG_KEY, check_clip_file, pretrained_cfg, url_sha256

    config = spec.config()
    model_name, tag = config.clip_model, config.clip_pretrained
    if not tag:
        raise InputError(f"{CONFIG_KEY}: the {spec.preset!r} preset has no open_clip pretrained tag to fetch")
    cfg = pretrained_cfg(model_name, tag)
    if cfg.get("quick_gelu") and not config.clip_quick_gelu:
        raise InputError(
            f"{CONFIG_KEY}: open_clip's {tag!r} weights of {model_name} need QuickGELU, which a local "
            "file does not say; set model.overrides.clip_quick_gelu: true"
        )
    what = f"{CONFIG_KEY} ({model_name} {tag})"
    if cfg.get("hf_hub") and open_clip.pretrained.has_hf_hub():
        source, _ = _from_hub(cfg, what, log)
    elif cfg.get("url"):
        url = cfg["url"]
        source = Path(out).parent / ".downloads" / os.path.basename(url)
        if not url_sha256(url):
            log(f"{url}: open_clip publishes no checksum for it; the sha256 below is not verified")
        fetch_url(url, source, url_sha256(url), what=what, sha_key=what, log=log)
    else:
        raise InputError(f"{what}: open_clip names no download source")
    check_clip_file(model_name, source)
    _store_safetensors(source, Path(out))
    if source.parent == Path(out).parent / ".downloads":
        source.unlink()  # converted: keep one copy
    log(f"{out}: open_clip {model_name} {tag!r} weights, sha256 {file_digest(out)}")
    return Path(out)
