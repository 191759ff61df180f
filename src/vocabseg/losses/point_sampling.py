"""Point sampling helpers of PointRend, as used by the Mask2Former losses and matcher.

Points are given in normalised image coordinates ``(x, y)`` in ``[0, 1]``, where
``(0, 0)`` is the top-left corner of the top-left pixel and ``(1, 1)`` the
bottom-right corner of the bottom-right pixel. Because the coordinates are
normalised, one set of points addresses a prediction at 1/4 resolution and a target
at full resolution alike.

Randomness is drawn from an explicit ``torch.Generator`` when one is given, always on
the CPU (and then moved to the input's device), so that a seeded generator gives the
same points whatever the device or the batch the sample sits in.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "point_sample",
    "calculate_uncertainty",
    "get_uncertain_point_coords_with_randomness",
    "derive_seed",
    "seeded_generator",
    "random_points",
]

_MASK64 = (1 << 64) - 1


def point_sample(input: Tensor, point_coords: Tensor, **kwargs) -> Tensor:
    """Bilinearly sample ``input`` at normalised points (``F.grid_sample`` wrapper).

    Args:
        input: [N, C, H, W] feature map.
        point_coords: [N, P, 2] or [N, Hg, Wg, 2] points, ``(x, y)`` in ``[0, 1]``.
        **kwargs: passed to ``F.grid_sample``; ``align_corners`` defaults to False
            (pixel centres at ``(i + 0.5) / size``), zero padding outside the map.

    Returns:
        [N, C, P] for 3-d ``point_coords``, otherwise [N, C, Hg, Wg].
    """
    kwargs.setdefault("align_corners", False)
    flat = point_coords.dim() == 3
    grid = point_coords.unsqueeze(2) if flat else point_coords
    grid = grid.to(dtype=input.dtype, device=input.device)
    out = F.grid_sample(input, 2.0 * grid - 1.0, **kwargs)
    return out.squeeze(3) if flat else out


def calculate_uncertainty(logits: Tensor) -> Tensor:
    """Uncertainty of binary mask logits: ``-|logit|`` (largest at the decision boundary).

    Args:
        logits: [R, 1, ...] class-agnostic mask logits.

    Returns:
        [R, 1, ...] uncertainty scores, higher = more uncertain.
    """
    assert logits.shape[1] == 1, f"expected one channel, got shape {tuple(logits.shape)}"
    return -logits.abs()


def random_points(
    n: int,
    num_points: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Uniform random points in the unit square.

    Drawn on the CPU (from ``generator`` if given, else the global CPU generator) and
    moved to ``device``, so a seeded generator is device independent.

    Returns:
        [n, num_points, 2] ``(x, y)`` in ``[0, 1)``.
    """
    pts = torch.rand(n, num_points, 2, generator=generator, dtype=torch.float32)
    return pts.to(device=device, dtype=dtype)


def get_uncertain_point_coords_with_randomness(
    coarse_logits: Tensor,
    uncertainty_func: Callable[[Tensor], Tensor],
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend importance sampling of points, biased towards uncertain regions.

    1. Draw ``int(num_points * oversample_ratio)`` uniform random points per map.
    2. Keep the ``int(importance_sample_ratio * num_points)`` of them with the highest
       ``uncertainty_func`` of the (bilinearly sampled) logits.
    3. Fill up to ``num_points`` with fresh uniform random points.

    The uncertainty is evaluated on the sampled logits, not on the map, exactly as in
    PointRend. Call under ``torch.no_grad()`` when the logits require grad; the
    returned coordinates never carry gradient.

    Args:
        coarse_logits: [R, 1, H, W] class-agnostic logits, one map per mask.
        uncertainty_func: maps [R, 1, P] logits to [R, 1, P] uncertainties.
        num_points: number P of points to return per map.
        oversample_ratio: k >= 1, oversampling factor of step 1.
        importance_sample_ratio: beta in [0, 1], fraction of importance-sampled points.
        generator: optional CPU generator for all random draws.

    Returns:
        [R, P, 2] point coordinates ``(x, y)`` in ``[0, 1]``.
    """
    assert oversample_ratio >= 1, oversample_ratio
    assert 0.0 <= importance_sample_ratio <= 1.0, importance_sample_ratio
    num_maps = coarse_logits.shape[0]
    device, dtype = coarse_logits.device, coarse_logits.dtype
    num_sampled = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain

    coords = random_points(num_maps, num_sampled, generator=generator, device=device, dtype=dtype)
    uncertainty = uncertainty_func(point_sample(coarse_logits, coords, align_corners=False))
    top = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1).indices  # [R, num_uncertain]
    coords = torch.gather(coords, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        extra = random_points(num_maps, num_random, generator=generator, device=device,
                              dtype=dtype)
        coords = torch.cat([coords, extra], dim=1)
    return coords.detach()


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(seed: int, *salt: int) -> int:
    """Mix a per-sample seed with integer salts into a 63-bit generator seed.

    Distinct salts (e.g. "matcher vs. loss", decoder layer index) give independent
    random streams from one per-sample seed; the result depends only on the integers,
    never on the process, batch or device.
    """
    x = _splitmix64(int(seed) & _MASK64)
    for s in salt:
        x = _splitmix64(x ^ (int(s) & _MASK64))
    return x & ((1 << 63) - 1)


def seeded_generator(seed: int | None, *salt: int) -> torch.Generator | None:
    """A CPU ``torch.Generator`` seeded with ``derive_seed(seed, *salt)``.

    Returns None when ``seed`` is None (the caller then uses the global RNG).
    """
    if seed is None:
        return None
    gen = torch.Generator(device="cpu")
    gen.manual_seed(derive_seed(seed, *salt))
    return gen
