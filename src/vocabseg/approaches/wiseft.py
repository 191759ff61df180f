"""WiSE-FT: weight-space interpolation of the zero-shot and a fine-tuned FC-CLIP.

Wortsman et al., "Robust fine-tuning of zero-shot models" (CVPR 2022): fine-tuning
improves the target classes but forgets what the zero-shot model knew; interpolating
the two models' weights keeps much of both, without any extra training. For every
floating-point tensor of the two state dicts::

    θ(α) = (1 − α) · θ_zeroshot + α · θ_finetuned,      0 ≤ α ≤ 1

α = 0 is the zero-shot model, α = 1 the fine-tuned one; an α sweep traces the
trade-off between In PQ (the fine-tuned vocabulary) and Out PQ (the forgotten one).
This is the standard baseline for the seed's question, beyond the seed's own table.

Which tensors change. In FC-CLIP the CLIP backbone (``backbone.clip_model.*``) is
frozen and always in eval mode, and every model of a study starts from the same
base model, so its tensors are bit-identical in the zero-shot and the fine-tuned
file: interpolating them would change nothing. :func:`wiseft_checkpoint` checks that
(two files that disagree on the frozen CLIP do not descend from one base model, and
interpolating them is meaningless) and reports which tensors were interpolated;
in practice that is the pixel decoder and the transformer decoder.

Exactness, per tensor of the two state dicts (same keys, shapes and dtypes):

* α = 0 and α = 1 return a copy of the endpoint, not the formula: in IEEE arithmetic
  ``1·a + 0·b`` is not always ``a`` (``0·inf`` is NaN, and ``-0.0 + 0.0`` is
  ``+0.0``), and the endpoints must reproduce the two models bit for bit;
* tensors equal in both files are copied, so they stay bit-identical for every α;
* other floating-point tensors are computed in float64 and cast once to their dtype;
* non-floating-point tensors (integer buffers such as ``num_batches_tracked``) cannot
  be interpolated; they must be equal in both files and are copied.

Anything else (different key sets, shapes or dtypes, unequal integer tensors, an α
outside [0, 1]) is an :class:`~vocabseg.errors.InputError` naming both files.

Files: checkpoints are ``{"model": state_dict}`` (or a bare state dict), as written by
:func:`vocabseg.models.fcclip.save_fcclip_checkpoint`; the output is written in that
layout, atomically. An official FC-CLIP file lacks the CLIP text tower; pass the
study's :class:`~vocabseg.approaches.study_model.ModelSpec` to complete such a file
exactly as :func:`~vocabseg.approaches.study_model.build_model` does (and to check
both files against the study's architecture).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from vocabseg.approaches.study_model import ModelSpec, build_model
from vocabseg.errors import InputError
from vocabseg.fileio import torch_save_atomic
from vocabseg.models.fcclip.checkpoint import read_state_dict

__all__ = [
    "FROZEN_PREFIX",
    "WiseFTReport",
    "check_alpha",
    "read_state_dict",  # re-exported from vocabseg.models.fcclip.checkpoint: how WiSE-FT reads its inputs
    "interpolate_state_dicts",
    "check_shared_frozen",
    "wiseft_checkpoint",
]

FROZEN_PREFIX = "backbone.clip_model."  # the frozen CLIP of FC-CLIP
_SHOW = 10


@dataclass
class WiseFTReport:
    """What :func:`wiseft_checkpoint` did: α and which keys were interpolated or copied."""

    alpha: float
    interpolated: list[str] = field(default_factory=list)  # (1 − α)·a + α·b
    copied: list[str] = field(default_factory=list)  # equal in both files (or α ∈ {0, 1})


def _listing(items: list[str]) -> str:
    more = f", ... ({len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def check_alpha(alpha: object) -> float:
    """α as a float; InputError unless it is a real number in [0, 1]."""
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha):
        raise InputError(f"WiSE-FT alpha must be a number in [0, 1], got {alpha!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"WiSE-FT alpha must lie in [0, 1], got {alpha!r}")
    return float(alpha)


def _check_layout(zs: Mapping[str, Tensor], ft: Mapping[str, Tensor], names: tuple[str, str]) -> None:
    """InputError naming both inputs unless keys, shapes and dtypes agree."""
    where = f"{names[0]} (zero-shot) and {names[1]} (fine-tuned)"
    only_zs, only_ft = [k for k in zs if k not in ft], [k for k in ft if k not in zs]
    if only_zs or only_ft:
        parts = [f"{len(ks)} key(s) only in {n}: {_listing(ks)}" for n, ks in zip(names, (only_zs, only_ft)) if ks]
        hint = ""
        if any(k.startswith(FROZEN_PREFIX) for k in only_zs + only_ft):
            hint = " (an official FC-CLIP file lacks the CLIP text tower: pass the study's model spec to complete it)"
        raise InputError(f"{where} do not have the same tensors: " + "; ".join(parts) + hint)
    bad = [
        f"{k} ({list(zs[k].shape)} {zs[k].dtype} vs {list(ft[k].shape)} {ft[k].dtype})"
        for k in zs
        if zs[k].shape != ft[k].shape or zs[k].dtype != ft[k].dtype
    ]
    if bad:
        raise InputError(f"{where} differ in shape or dtype for {len(bad)} tensor(s): {_listing(bad)}")


def interpolate_state_dicts(
    zs: Mapping[str, Tensor],
    ft: Mapping[str, Tensor],
    alpha: float,
    *,
    names: tuple[str, str] = ("zero-shot state dict", "fine-tuned state dict"),
    report: WiseFTReport | None = None,
) -> dict[str, Tensor]:
    """``(1 − α)·zs + α·ft`` tensor by tensor (exactness rules: module docstring).

    Args:
        zs: zero-shot state dict ``{name: tensor}``.
        ft: fine-tuned state dict with the same keys, shapes and dtypes.
        alpha: weight of the fine-tuned model, in [0, 1].
        names: how error messages call the two inputs (e.g. their file paths).
        report: if given, filled with the interpolated and the copied keys.

    Returns:
        New CPU tensors, keys in the order of ``zs``; the inputs are not modified.
    """
    alpha = check_alpha(alpha)
    _check_layout(zs, ft, names)
    out: dict[str, Tensor] = {}
    interpolated, copied = [], []
    for key, a in zs.items():
        a, b = a.detach().cpu(), ft[key].detach().cpu()
        if not a.is_floating_point():
            if not torch.equal(a, b):
                raise InputError(
                    f"{names[0]} and {names[1]} differ in the non-floating-point tensor {key} "
                    f"({a.dtype}), which cannot be interpolated"
                )
            out[key] = a.clone()
        elif alpha == 0.0 or alpha == 1.0 or torch.equal(a, b):
            out[key] = (b if alpha == 1.0 else a).clone()
        else:
            mixed = (1.0 - alpha) * a.to(torch.float64) + alpha * b.to(torch.float64)
            out[key] = mixed.to(a.dtype)
            interpolated.append(key)
            continue
        copied.append(key)
    if report is not None:
        report.alpha, report.interpolated, report.copied = alpha, interpolated, copied
    return out


def check_shared_frozen(
    zs: Mapping[str, Tensor], ft: Mapping[str, Tensor], names: tuple[str, str], prefix: str = FROZEN_PREFIX
) -> None:
    """InputError unless every tensor under ``prefix`` (the frozen CLIP) is equal in both."""
    differ = [k for k in zs if k.startswith(prefix) and k in ft and not torch.equal(zs[k], ft[k])]
    if differ:
        raise InputError(
            f"{names[0]} (zero-shot) and {names[1]} (fine-tuned) differ in {len(differ)} tensor(s) of the "
            f"frozen CLIP ({_listing(differ)}): the fine-tuned model does not start from this zero-shot model"
        )


def _load(path: Path, spec: ModelSpec | None) -> dict[str, Tensor]:
    """State dict of a checkpoint file: raw, or completed by ``build_model(spec, path)``."""
    if spec is None:
        return read_state_dict(path)
    return build_model(spec, path).state_dict()


def wiseft_checkpoint(
    zeroshot_path: str | os.PathLike,
    finetuned_path: str | os.PathLike,
    alpha: float,
    out_path: str | os.PathLike,
    *,
    spec: ModelSpec | None = None,
) -> WiseFTReport:
    """Write the WiSE-FT interpolation of two FC-CLIP checkpoints to ``out_path``.

    Args:
        zeroshot_path: checkpoint of the zero-shot (base) model.
        finetuned_path: checkpoint of a model fine-tuned from it.
        alpha: weight of the fine-tuned model, in [0, 1].
        out_path: output ``{"model": state_dict}`` file (written atomically).
        spec: optional :class:`~vocabseg.approaches.study_model.ModelSpec`; if given,
            both files are loaded into the study's FC-CLIP first (completes official
            files without the CLIP text tower and checks both against the model).

    Returns:
        A :class:`WiseFTReport` (which keys were interpolated and which copied).
    """
    alpha = check_alpha(alpha)
    names = (os.fspath(zeroshot_path), os.fspath(finetuned_path))
    zs, ft = _load(Path(zeroshot_path), spec), _load(Path(finetuned_path), spec)
    _check_layout(zs, ft, names)
    check_shared_frozen(zs, ft, names)
    report = WiseFTReport(alpha)
    state = interpolate_state_dicts(zs, ft, alpha, names=names, report=report)
    torch_save_atomic({"model": state}, out_path)
    return report
