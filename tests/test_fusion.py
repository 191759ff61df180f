"""Fusion rules of the combined approach against hand computations (plain Python math)."""

from __future__ import annotations

import math

import pytest
import torch

from vocabseg.approaches.fusion import (
    ENTROPY_NORM_EPS,
    FUSIONS,
    fuse,
    fuse_entropy,
    fuse_entropy_norm,
    fuse_mean,
    fuse_outputs,
    fuse_softmax_threshold,
    fuse_softmax_topk,
    fuse_weighted,
)
from vocabseg.errors import InputError


# ---------------------------------------------------------------- helpers
def softmax(row: list[float]) -> list[float]:
    top = max(row)
    e = [math.exp(v - top) for v in row]
    return [v / sum(e) for v in e]


def ent(s: list[float]) -> float:
    return -sum(p * math.log(p + 1e-9) for p in s)


def log_p(p: list[float]) -> list[float]:
    return [math.log(v + 1e-9) for v in p]


def pair(seed: int, shape=(1, 3, 5), mask_hw=(2, 3)):
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(*shape, generator=g) * 2
    z2 = torch.randn(*shape, generator=g) * 2
    m1 = torch.randn(*shape[:2], *mask_hw, generator=g)
    m2 = torch.randn(*shape[:2], *mask_hw, generator=g)
    return z1, z2, m1, m2


def rows(t: torch.Tensor, b: int, q: int) -> list[float]:
    return t[b, q].flatten().tolist()


# ---------------------------------------------------------------- linear rules
def test_mean_and_weighted_by_hand():
    z1, z2, m1, m2 = pair(0)
    z, m = fuse_mean(z1, z2, m1, m2)
    zw, mw = fuse_weighted(z1, z2, m1, m2)
    for q in range(3):
        a, b = rows(z1, 0, q), rows(z2, 0, q)
        assert rows(z, 0, q) == pytest.approx([(x + y) / 2 for x, y in zip(a, b)], abs=1e-6)
        assert rows(zw, 0, q) == pytest.approx([0.6 * x + 0.4 * y for x, y in zip(a, b)], abs=1e-6)
        ma, mb = rows(m1, 0, q), rows(m2, 0, q)
        assert rows(m, 0, q) == pytest.approx([(x + y) / 2 for x, y in zip(ma, mb)], abs=1e-6)
        assert rows(mw, 0, q) == pytest.approx([0.6 * x + 0.4 * y for x, y in zip(ma, mb)], abs=1e-6)


# ---------------------------------------------------------------- threshold
def test_softmax_threshold_by_hand():
    # K = 3 real classes + void. Queries: 0 only M1 confident, 1 both, 2 neither,
    # 3 only M2 confident, 4 M1 confident about void only (does not count).
    confident = [6.0, 0.0, 0.0, 0.0]  # softmax max ~0.98 on class 0
    unsure = [0.5, 0.4, 0.3, 0.2]  # max ~0.29
    void_sure = [0.0, 0.1, 0.0, 6.0]  # void ~0.98, best real class ~0.006
    conf_b = [0.0, 0.0, 5.0, 0.0]
    z1 = torch.tensor([[confident, confident, unsure, unsure, void_sure]])
    z2 = torch.tensor([[unsure, conf_b, void_sure, conf_b, unsure]])
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.randn(1, 5, 2, 2, generator=g), torch.randn(1, 5, 2, 2, generator=g)
    z, m = fuse_softmax_threshold(z1, z2, m1, m2, threshold=0.7)
    kept = [(1, 0), (1, 1), (1, 1), (0, 1), (1, 1)]  # (c1, c2) after "neither -> both"
    for q, (c1, c2) in enumerate(kept):
        s1, s2 = softmax(rows(z1, 0, q)), softmax(rows(z2, 0, q))
        p = [(c1 * a + c2 * b) / (c1 + c2) for a, b in zip(s1, s2)]
        assert rows(z, 0, q) == pytest.approx(log_p(p), rel=1e-5, abs=1e-5)
        mm = [(c1 * a + c2 * b) / (c1 + c2) for a, b in zip(rows(m1, 0, q), rows(m2, 0, q))]
        assert rows(m, 0, q) == pytest.approx(mm, abs=1e-6)
    # the threshold is inclusive (>=): set it to M2's (float32) maximum for query 0
    s2_max = float(torch.tensor(unsure).softmax(-1)[:3].max())
    z_lo, _ = fuse_softmax_threshold(z1, z2, m1, m2, threshold=s2_max)
    p = [(a + b) / 2 for a, b in zip(softmax(confident), softmax(unsure))]
    assert rows(z_lo, 0, 0) == pytest.approx(log_p(p), rel=1e-5, abs=1e-5)


