"""Hyper-parameters of the ContMAV network, typed and checked, and ``parse_bool``.

The public ContMAV code declares its switches (``--obj``, ``--mav``, ``--closs``) with
``type=bool``, so any non-empty string, ``"False"`` included, turns them on. Here
every boolean goes through :func:`parse_bool`, which accepts real booleans and the
usual spellings only, and everything else raises :class:`InputError` naming the key.
:func:`convert_fields` applies such per-field converters to a mapping (used by
:class:`ContMAVConfig` and the loss configuration in :mod:`vocabseg.openworld.losses`).

Presets: ``"paper"`` (the ContMAV defaults) and ``"tiny"`` (a narrow, shallow network
for tests and CPU runs on the synthetic city).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from vocabseg.errors import InputError

__all__ = [
    "parse_bool",
    "convert_fields",
    "ContMAVConfig",
    "PRESETS",
    "preset_config",
    "to_int",
    "to_float",
    "to_int_tuple",
    "optional",
    "choice",
]

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_bool(value: Any, key: str) -> bool:
    """``value`` as a bool: ``True``/``False``, the integers 0/1, or (case-insensitive,
    surrounding spaces ignored) ``true/yes/on/1`` and ``false/no/off/0``.

    Anything else, e.g. ``"maybe"``, ``""``, ``2`` or ``None``, raises
    :class:`InputError` naming ``key``. In particular ``"False"`` is False.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise InputError(f"{key}: expected a boolean (true/false, yes/no, on/off, 1/0), got {value!r}")


