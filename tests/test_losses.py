"""Tests of the Mask2Former / FC-CLIP training losses: point sampling, Hungarian matcher,
set criterion (CE with void weighting, point-sampled BCE and dice, deep supervision),
per-sample seeding and the num_masks normalisation under torch.distributed."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from vocabseg.losses import (
    LOSS_STREAM,
    HungarianMatcher,
    SetCriterion,
    batch_dice_cost,
    batch_sigmoid_ce_cost,
    build_criterion,
    calculate_uncertainty,
    derive_seed,
    get_uncertain_point_coords_with_randomness,
    point_sample,
    seeded_generator,
)

K = 3  # real classes
Q = 6  # queries
H = W = 8  # mask resolution; targets are 4x
POINTS = 256


def _rects(boxes: list[tuple[int, int, int, int]], size: int = 4 * H) -> torch.Tensor:
    """[N, size, size] bool masks from (y0, y1, x0, x1) boxes on the full-resolution grid."""
    masks = torch.zeros(len(boxes), size, size, dtype=torch.bool)
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = True
    return masks


def _random_outputs(batch: int, seed: int, num_aux: int = 0, requires_grad: bool = False):
    gen = torch.Generator().manual_seed(seed)

    def one():
        out = {"pred_logits": torch.randn(batch, Q, K + 1, generator=gen),
               "pred_masks": 3.0 * torch.randn(batch, Q, H, W, generator=gen)}
        if requires_grad:
            for v in out.values():
                v.requires_grad_(True)
        return out

    outputs = one()
    if num_aux:
        outputs["aux_outputs"] = [one() for _ in range(num_aux)]
    return outputs


def _sample_targets() -> list[dict]:
    """Two images with 3 and 2 rectangular segments."""
    return [
        {"labels": torch.tensor([0, 2, 1]),
         "masks": _rects([(0, 16, 0, 32), (16, 32, 0, 12), (16, 32, 12, 32)]),
         "seed": 11},
        {"labels": torch.tensor([1, 1]),
         "masks": _rects([(4, 20, 4, 20), (20, 32, 0, 32)]),
         "seed": 12},
    ]


def _slice(outputs: dict, b: int) -> dict:
    out = {k: outputs[k][b:b + 1] for k in ("pred_logits", "pred_masks")}
    if "aux_outputs" in outputs:
        out["aux_outputs"] = [_slice(a, b) for a in outputs["aux_outputs"]]
    return out


def _criterion(num_aux: int = 0, **kw) -> SetCriterion:
    return build_criterion(K, num_points=POINTS, num_aux=num_aux, **kw)


# --------------------------------------------------------------------- point sampling


def _manual_bilinear(img: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Bilinear value of img [C, H, W] at normalised (x, y), pixel centres at (i+0.5)/size,
    zeros outside the map (grid_sample, align_corners=False, padding zeros)."""
    c, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    fx, fy = px - x0, py - y0
    val = torch.zeros(c, dtype=img.dtype)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            if 0 <= yy < h and 0 <= xx < w:
                val = val + wy * wx * img[:, yy, xx]
    return val


def test_point_sample_matches_manual_bilinear():
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 5, 7, generator=gen, dtype=torch.float64)
    coords = torch.rand(2, 20, 2, generator=gen, dtype=torch.float64)
    coords[0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.9], [0.5, 0.5]])
    out = point_sample(img, coords)
    assert out.shape == (2, 3, 20)
    for n in range(2):
        for p in range(20):
            x, y = coords[n, p].tolist()
            torch.testing.assert_close(out[n, :, p], _manual_bilinear(img[n], x, y))
    # a pixel centre returns the pixel exactly
    centre = torch.tensor([[[(2 + 0.5) / 7, (3 + 0.5) / 5]]], dtype=torch.float64)
    torch.testing.assert_close(point_sample(img[:1], centre)[0, :, 0], img[0, :, 3, 2])
    # 4-d grids keep their spatial layout
    assert point_sample(img, coords.view(2, 4, 5, 2)).shape == (2, 3, 4, 5)


