"""Multi-scale deformable attention (Deformable DETR), in pure PyTorch.

Every query attends, per head ``m``, to ``P`` points on each of ``L`` feature levels:

    out[n, q, m] = sum_{l, p} A[n, q, m, l, p] * bilinear(value_l[n, :, :, m], loc[n, q, m, l, p])

where ``loc`` is normalised (x, y) in [0, 1] (0 and 1 are the outer edges of the
map, pixel centres at (i + 0.5) / size) and samples outside the map read zeros:
exactly ``F.grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)`` on ``grid = 2 * loc - 1``.

Two implementations with one signature:

* :func:`ms_deform_attn_reference`: the straightforward per-level ``grid_sample``
  formulation (slow, memory hungry, used to test the fast core).
* :func:`ms_deform_attn`: the fast core used by :class:`MSDeformAttn`. Each level is
  zero-padded by one pixel so that the four bilinear corners of every in-range
  sample are valid rows of one flat ``[N * M * S_pad, D]`` table; the attention
  weights are folded into the corner weights and one ``F.embedding_bag`` (a fused
  gather + weighted sum, no ``[.., Lq, L * P, D]`` intermediate) produces the
  output. The backward pass is hand-written: the value gradient is the transposed
  gather, done by sorting the samples by their top-left corner and running
  ``embedding_bag`` over the output gradient once per corner; the gradients of the
  locations and attention weights come from the dot products of the output
  gradient with the corner values (autograd's per-sample-weight gradient of the
  same ``embedding_bag``).
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MSDeformAttn", "ms_deform_attn", "ms_deform_attn_reference"]


def _level_shapes(spatial_shapes: Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """``[(H_l, W_l), ...]`` as Python ints from a [L, 2] tensor or nested sequence."""
    if isinstance(spatial_shapes, Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def _check_inputs(value: Tensor, shapes: list[tuple[int, int]], locations: Tensor, weights: Tensor) -> None:
    if value.dim() != 4:
        raise ValueError(f"value must be [N, S, M, D], got shape {tuple(value.shape)}")
    n, s, m, _ = value.shape
    if sum(h * w for h, w in shapes) != s:
        raise ValueError(f"value has S={s} rows but the spatial shapes {shapes} sum to {sum(h * w for h, w in shapes)}")
    if locations.dim() != 6 or locations.shape[-1] != 2:
        raise ValueError(f"sampling_locations must be [N, Lq, M, L, P, 2], got {tuple(locations.shape)}")
    nl, lq, ml, levels, points, _ = locations.shape
    if (nl, ml, levels) != (n, m, len(shapes)):
        raise ValueError(
            f"sampling_locations {tuple(locations.shape)} do not match value {tuple(value.shape)} "
            f"and {len(shapes)} levels"
        )
    if tuple(weights.shape) != (n, lq, m, levels, points):
        raise ValueError(f"attention_weights must be {(n, lq, m, levels, points)}, got {tuple(weights.shape)}")


def ms_deform_attn_reference(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Deformable attention core, one ``F.grid_sample`` per level (the reference).

    Args:
        value: [N, S, M, D], the levels' maps flattened row-major and concatenated.
        spatial_shapes: [L, 2] (H_l, W_l), with sum(H_l * W_l) = S.
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y).
        attention_weights: [N, Lq, M, L, P].

    Returns:
        [N, Lq, M * D].
    """
    shapes = _level_shapes(spatial_shapes)
    _check_inputs(value, shapes, sampling_locations, attention_weights)
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    per_level = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(shapes):
        # [N, H*W, M, D] -> [N*M, D, H, W]
        value_l = per_level[level].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        # [N, Lq, M, P, 2] -> [N*M, Lq, P, 2]
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(
            F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [N*M, D, Lq, P]
    sampled = torch.stack(sampled, dim=-2).flatten(-2)  # [N*M, D, Lq, L*P]
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, levels * points)
    out = (sampled * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()


class _Layout:
    """Constants of the zero-padded flat table for given level shapes, batch and heads.

    Every level is stored as an (H+2) x (W+2) map whose one-pixel border is zero, so
    all four bilinear corners of a sample whose top-left corner lies in
    [-1, W-1] x [-1, H-1] are rows of the table. The table is head-major: the row of
    (n, head m, padded position s) is ``(n * M + m) * S_pad + s``, so all rows read
    by one (query, head) lie in one block of the table. Per-sample constants are vectors
    over the ``K = L * P`` samples of one (query, head), level-major like the inputs.
    """

    def __init__(self, shapes: list[tuple[int, int]], batch: int, heads: int, points: int, device, dtype):
        self.shapes = shapes
        self.batch = batch
        self.heads = heads
        padded = [(h + 2) * (w + 2) for h, w in shapes]
        self.padded_starts = [sum(padded[:i]) for i in range(len(shapes))]
        self.padded_size = sum(padded)  # S_pad
        self.table_rows = batch * self.padded_size * heads
        self.index_dtype = torch.int32 if self.table_rows < 2**31 - 1 else torch.int64

        def per_sample(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device).repeat_interleave(points, dim=-1)

        widths = [w for _, w in shapes]
        heights = [h for h, _ in shapes]
        self.width = per_sample(widths, dtype)  # [K]
        self.height = per_sample(heights, dtype)
        self.max_x = self.width - 1
        self.max_y = self.height - 1
        self.row_stride = per_sample([w + 2 for w in widths], self.index_dtype)
        # padded position of map pixel (0, 0) is (1, 1)
        self.level_base = per_sample([s + w + 3 for s, w in zip(self.padded_starts, widths)], self.index_dtype)
        # table-row offsets of the corners (y0,x0), (y0,x1), (y1,x0), (y1,x1) from the top-left one: [4, K]
        self.corner_offsets = per_sample(
            [[0] * len(widths), [1] * len(widths), [w + 2 for w in widths], [w + 3 for w in widths]],
            self.index_dtype,
        )
        # (n * M + m) * S_pad for every (n, m): [N, 1, M, 1]
        first_rows = torch.arange(batch * heads, dtype=self.index_dtype, device=device) * self.padded_size
        self.head_offset = first_rows.view(batch, 1, heads, 1)

    def pad(self, value: Tensor) -> Tensor:
        """[N, S, M, D] -> the table [N, M, S_pad, D]."""
        n, _, m, d = value.shape
        out = value.new_zeros(n, m, self.padded_size, d)
        start = 0
        for (h, w), pstart in zip(self.shapes, self.padded_starts):
            dst = out[:, :, pstart : pstart + (h + 2) * (w + 2)].view(n, m, h + 2, w + 2, d)
            src = value[:, start : start + h * w].view(n, h, w, m, d).permute(0, 3, 1, 2, 4)
            dst[:, :, 1 : h + 1, 1 : w + 1] = src
            start += h * w
        return out

    def locate(self, locations: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Top-left table rows, fractional offsets and in-range flags of the samples.

        ``locations`` [N, Lq, M, K, 2] (normalised x, y) -> rows [N, Lq, M, K] (int),
        fx, fy [N, Lq, M, K] in [0, 1), inside [N, Lq, M, K] bool. A sample is in range
        when at least one corner is on the map; an out-of-range sample gets the row of
        its level's padded (0, 0) and must be given weight zero.
        """
        px = locations[..., 0] * self.width
        px -= 0.5  # pixel coordinates, pixel centres at integers
        py = locations[..., 1] * self.height
        py -= 0.5
        x0 = px.floor()
        y0 = py.floor()
        fx = px.sub_(x0)
        fy = py.sub_(y0)
        inside = (x0 >= -1) & (x0 <= self.max_x) & (y0 >= -1) & (y0 <= self.max_y)
        # out-of-range (and NaN) samples point at padded (0, 0) of their level
        x0 = torch.where(inside, x0, -1.0).to(self.index_dtype)
        y0 = torch.where(inside, y0, -1.0).to(self.index_dtype)
        rows = y0.mul_(self.row_stride)
        rows += x0
        rows += self.level_base
        rows += self.head_offset
        return rows, fx, fy, inside

    def corner_rows(self, rows: Tensor) -> Tensor:
        """[B, K] top-left rows -> [B, 4, K] rows of the corners (y0,x0), (y0,x1), (y1,x0), (y1,x1)."""
        out = rows.new_empty(rows.shape[0], 4, rows.shape[1])
        for c in range(4):
            torch.add(rows, self.corner_offsets[c], out=out[:, c])
        return out


def _corner_weights(fx: Tensor, fy: Tensor, scale: Tensor) -> Tensor:
    """Bilinear weights of the corners (y0,x0), (y0,x1), (y1,x0), (y1,x1) times ``scale``: [B, 4, K]."""
    out = fx.new_empty(fx.shape[0], 4, fx.shape[1])
    upper = scale - scale * fy  # scale * (1 - fy)
    lower = scale * fy
    for c, row_weight in ((0, upper), (2, lower)):
        torch.mul(row_weight, fx, out=out[:, c + 1])
        torch.sub(row_weight, out[:, c + 1], out=out[:, c])  # row_weight * (1 - fx)
    return out


class _DeformAttnFunction(torch.autograd.Function):
    """Fast core: embedding_bag forward, hand-written backward (see module docstring)."""

    @staticmethod
    def forward(ctx, value: Tensor, locations: Tensor, weights: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        n, _, m, d = value.shape
        _, lq, _, levels, points, _ = locations.shape
        k = levels * points
        bags = n * lq * m
        layout = _Layout(shapes, n, m, points, value.device, value.dtype)
        padded = layout.pad(value)
        locations = locations.to(value.dtype).reshape(n, lq, m, k, 2)
        weights = weights.to(value.dtype).reshape(bags, k)
        rows, fx, fy, inside = layout.locate(locations)
        rows, fx, fy, inside = (t.view(bags, k) for t in (rows, fx, fy, inside))
        effective = weights * inside
        out = F.embedding_bag(
            layout.corner_rows(rows).view(bags, 4 * k),
            padded.view(-1, d),
            per_sample_weights=_corner_weights(fx, fy, effective).view(bags, 4 * k),
            mode="sum",
        )
        ctx.layout = layout
        ctx.dims = (n, lq, m, levels, points)
        ctx.save_for_backward(padded, effective, rows, fx, fy, inside)
        return out.view(n, lq, m * d)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        padded, effective, rows, fx, fy, inside = ctx.saved_tensors
        layout: _Layout = ctx.layout
        n, lq, m, levels, points = ctx.dims
        d = padded.shape[-1]
        grad_out = grad_out.to(padded.dtype).reshape(n * lq * m, d).contiguous()
        grad_value = grad_loc = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_value = _value_grad(grad_out, rows, fx, fy, effective, layout)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            dots = _corner_dots(grad_out, padded.view(-1, d), layout.corner_rows(rows))  # [B, 4, K]
            dots *= inside[:, None, :]  # out-of-range samples point at arbitrary rows
            d00, d01, d10, d11 = dots.unbind(1)
            top = torch.lerp(d00, d01, fx)  # interpolated along x on row y0
            bottom = torch.lerp(d10, d11, fx)
            if ctx.needs_input_grad[2]:
                grad_weights = torch.lerp(top, bottom, fy).view(n, lq, m, levels, points)
            if ctx.needs_input_grad[1]:
                grad_x = torch.lerp(d01 - d00, d11 - d10, fy)
                grad_x *= effective
                grad_x *= layout.width
                grad_y = bottom.sub_(top)
                grad_y *= effective
                grad_y *= layout.height
                grad_loc = torch.stack((grad_x, grad_y), dim=-1).view(n, lq, m, levels, points, 2)
        return grad_value, grad_loc, grad_weights, None


def _corner_dots(grad_out: Tensor, table: Tensor, corner_rows: Tensor) -> Tensor:
    """<grad_out[b], table[corner_rows[b, c, k]]> for every bag b: [B, 4, K].

    These are the gradients of the embedding_bag output w.r.t. its per-sample
    weights, so autograd's fused kernel computes them in one pass (no gathered
    [B, 4 K, D] intermediate, and a single parallel region, which matters when the
    cores are shared).
    """
    ones = torch.ones(corner_rows.shape, dtype=table.dtype, device=table.device, requires_grad=True)
    bags = corner_rows.shape[0]
    with torch.enable_grad():
        out = F.embedding_bag(
            corner_rows.view(bags, -1), table.detach(), per_sample_weights=ones.view(bags, -1), mode="sum"
        )
        (dots,) = torch.autograd.grad(out, ones, grad_out)
    return dots


def _value_grad(grad_out: Tensor, rows: Tensor, fx: Tensor, fy: Tensor, effective: Tensor, layout: _Layout) -> Tensor:
    """Transposed gather: d loss / d value, [N, S, M, D].

    The samples are sorted by their top-left row; one ``embedding_bag`` per corner
    sums ``corner weight * grad_out[bag]`` into the top-left row, then each corner's
    sums are shifted onto the corner's own position and the padding is dropped.
    """
    n, m, d = layout.batch, layout.heads, grad_out.shape[-1]
    k = rows.shape[1]
    sorted_rows, order = torch.sort(rows.reshape(-1), stable=True)
    counts = torch.bincount(sorted_rows, minlength=layout.table_rows)
    offsets = torch.zeros(layout.table_rows, dtype=layout.index_dtype, device=rows.device)
    offsets[1:] = counts[:-1].cumsum(0)
    bag_of_sample = torch.div(order, k, rounding_mode="floor").to(layout.index_dtype)
    fx, fy, effective = (t.reshape(-1).index_select(0, order)[None] for t in (fx, fy, effective))
    corner_weights = _corner_weights(fx, fy, effective)[0]  # [4, samples] in sorted order
    sums = [
        F.embedding_bag(bag_of_sample, grad_out, offsets, per_sample_weights=corner_weights[c], mode="sum").view(
            n, m, layout.padded_size, d
        )
        for c in range(4)
    ]
    grad = grad_out.new_empty(n, sum(h * w for h, w in layout.shapes), m, d)
    start = 0
    for (h, w), pstart in zip(layout.shapes, layout.padded_starts):
        level = slice(pstart, pstart + (h + 2) * (w + 2))
        c00, c01, c10, c11 = (s[:, :, level].view(n, m, h + 2, w + 2, d) for s in sums)
        # map pixel (y, x) is padded (y + 1, x + 1); a sample whose top-left corner
        # is at padded (Y, X) also touches (Y, X + 1), (Y + 1, X) and (Y + 1, X + 1)
        level_grad = c00[:, :, 1 : h + 1, 1 : w + 1] + c01[:, :, 1 : h + 1, 0:w]
        level_grad += c10[:, :, 0:h, 1 : w + 1]
        level_grad += c11[:, :, 0:h, 0:w]
        grad[:, start : start + h * w].view(n, h, w, m, d).copy_(level_grad.permute(0, 2, 3, 1, 4))
        start += h * w
    return grad


def ms_deform_attn(
    value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor, attention_weights: Tensor
) -> Tensor:
    """Deformable attention core, fast version; same contract as :func:`ms_deform_attn_reference`.

    Args:
        value: [N, S, M, D].
        spatial_shapes: [L, 2] (H_l, W_l) LongTensor (or nested sequence).
        sampling_locations: [N, Lq, M, L, P, 2] normalised (x, y).
        attention_weights: [N, Lq, M, L, P].

    Returns:
        [N, Lq, M * D]; differentiable w.r.t. value, locations and weights (first
        order only).
    """
    shapes = _level_shapes(spatial_shapes)
    _check_inputs(value, shapes, sampling_locations, attention_weights)
    return _DeformAttnFunction.apply(value.contiguous(), sampling_locations, attention_weights, shapes)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention module (Deformable DETR), upstream names and init.

    Submodules: ``sampling_offsets`` Linear(d_model, M*L*P*2), ``attention_weights``
    Linear(d_model, M*L*P), ``value_proj`` and ``output_proj`` Linear(d_model, d_model).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        head_dim = d_model // n_heads
        if head_dim & (head_dim - 1) != 0:
            warnings.warn("a power-of-2 head dimension is the efficient choice for deformable attention", stacklevel=2)
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets start on a ring of directions (head h points at angle 2*pi*h/M, point
        p at distance p+1 in the max-norm); attention is uniform; projections are
        Xavier-uniform with zero bias."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.n_heads, 1, 1, 2) * scale  # [M, 1, P, 2]
        grid = grid.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        input_flatten: Tensor,
        spatial_shapes: Tensor,
        level_start_index: Tensor,
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            query: [N, Lq, C].
            reference_points: [N, Lq, L, 2] normalised (x, y) in [0, 1].
            input_flatten: [N, S, C], the levels flattened and concatenated.
            spatial_shapes: [L, 2] LongTensor (H_l, W_l).
            level_start_index: [L], start of each level in S (kept for the upstream
                signature; the core derives it from ``spatial_shapes``).
            padding_mask: [N, S] bool, True = padding (its values are zeroed), or None.

        Returns:
            [N, Lq, C].
        """
        n, lq, _ = query.shape
        _, s, _ = input_flatten.shape
        if reference_points.shape[-1] != 2:
            raise ValueError("only point reference_points [N, Lq, L, 2] are supported")
        m, levels, points = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, m, self.d_model // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, levels, points, 2)
        weights = self.attention_weights(query).view(n, lq, m, levels * points)
        weights = weights.softmax(-1).view(n, lq, m, levels, points)
        # offsets are in pixels of each level: normalise by (W_l, H_l)
        normaliser = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1).to(offsets.dtype)
        locations = reference_points[:, :, None, :, None, :] + offsets / normaliser[None, None, None, :, None, :]
        out = ms_deform_attn(value, spatial_shapes, locations, weights)
        return self.output_proj(out)