def to_int(value: Any, key: str, minimum: int | None = None) -> int:
    """An int (not a bool; an integral float or digit string is accepted) >= ``minimum``."""
    if isinstance(value, bool):
        raise InputError(f"{key}: expected an integer, got {value!r}")
    try:
        number = float(value) if isinstance(value, str) else value
        if not isinstance(number, (int, float)) or not math.isfinite(number) or number != int(number):
            raise ValueError
        number = int(number)
    except (TypeError, ValueError):
        raise InputError(f"{key}: expected an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise InputError(f"{key}: must be >= {minimum}, got {number}")
    return number


def to_float(value: Any, key: str, minimum: float | None = None) -> float:
    """A finite float (not a bool) >= ``minimum``."""
    if isinstance(value, bool):
        raise InputError(f"{key}: expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{key}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputError(f"{key}: expected a finite number, got {value!r}")
    if minimum is not None and number < minimum:
        raise InputError(f"{key}: must be >= {minimum}, got {number}")
    return number


def to_int_tuple(value: Any, key: str, length: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """A list/tuple of ints >= ``minimum``, of ``length`` items if given."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise InputError(f"{key}: expected a list of integers, got {value!r}")
    items = tuple(to_int(v, key, minimum) for v in value)
    if length is not None and len(items) != length:
        raise InputError(f"{key}: expected {length} integers, got {list(items)}")
    if not items:
        raise InputError(f"{key}: expected a non-empty list of integers")
    return items


def optional(convert: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    """``convert`` that lets ``None`` through."""
    return lambda value, key: None if value is None else convert(value, key)


def choice(*options: str) -> Callable[[Any, str], str]:
    """A converter accepting exactly one of ``options``."""

    def convert(value: Any, key: str) -> str:
        if not isinstance(value, str) or value not in options:
            raise InputError(f"{key}: choose one of {list(options)}, got {value!r}")
        return value

    return convert


def convert_fields(
    cls: type, converters: Mapping[str, Callable[[Any, str], Any]], values: Mapping[str, Any], source: str
) -> Any:
    """``cls(**{k: converters[k](v, f"{source}: {k}")})``; unknown keys raise
    :class:`InputError` listing them and the known ones. Missing keys keep the
    dataclass defaults."""
    if not isinstance(values, Mapping):
        raise InputError(f"{source}: expected a mapping of settings, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InputError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**{k: converters[k](v, f"{source}: {k}") for k, v in values.items()})


@dataclass(frozen=True)
class ContMAVConfig:
    """Everything :class:`~vocabseg.openworld.model.model.ContMAV` needs.

    num_classes: K known classes (width of both decoders' outputs).
    encoder_block: ``"nbt1d"`` (paper) or ``"basic"`` (torchvision ResNet34 block).
    encoder_layers: blocks per stage, (3, 4, 6, 3).
    width: stage-1 channels; stages have ``width * (1, 2, 4, 8)``; 64 in the paper
        (ImageNet weights need 64).
    decoder_channels: output channels of the 3 decoder modules, (512, 256, 128).
    decoder_blocks: NonBottleneck-1D blocks per decoder module, 3.
    context_bins: pyramid pooling grids, (1, 2, 4, 8); the module outputs ``8 * width``
        channels with ``2 * width`` per branch (512 / 128 in the paper).
    context_input_size: 1/32 feature size at training resolution, e.g. (16, 32) for
        512x1024 crops, for the adaptive grid scaling; None = no scaling.
    trufor: add the TruFor-style MLP head and fuse it into the contrastive output.
    trufor_fusion: ``"normalized_sum"`` or ``"learned"``.
    trufor_embed_dim, trufor_dropout: E and dropout of the MLP head (768, 0.1).
    pretrained: path of ImageNet encoder weights, or None (He initialisation).
    he_init: He-initialise convs (see :func:`~vocabseg.openworld.model.layers.he_init_`).
    """

    num_classes: int = 19
    encoder_block: str = "nbt1d"
    encoder_layers: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    decoder_channels: tuple[int, ...] = (512, 256, 128)
    decoder_blocks: int = 3
    context_bins: tuple[int, ...] = (1, 2, 4, 8)
    context_input_size: tuple[int, ...] | None = None
    trufor: bool = False
    trufor_fusion: str = "normalized_sum"
    trufor_embed_dim: int = 768
    trufor_dropout: float = 0.1
    pretrained: str | None = None
    he_init: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists), e.g. for run facts or YAML."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "ContMAV config") -> "ContMAVConfig":
        """Build from a mapping, converting and checking every value (booleans via
        :func:`parse_bool`); :class:`InputError` names ``source`` and the key."""
        return convert_fields(cls, _CONVERTERS, values, source)


_CONVERTERS: dict[str, Callable[[Any, str], Any]] = {
    "num_classes": lambda v, k: to_int(v, k, 1),
    "encoder_block": choice("nbt1d", "basic"),
    "encoder_layers": lambda v, k: to_int_tuple(v, k, 4),
    "width": lambda v, k: to_int(v, k, 1),
    "decoder_channels": lambda v, k: to_int_tuple(v, k, 3),
    "decoder_blocks": lambda v, k: to_int(v, k, 0),
    "context_bins": lambda v, k: to_int_tuple(v, k),
    "context_input_size": optional(lambda v, k: to_int_tuple(v, k, 2)),
    "trufor": parse_bool,
    "trufor_fusion": choice("normalized_sum", "learned"),
    "trufor_embed_dim": lambda v, k: to_int(v, k, 1),
    "trufor_dropout": lambda v, k: to_float(v, k, 0.0),
    "pretrained": optional(lambda v, k: str(v)),
    "he_init": parse_bool,
}

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": dict(
        encoder_layers=(1, 1, 1, 1),
        width=16,
        decoder_channels=(64, 32, 16),
        decoder_blocks=1,
        trufor_embed_dim=32,
    ),
}


def preset_config(name: str, **overrides: Any) -> ContMAVConfig:
    """The named preset (``"paper"`` or ``"tiny"``) with ``overrides`` (checked)."""
    if name not in PRESETS:
        raise InputError(f"unknown ContMAV preset {name!r}; choose one of {sorted(PRESETS)}")
    return ContMAVConfig.from_dict({**PRESETS[name], **overrides}, source=f"ContMAV preset {name!r}")