def test_uncertain_points_pick_the_most_uncertain():
    # logit = 4 * (column - 7.5): most uncertain in the middle of the map, certain at the sides
    cols = torch.arange(16, dtype=torch.float32)
    logits = (4.0 * (cols - 7.5)).expand(16, 16).reshape(1, 1, 16, 16).repeat(2, 1, 1, 1)
    num_points, k, beta = 40, 3.0, 0.75
    coords = get_uncertain_point_coords_with_randomness(
        logits, calculate_uncertainty, num_points, k, beta, generator=seeded_generator(5))
    assert coords.shape == (2, num_points, 2)
    n_unc = int(beta * num_points)

    # reproduce the candidates: first draw of the same generator
    gen = seeded_generator(5)
    cand = torch.rand(2, int(num_points * k), 2, generator=gen)
    extra = torch.rand(2, num_points - n_unc, 2, generator=gen)
    cand_unc = calculate_uncertainty(point_sample(logits, cand))[:, 0]
    for n in range(2):
        chosen_unc = calculate_uncertainty(point_sample(logits[n:n + 1], coords[n:n + 1, :n_unc]))
        best = torch.sort(cand_unc[n], descending=True).values[:n_unc]
        torch.testing.assert_close(torch.sort(chosen_unc.flatten(), descending=True).values, best)
        # the chosen ones are candidates and are the central ones
        assert all((cand[n] == c).all(-1).any() for c in coords[n, :n_unc])
        kth = best[-1]
        rest = cand_unc[n][cand_unc[n] < kth]
        assert (rest < kth).all() and rest.numel() == cand_unc.shape[1] - n_unc
    # the uncertain points lie closer to the centre column than the average candidate
    assert (coords[:, :n_unc, 0] - 0.5).abs().mean() < (cand[..., 0] - 0.5).abs().mean() / 2
    # the rest are fresh uniform points from the same generator
    torch.testing.assert_close(coords[:, n_unc:], extra)


def test_seeded_generators_are_reproducible_and_salted():
    a = torch.rand(5, generator=seeded_generator(3, 1, 2))
    b = torch.rand(5, generator=seeded_generator(3, 1, 2))
    c = torch.rand(5, generator=seeded_generator(3, 1, 3))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert seeded_generator(None) is None
    assert 0 <= derive_seed(-1, 2**70) < 2**63


# --------------------------------------------------------------------------- matcher


def _obvious_case():
    """3 targets and 4 queries: q2 <-> t0, q0 <-> t1, q3 <-> t2; q1 is void."""
    masks = _rects([(0, 16, 0, 32), (16, 32, 0, 16), (16, 32, 16, 32)])
    labels = torch.tensor([0, 1, 2])
    low = F.interpolate(masks[:, None].float(), size=(H, W), mode="nearest")[:, 0]
    pred_masks = torch.full((4, H, W), -8.0)
    logits = torch.zeros(4, K + 1)
    logits[1, K] = 5.0
    for q, t in ((2, 0), (0, 1), (3, 2)):
        pred_masks[q] = 16.0 * low[t] - 8.0
        logits[q, labels[t]] = 5.0
    return logits, pred_masks, labels, masks


def test_matcher_obvious_assignment_and_permutation():
    logits, pred_masks, labels, masks = _obvious_case()
    matcher = HungarianMatcher(num_points=POINTS)
    target = {"labels": labels, "masks": masks, "seed": 0}
    (src, tgt), = matcher({"pred_logits": logits[None], "pred_masks": pred_masks[None]}, [target])
    assert src.dtype == tgt.dtype == torch.int64
    assert dict(zip(src.tolist(), tgt.tolist())) == {2: 0, 0: 1, 3: 2}

    qperm, tperm = torch.tensor([3, 1, 0, 2]), torch.tensor([2, 0, 1])
    permuted = {"labels": labels[tperm], "masks": masks[tperm], "seed": 0}
    (src_p, tgt_p), = matcher({"pred_logits": logits[qperm][None],
                               "pred_masks": pred_masks[qperm][None]}, [permuted])
    # new query i is old query qperm[i]; new target j is old target tperm[j]
    got = {qperm[s].item(): tperm[t].item() for s, t in zip(src_p.tolist(), tgt_p.tolist())}
    assert got == {2: 0, 0: 1, 3: 2}


def test_matcher_more_targets_than_queries_and_empty_image():
    logits, pred_masks, labels, masks = _obvious_case()
    matcher = HungarianMatcher(num_points=POINTS)
    outs = {"pred_logits": logits[None, :2].repeat(2, 1, 1),
            "pred_masks": pred_masks[None, :2].repeat(2, 1, 1, 1)}
    targets = [{"labels": labels, "masks": masks, "seed": 1},
               {"labels": labels[:0], "masks": masks[:0], "seed": 2}]
    (s0, t0), (s1, t1) = matcher(outs, targets)
    assert len(s0) == len(t0) == 2 and len(set(t0.tolist())) == 2
    assert s1.numel() == t1.numel() == 0