# ---------------------------------------------------------------- top-k
def test_softmax_topk_by_hand():
    z1, z2, m1, m2 = pair(2, shape=(2, 3, 6))  # K = 5 real classes + void
    k = 2
    z, m = fuse_softmax_topk(z1, z2, m1, m2, k=k)
    for b in range(2):
        for q in range(3):
            s = [a + c for a, c in zip(softmax(rows(z1, b, q)), softmax(rows(z2, b, q)))]
            top = sorted(range(5), key=lambda c: -s[c])[:k]
            keep = set(top) | {5}
            total = sum(s[c] for c in keep)
            p = [s[c] / total if c in keep else 0.0 for c in range(6)]
            assert rows(z, b, q) == pytest.approx(log_p(p), rel=1e-5, abs=1e-5)
            assert sum(1 for v in rows(z, b, q) if v < -20) == 5 - k  # log(1e-9) = -20.7
            mm = [(x + y) / 2 for x, y in zip(rows(m1, b, q), rows(m2, b, q))]
            assert rows(m, b, q) == pytest.approx(mm, abs=1e-6)
    # k >= K: the normalised sum of both softmaxes, i.e. their mean
    z_all, _ = fuse_softmax_topk(z1, z2, m1, m2, k=10)
    s = [(a + c) / 2 for a, c in zip(softmax(rows(z1, 1, 2)), softmax(rows(z2, 1, 2)))]
    assert rows(z_all, 1, 2) == pytest.approx(log_p(s), rel=1e-5, abs=1e-5)


def test_softmax_topk_keeps_void_even_when_small():
    z1 = torch.tensor([[[5.0, 4.0, 3.0, -9.0]]])  # void tiny, K = 3
    z = fuse_softmax_topk(z1, z1.clone(), torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), k=1)[0]
    s = softmax(z1[0, 0].tolist())
    p = [s[0] / (s[0] + s[3]), 0.0, 0.0, s[3] / (s[0] + s[3])]
    assert z[0, 0].tolist() == pytest.approx(log_p(p), rel=1e-5, abs=1e-5)
    assert z[0, 0, 3] > math.log(1e-9) + 1.0


# ---------------------------------------------------------------- entropy
def test_entropy_seed_formula_by_hand():
    z1, z2, m1, m2 = pair(3)
    z1[0, 2] = 0.0  # uniform over K + 1 = 5: H = log 5 > 1, so 1 - H < 0
    z, m = fuse_entropy(z1, z2, m1, m2)
    for q in range(3):
        s1, s2 = softmax(rows(z1, 0, q)), softmax(rows(z2, 0, q))
        w1, w2 = 1 - ent(s1), 1 - ent(s2)
        assert rows(z, 0, q) == pytest.approx([a * w1 + b * w2 for a, b in zip(s1, s2)], rel=1e-5, abs=1e-6)
        mm = [(x + y) / 2 for x, y in zip(rows(m1, 0, q), rows(m2, 0, q))]
        assert rows(m, 0, q) == pytest.approx(mm, abs=1e-6)
    assert 1 - ent(softmax(rows(z1, 0, 2))) == pytest.approx(1 - math.log(5), abs=1e-6)
    # the seed's output is used as logits, not as probabilities: it is not a distribution
    assert abs(float(z[0, 2].sum()) - 1.0) > 0.1


def test_entropy_norm_by_hand():
    z1, z2, m1, m2 = pair(4)
    z, m = fuse_entropy_norm(z1, z2, m1, m2)
    e = ENTROPY_NORM_EPS
    for q in range(3):
        s1, s2 = softmax(rows(z1, 0, q)), softmax(rows(z2, 0, q))
        w1 = min(max(1 - ent(s1) / math.log(5), 0.0), 1.0) + e / 2
        w2 = min(max(1 - ent(s2) / math.log(5), 0.0), 1.0) + e / 2
        p = [(w1 * a + w2 * b) / (w1 + w2) for a, b in zip(s1, s2)]
        assert rows(z, 0, q) == pytest.approx(log_p(p), rel=1e-5, abs=1e-5)
        # the un-smoothed formula of the design, to within e / (w1 + w2)
        w1r, w2r = w1 - e / 2, w2 - e / 2
        p_raw = [(w1r * a + w2r * b) / (w1r + w2r) for a, b in zip(s1, s2)]
        assert [math.exp(v) for v in rows(z, 0, q)] == pytest.approx(p_raw, abs=1e-5)
        mm = [(w1 * x + w2 * y) / (w1 + w2) for x, y in zip(rows(m1, 0, q), rows(m2, 0, q))]
        assert rows(m, 0, q) == pytest.approx(mm, rel=1e-5, abs=1e-5)


