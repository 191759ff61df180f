"""Benchmark: multi-scale deformable attention core, reference vs ours, on CPU.

Times, in the same process and on the same inputs,

* the reference: ``ms_deform_attn_reference`` (one ``F.grid_sample`` per level,
  then the attention-weighted sum), and
* ours: ``ms_deform_attn`` (zero-padded flat table + ``embedding_bag``, hand-written
  backward),

forward only and forward + backward (gradients w.r.t. value, sampling locations
and attention weights), at the pixel-decoder encoder sizes of 256x512, 512x1024
and 1024x2048 input images: levels at 1/32, 1/16 and 1/8, every token a query
(Lq = S), N = 1, M = 8 heads, D = 32, L = 3, P = 4. Sampling locations look like
the encoder's: each query's pixel centre plus the directional initial offsets plus
Gaussian noise of 2 pixels (so some samples fall off the borders); attention
weights are a softmax over L * P. Each configuration runs with 1 and with 2 torch
threads. Outputs and gradients are checked to agree (max error relative to the
largest reference magnitude below ``TOLERANCE``; location gradients only away from
the kinks of bilinear sampling, see ``away_from_kinks``) and a table of the best
time per call and the ratio reference / ours is printed.

Usage: python benchmarks/deform_attn.py [--repeats R] [--sizes 256x512 512x1024 ...]
       [--threads 1 2] [--seed S]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from vocabseg.models.fcclip.ms_deform_attn import ms_deform_attn, ms_deform_attn_reference

TOLERANCE = 1e-4  # relative to the largest magnitude of the reference tensor
HEADS, HEAD_DIM, POINTS = 8, 32, 4
STRIDES = (32, 16, 8)


def make_inputs(height: int, width: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Encoder-like inputs for one ``height`` x ``width`` image."""
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor([[height // s, width // s] for s in STRIDES], dtype=torch.long)
    levels = len(STRIDES)
    centres = []
    for h, w in shapes.tolist():
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij")
        centres.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1))
    centres = torch.cat(centres)  # [S, 2]
    s = centres.shape[0]
    angles = torch.arange(HEADS) * (2 * math.pi / HEADS)
    ring = torch.stack([angles.cos(), angles.sin()], -1)
    ring = ring / ring.abs().max(-1, keepdim=True).values
    ring = ring[:, None, None, :] * torch.arange(1, POINTS + 1).view(1, 1, POINTS, 1)  # [M, 1, P, 2]
    pixels = ring + 2.0 * torch.randn(1, s, HEADS, levels, POINTS, 2, generator=gen)
    size_xy = shapes.flip(-1).float()  # (W, H)
    locations = centres[None, :, None, None, None, :] + pixels / size_xy[:, None, :]
    logits = torch.randn(1, s, HEADS, levels * POINTS, generator=gen)
    weights = logits.softmax(-1).view(1, s, HEADS, levels, POINTS)
    value = torch.randn(1, s, HEADS, HEAD_DIM, generator=gen)
    return value, shapes, locations, weights


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Smallest wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def forward_only(core, inputs):
    value, shapes, locations, weights = inputs

    def run():
        with torch.no_grad():
            return core(value, shapes, locations, weights)

    return run


def forward_backward(core, inputs, grad_out):
    value, shapes, locations, weights = inputs

    def run():
        leaves = [t.detach().requires_grad_() for t in (value, locations, weights)]
        out = core(leaves[0], shapes, leaves[1], leaves[2])
        out.backward(grad_out)
        return [out.detach()] + [t.grad for t in leaves]

    return run


def rel_error(ours: torch.Tensor, ref: torch.Tensor, keep: torch.Tensor | None = None) -> float:
    """max |ours - ref| / max |ref|, over the entries where ``keep`` is True (all if None)."""
    diff = (ours - ref).abs()
    if keep is not None:
        diff = diff[keep]
    return float(diff.max() / ref.abs().max().clamp_min(1e-30))


def away_from_kinks(locations: torch.Tensor, shapes: torch.Tensor, margin: float = 1e-3) -> torch.Tensor:
    """Entries of d loss / d locations to compare: pixel coordinate not within ``margin`` of an integer.

    Bilinear sampling is not differentiable where a pixel coordinate ``loc * size - 0.5``
    is an integer (the corner pair changes); there the two implementations may round
    ``loc`` to opposite sides (the reference computes ``((2 * loc - 1) + 1) * size / 2 - 0.5``)
    and return the left vs. the right derivative.
    """
    pixels = locations * shapes.flip(-1).to(locations.dtype)[:, None, :] - 0.5
    return (pixels - pixels.round()).abs() > margin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=["256x512", "512x1024", "1024x2048"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"torch {torch.__version__}, N=1 M={HEADS} D={HEAD_DIM} L={len(STRIDES)} P={POINTS}, Lq = S")
    columns = ("image", 10), ("S", 6), ("thr", 3), ("pass", 8), ("reference ms", 13), ("ours ms", 9), ("ref/ours", 8)
    header = " ".join(f"{name:>{width}}" for name, width in columns) + f" {'max rel err':>11}"
    print(header)
    print("-" * len(header))
    failures = []
    for size in args.sizes:
        height, width = (int(v) for v in size.split("x"))
        inputs = make_inputs(height, width, args.seed)
        s = inputs[0].shape[1]
        keep = away_from_kinks(inputs[2], inputs[1])
        kinks = int((~keep).sum())
        grad_out = torch.randn(1, s, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(args.seed + 1))
        for threads in args.threads:
            torch.set_num_threads(threads)
            for name, make in (
                ("fwd", lambda core: forward_only(core, inputs)),
                ("fwd+bwd", lambda core: forward_backward(core, inputs, grad_out)),
            ):
                t_ref, r_ref = best_time(make(ms_deform_attn_reference), args.repeats)
                t_ours, r_ours = best_time(make(ms_deform_attn), args.repeats)
                if isinstance(r_ref, torch.Tensor):
                    r_ref, r_ours = [r_ref], [r_ours]
                # output, d value, d locations (away from kinks), d weights
                keeps = [None, None, keep, None]
                err = max(rel_error(a, b, k) for a, b, k in zip(r_ours, r_ref, keeps))
                if err > TOLERANCE:
                    failures.append(f"{size} threads={threads} {name}: relative error {err:.2e}")
                print(
                    f"{size:>10} {s:>6} {threads:>3} {name:>8} {t_ref * 1e3:>13.1f} {t_ours * 1e3:>9.1f} "
                    f"{t_ref / t_ours:>8.2f} {err:>11.1e}",
                    flush=True,
                )
                del r_ref, r_ours
        print(f"{size:>10}: {kinks} of {keep.numel()} location-gradient entries within 1e-3 px of a kink not compared")
    if failures:
        raise SystemExit("MISMATCH:\n" + "\n".join(failures))
    print(f"all outputs and gradients agree (max relative error <= {TOLERANCE:g})")


if __name__ == "__main__":
    main()