def test_matcher_costs_equal_direct_computation_on_all_pixels():
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(Q, K + 1, generator=gen, dtype=torch.float64)
    pred = 2.0 * torch.randn(Q, H, W, generator=gen, dtype=torch.float64)
    low = torch.rand(4, H, W, generator=gen) > 0.5  # target at mask resolution
    labels = torch.tensor([2, 0, 0, 1])
    full = low.repeat_interleave(4, 1).repeat_interleave(4, 2)  # nearest 4x upsampling
    # points at the pixel centres of the H x W grid cover every mask pixel exactly once
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    coords = torch.stack([(xs + 0.5) / W, (ys + 0.5) / H], -1).reshape(-1, 2).double()

    m = HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=3.0, num_points=H * W)
    cost = m.cost_matrix(logits, pred, labels, full, coords)

    x = pred.flatten(1).float()  # [Q, HW]
    t = low.flatten(1).float()  # [N, HW]
    bce = torch.zeros(Q, 4)
    dice = torch.zeros(Q, 4)
    for q in range(Q):
        for n in range(4):
            bce[q, n] = F.binary_cross_entropy_with_logits(x[q], t[n])
            s = x[q].sigmoid()
            dice[q, n] = 1 - (2 * (s * t[n]).sum() + 1) / (s.sum() + t[n].sum() + 1)
    torch.testing.assert_close(batch_sigmoid_ce_cost(x, t), bce)
    torch.testing.assert_close(batch_dice_cost(x, t), dice)
    cls = -logits.float().softmax(-1)[:, labels]
    assert cost.dtype == torch.float32 and cost.shape == (Q, 4)
    torch.testing.assert_close(cost, 5.0 * bce + 2.0 * cls + 3.0 * dice)


# ------------------------------------------------------------------------- criterion


def test_perfect_prediction_gives_zero_mask_losses_and_hand_computed_ce():
    # Empty target masks keep every sampled target value exactly 0. (Any mask edge, including
    # the image border under grid_sample's zero padding, gives fractional bilinear targets,
    # so no binary-target prediction has a near-zero BCE there; upstream behaves the same.)
    eos, big, void_logit = 0.1, 60.0, 2.0
    empty = torch.zeros(4 * H, 4 * W, dtype=torch.bool)
    targets = [{"labels": torch.tensor([2, 0]), "masks": torch.stack([empty, empty]), "seed": 1},
               {"labels": torch.tensor([1]), "masks": empty[None], "seed": 2}]
    logits = torch.zeros(2, Q, K + 1)
    logits[..., K] = void_logit  # unmatched queries: moderately confident void
    masks = torch.full((2, Q, H, W), -big)
    for b, q, c in ((0, 4, 2), (0, 1, 0), (1, 3, 1)):  # huge correct class logits
        logits[b, q] = 0.0
        logits[b, q, c] = big
    crit = _criterion(no_object_weight=eos)
    outputs = {"pred_logits": logits, "pred_masks": masks}
    indices = crit.matcher(outputs, targets)
    assert [dict(zip(s.tolist(), t.tolist())) for s, t in indices] == [{4: 0, 1: 1}, {3: 0}]
    losses = crit(outputs, targets)
    assert losses["loss_mask"] < 1e-6 and losses["loss_dice"] < 1e-6

    matched, unmatched = 3, 2 * Q - 3
    void_nll = math.log(K + math.exp(void_logit)) - void_logit
    expected = eos * unmatched * void_nll / (eos * unmatched + matched)
    assert losses["loss_ce"].item() == pytest.approx(expected, rel=1e-5)


def test_mask_losses_equal_direct_computation_on_the_sampled_points():
    outputs, targets = _random_outputs(2, seed=13), _sample_targets()
    crit = _criterion()
    losses = crit(outputs, targets, num_masks=2.0)
    indices = crit.matcher(outputs, targets)
    bce, dice = 0.0, 0.0
    for b, (src, tgt) in enumerate(indices):
        pred = outputs["pred_masks"][b, src][:, None]
        coords = get_uncertain_point_coords_with_randomness(
            pred, calculate_uncertainty, POINTS, 3.0, 0.75,
            generator=seeded_generator(targets[b]["seed"], LOSS_STREAM, 0))
        x = point_sample(pred, coords)[:, 0]
        t = point_sample(targets[b]["masks"][tgt][:, None].float(), coords)[:, 0]
        for m in range(len(src)):
            per_point = [F.binary_cross_entropy_with_logits(x[m, i], t[m, i])
                         for i in range(POINTS)]
            bce += sum(per_point) / POINTS
            s = x[m].sigmoid()
            dice += 1 - (2 * (s * t[m]).sum() + 1) / (s.sum() + t[m].sum() + 1)
    torch.testing.assert_close(losses["loss_mask"], bce / 2.0)
    torch.testing.assert_close(losses["loss_dice"], dice / 2.0)
    # 3/4 of the points are importance sampled: the sampled logits are more uncertain than
    # uniform ones
    assert x.abs().mean() < outputs["pred_masks"].abs().mean()