def test_entropy_norm_extremes():
    # both uniform: both weights 0 -> exactly the mean
    z1 = torch.zeros(1, 1, 4)
    z2 = torch.zeros(1, 1, 4)
    m1, m2 = torch.full((1, 1, 1, 2), 2.0), torch.full((1, 1, 1, 2), -1.0)
    z, m = fuse_entropy_norm(z1, z2, m1, m2)
    assert z[0, 0].tolist() == pytest.approx([math.log(0.25 + 1e-9)] * 4, abs=1e-6)
    assert m.flatten().tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    # one certain model, one uniform: the certain one wins (weights 1 and 0)
    z1 = torch.tensor([[[30.0, 0.0, 0.0, 0.0]]])
    z, m = fuse_entropy_norm(z1, z2, m1, m2)
    assert z[0, 0].exp().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-5)
    assert m.flatten().tolist() == pytest.approx([2.0, 2.0], abs=1e-5)


# ---------------------------------------------------------------- common properties
@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_identical_models_give_their_own_distribution(name):
    z1, _, m1, _ = pair(5)
    z, m = fuse(name, z1, z1.clone(), m1, m1.clone())
    if name == "entropy":
        # the seed's rule rescales a model's probabilities: softmax(2 (1 - H) s)
        s = z1.softmax(-1)
        h = -(s * (s + 1e-9).log()).sum(-1, keepdim=True)
        torch.testing.assert_close(z, 2 * (1 - h) * s)
    elif name == "softmax_topk":
        pass  # restricted to the top-k; checked by hand above
    else:
        torch.testing.assert_close(z.softmax(-1), z1.softmax(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m, m1)
    if name == "mean":
        assert torch.equal(z, z1) and torch.equal(m, m1)


@pytest.mark.parametrize("name", sorted(FUSIONS))
def test_gradients_reach_both_models_and_half_inputs_work(name):
    z1, z2, m1, m2 = (t.requires_grad_() for t in pair(6))
    z, m = fuse(name, z1, z2, m1, m2)
    (z.logsumexp(-1).sum() - z[..., 0].sum() + m.sigmoid().sum()).backward()
    for t in (z1, z2, m1, m2):
        assert t.grad is not None and float(t.grad.abs().sum()) > 0
    half = [t.detach().half() for t in pair(6)]
    z, m = fuse(name, *half)
    assert z.dtype == torch.float32 and m.dtype == torch.float32
    assert torch.isfinite(z).all() and torch.isfinite(m).all()


def test_fuse_outputs_layer_by_layer_and_errors():
    layers = [pair(10 + i) for i in range(3)]
    out1 = {"pred_logits": layers[2][0], "pred_masks": layers[2][2],
            "aux_outputs": [{"pred_logits": a[0], "pred_masks": a[2]} for a in layers[:2]]}
    out2 = {"pred_logits": layers[2][1], "pred_masks": layers[2][3],
            "aux_outputs": [{"pred_logits": a[1], "pred_masks": a[3]} for a in layers[:2]]}
    fused = fuse_outputs(out1, out2, "entropy_norm")
    assert len(fused["aux_outputs"]) == 2
    for got, (z1, z2, m1, m2) in zip([*fused["aux_outputs"], fused], layers):
        z, m = fuse_entropy_norm(z1, z2, m1, m2)
        assert torch.equal(got["pred_logits"], z) and torch.equal(got["pred_masks"], m)
    with pytest.raises(InputError, match="fusion"):
        fuse_outputs(out1, out2, "median")
    with pytest.raises(ValueError, match="auxiliary"):
        fuse_outputs(out1, {**out2, "aux_outputs": out2["aux_outputs"][:1]}, "mean")
    with pytest.raises(ValueError, match="mask logits"):
        fuse_mean(layers[0][0], layers[0][1], layers[0][2], layers[0][3][:, :2])