def test_ce_with_eos_weighting_matches_hand_computation():
    outputs, targets = _random_outputs(2, seed=4), _sample_targets()
    crit = SetCriterion(K, HungarianMatcher(num_points=POINTS), {"loss_ce": 1.0}, eos_coef=0.25,
                        losses=("labels",))
    assert crit.empty_weight.tolist() == [1.0, 1.0, 1.0, 0.25]
    assert "empty_weight" in crit.state_dict()
    loss = crit(outputs, targets)["loss_ce"]
    indices = HungarianMatcher(num_points=POINTS)(outputs, targets)
    classes = torch.full((2, Q), K)
    for b, (s, t) in enumerate(indices):
        classes[b, s] = targets[b]["labels"][t]
    logp = outputs["pred_logits"].log_softmax(-1)
    w = crit.empty_weight[classes]
    nll = -logp.gather(-1, classes[..., None])[..., 0]
    torch.testing.assert_close(loss, (w * nll).sum() / w.sum())
    torch.testing.assert_close(loss, F.cross_entropy(outputs["pred_logits"].reshape(-1, K + 1),
                                                     classes.flatten(), weight=crit.empty_weight))


def test_aux_keys_and_weighted_total():
    crit = _criterion(num_aux=3)
    losses = crit(_random_outputs(2, seed=5, num_aux=3), _sample_targets())
    base = ["loss_ce", "loss_mask", "loss_dice"]
    assert set(losses) == set(base) | {f"{k}_{i}" for k in base for i in range(3)}
    assert len(losses) == 12 and set(crit.weight_dict) == set(losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    weights = {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}
    expected = sum(weights[k.rstrip("_0123456789")] * v for k, v in losses.items())
    torch.testing.assert_close(crit.weighted_total(losses), expected)
    # aux layers draw their own points: equal predictions, different samples
    same = _random_outputs(2, seed=5)
    same["aux_outputs"] = [{k: same[k] for k in ("pred_logits", "pred_masks")}]
    l2 = _criterion(num_aux=1)(same, _sample_targets())
    torch.testing.assert_close(l2["loss_ce"], l2["loss_ce_0"])
    assert l2["loss_mask"] != l2["loss_mask_0"]
    # without deep supervision aux losses carry no weight
    no_ds = build_criterion(K, num_points=POINTS, deep_supervision=False)
    assert set(no_ds.weight_dict) == set(base)
    torch.testing.assert_close(no_ds.weighted_total(losses),
                               sum(w * losses[k] for k, w in no_ds.weight_dict.items()))


def test_images_without_targets():
    crit = _criterion(num_aux=1)
    outputs = _random_outputs(2, seed=6, num_aux=1, requires_grad=True)
    empty = {"labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 4 * H, 4 * W, dtype=torch.bool), "seed": 3}
    # all empty: masks contribute nothing, CE is all-void, backward still works
    losses = crit(outputs, [empty, dict(empty, seed=4)])
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    expected_ce = F.cross_entropy(outputs["pred_logits"].detach().reshape(-1, K + 1),
                                  torch.full((2 * Q,), K))
    torch.testing.assert_close(losses["loss_ce"], expected_ce)
    crit.weighted_total(losses).backward()
    assert outputs["pred_masks"].grad is not None and not outputs["pred_masks"].grad.any()

    # mixed: the empty image contributes only void CE; the mask loss equals that of image 0
    outputs = _random_outputs(2, seed=6, num_aux=1)
    targets = _sample_targets()
    mixed = crit(outputs, [targets[0], empty], num_masks=3.0)
    alone = crit(_slice(outputs, 0), [targets[0]], num_masks=3.0)
    for k in ("loss_mask", "loss_dice", "loss_mask_0", "loss_dice_0"):
        torch.testing.assert_close(mixed[k], alone[k])
    assert crit.num_masks([targets[0], empty], "cpu") == 3.0
    assert crit.num_masks([empty], "cpu") == 1.0  # at least 1


def test_gradients_flow_to_logits_and_masks():
    crit = _criterion(num_aux=2)
    outputs = _random_outputs(2, seed=7, num_aux=2, requires_grad=True)
    crit.weighted_total(crit(outputs, _sample_targets())).backward()
    for out in [outputs, *outputs["aux_outputs"]]:
        for key in ("pred_logits", "pred_masks"):
            grad = out[key].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    # the mask losses alone reach pred_masks, not pred_logits
    outputs = _random_outputs(2, seed=7, requires_grad=True)
    losses = crit(outputs, _sample_targets())
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    assert outputs["pred_logits"].grad is None and outputs["pred_masks"].grad.abs().sum() > 0


def test_batched_equals_one_by_one_with_seeded_targets():
    crit = _criterion(num_aux=2)
    outputs, targets = _random_outputs(2, seed=8, num_aux=2), _sample_targets()
    num_masks = 4.0
    batched = crit(outputs, targets, num_masks=num_masks)
    single = [crit(_slice(outputs, b), [targets[b]], num_masks=num_masks) for b in range(2)]
    # the same matching per image
    for b in range(2):
        for s1, s2 in zip(crit.matcher(outputs, targets, stream=1)[b],
                          crit.matcher(_slice(outputs, b), [targets[b]], stream=1)[0]):
            assert torch.equal(s1, s2)
    for suffix in ("", "_0", "_1"):
        for k in ("loss_mask", "loss_dice"):
            torch.testing.assert_close(batched[k + suffix],
                                       single[0][k + suffix] + single[1][k + suffix])
        # CE is a weighted mean: combine the per-image means by their weight sums
        weights = [len(t["labels"]) + crit.eos_coef * (Q - len(t["labels"])) for t in targets]
        combined = sum(w * s["loss_ce" + suffix] for w, s in zip(weights, single)) / sum(weights)
        torch.testing.assert_close(batched["loss_ce" + suffix], combined)
    # another seed changes the sampled points (so the seed is really used)
    reseeded = [dict(t, seed=t["seed"] + 100) for t in targets]
    assert crit(outputs, reseeded, num_masks=num_masks)["loss_mask"] != batched["loss_mask"]


def test_default_criterion_runs_with_full_point_count():
    crit = build_criterion(K, num_aux=9)
    assert crit.num_points == crit.matcher.num_points == 12544
    outputs = _random_outputs(2, seed=9, num_aux=9)
    losses = crit(outputs, _sample_targets())
    assert len(losses) == 30 and torch.isfinite(crit.weighted_total(losses))


# --------------------------------------------------------------- torch.distributed


def _ddp_inputs():
    outputs = _random_outputs(2, seed=10, requires_grad=True)
    return outputs, _sample_targets()


def _ddp_worker(rank: int, world: int, store_file: str, result_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank,
                            world_size=world)
    try:
        outputs, targets = _ddp_inputs()
        mine = {k: v[rank:rank + 1].detach().requires_grad_(True) for k, v in outputs.items()}
        crit = _criterion()
        losses = crit(mine, [targets[rank]])
        total = losses["loss_mask"] + losses["loss_dice"]
        total.backward()
        torch.save({"num_masks": crit.num_masks([targets[rank]], "cpu"),
                    "loss_mask": losses["loss_mask"].detach(),
                    "loss_dice": losses["loss_dice"].detach(),
                    "grad": mine["pred_masks"].grad},
                   Path(result_dir) / f"rank{rank}.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_num_masks_averaged_over_processes_matches_single_process(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "store"), str(tmp_path)), nprocs=world,
             join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    outputs, targets = _ddp_inputs()
    crit = _criterion()
    single = crit(outputs, targets)
    (single["loss_mask"] + single["loss_dice"]).backward()

    assert crit.num_masks(targets, "cpu") == 5.0
    assert [r["num_masks"] for r in ranks] == [2.5, 2.5]  # (3 + 2) / 2 on every rank
    # DDP averages over processes: mean of per-rank losses / gradients = single process
    for k in ("loss_mask", "loss_dice"):
        torch.testing.assert_close(sum(r[k] for r in ranks) / world, single[k])
    for b in range(world):
        torch.testing.assert_close(ranks[b]["grad"][0] / world, outputs["pred_masks"].grad[b])
