"""Tests of the ContMAV losses (vocabseg.openworld.losses): every loss against a hand
computation on tiny tensors, the per-epoch MAV accumulation, InfoNCE / SynCo, and one
test per public-code bug that must not be reproduced (reference notes §2.3, §2.5,
§10-§11): the ``.view`` instead of a transpose, dividing by the variance instead of
the standard deviation, skipping the last label, booleans parsed from strings."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F

from vocabseg.errors import InputError
from vocabseg.openworld.losses import (
    ContMAVCriterion,
    ContMAVLossConfig,
    MAVAccumulator,
    MAVs,
    SynCoConfig,
    adversarial_negatives,
    class_mean_features,
    dice_loss,
    extrapolate_negatives,
    focal_loss,
    gradient_negatives,
    infonce_from_logits,
    interpolate_negatives,
    known_unknown_infonce,
    label_histogram,
    mav_contrastive_loss,
    mav_feature_loss,
    median_frequency_weights,
    mixup_negatives,
    noise_negatives,
    objectosphere_loss,
    synthesize_hard_negatives,
    weighted_cross_entropy,
)
from vocabseg.openworld.model import parse_bool

LN2 = math.log(2.0)


def _pixels(vectors: list[list[float]]) -> torch.Tensor:
    """[1, D, 1, P] feature map from P per-pixel vectors."""
    return torch.tensor(vectors, dtype=torch.float64).t()[None, :, None, :]


def _labels(values: list[int]) -> torch.Tensor:
    """[1, 1, P] label map."""
    return torch.tensor(values, dtype=torch.long)[None, None, :]


# three pixels: logits (0, 0) with label 0 (p_t = 1/2), (ln 3, 0) with label 1
# (p_t = 1/4), and a void pixel with extreme logits that must not count.
CE_LOGITS = _pixels([[0.0, 0.0], [math.log(3.0), 0.0], [50.0, -50.0]])
CE_LABELS = _labels([0, 1, 255])


# ----------------------------------------------------------------- class weights
def test_median_frequency_weights_by_hand():
    img1 = torch.tensor([[0, 0], [1, 255]])
    img2 = torch.tensor([[1, 1], [2, 2]])
    counts, image_pixels = label_histogram([img1, img2[None]], num_classes=4)
    assert counts.tolist() == [2, 3, 2, 0]
    assert image_pixels.tolist() == [4, 8, 4, 0]  # class 1 is in both 4-pixel images
    # freq = 2/4, 3/8, 2/4; median 0.5; class 3 never occurs -> 0
    weights = median_frequency_weights(counts, image_pixels)
    assert torch.allclose(weights, torch.tensor([1.0, 0.5 / 0.375, 1.0, 0.0]))


def test_median_frequency_even_number_of_classes_uses_middle_mean():
    weights = median_frequency_weights(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0] * 4))
    median = 0.25  # mean of 0.2 and 0.3
    assert torch.allclose(weights, torch.tensor([median / 0.1, median / 0.2, median / 0.3, median / 0.4]))


# ----------------------------------------------------------------- semantic losses
def test_weighted_cross_entropy_by_hand():
    loss = weighted_cross_entropy(CE_LOGITS, CE_LABELS, torch.tensor([1.0, 3.0]))
    # (1 * ln 2 + 3 * ln 4) / (1 + 3)
    assert loss.item() == pytest.approx(7 * LN2 / 4)
    assert weighted_cross_entropy(CE_LOGITS, CE_LABELS).item() == pytest.approx((LN2 + 2 * LN2) / 2)


def test_focal_loss_by_hand():
    loss = focal_loss(CE_LOGITS, CE_LABELS, alpha=torch.tensor([1.0, 3.0]), gamma=2.0)
    # mean of 1 * (1/2)^2 * ln 2 and 3 * (3/4)^2 * ln 4
    assert loss.item() == pytest.approx((0.25 * LN2 + 3 * 0.5625 * 2 * LN2) / 2)
    plain = focal_loss(CE_LOGITS, CE_LABELS, alpha=None, gamma=0.0)
    assert plain.item() == pytest.approx(F.cross_entropy(CE_LOGITS, CE_LABELS, ignore_index=255).item())


def test_dice_loss_by_hand_ignores_void_pixels():
    loss = dice_loss(CE_LOGITS, CE_LABELS, smooth=1.0, exponent=2)
    # p = (.5, .5) with label 0, (.75, .25) with label 1; the void pixel counts nowhere
    d0 = 1 - (2 * 0.5 + 1) / (0.25 + 0.5625 + 1 + 1)
    d1 = 1 - (2 * 0.25 + 1) / (0.25 + 0.0625 + 1 + 1)
    assert loss.item() == pytest.approx((d0 + d1) / 2)


# ----------------------------------------------------------------- MAV accumulation
def _direct_stats(feats: list[torch.Tensor], labels: list[torch.Tensor], k: int):
    """Mean and population variance of the true-positive pixels of class k, directly."""
    rows = []
    for f, y in zip(feats, labels):
        tp = (f.argmax(1) == y) & (y == k)
        rows.append(f.permute(0, 2, 3, 1)[tp])
    x = torch.cat(rows).double()
    return x.mean(0), x.var(0, unbiased=False), x.shape[0]


def test_mav_accumulator_two_epochs_match_direct_computation():
    torch.manual_seed(0)
    k, shape = 4, (2, 4, 6, 6)
    acc = MAVAccumulator(k)
    assert not acc.current.valid.any()

    # epoch 1: two batches; class 3 never labelled
    ep1_f = [torch.randn(shape) * 2 for _ in range(2)]
    ep1_y = [torch.randint(0, 3, shape[:1] + shape[2:]) for _ in range(2)]
    ep1_y[0][:, 0] = 255
    for f, y in zip(ep1_f, ep1_y):
        f.requires_grad_(True)
        acc.update(f, y)
    m1 = acc.finalize()
    assert m1.valid.tolist() == [True, True, True, False]
    for c in range(3):
        mean, var, _ = _direct_stats([f.detach() for f in ep1_f], ep1_y, c)
        assert torch.allclose(m1.means[c].double(), mean, atol=1e-5)
        assert torch.allclose(m1.variances[c].double(), var, atol=1e-5)
    assert acc.count.sum() == 0  # sums reset
    epoch1_class2 = (m1.means[2].clone(), m1.variances[2].clone())

    # epoch 2: new data; class 2 has no pixels -> keeps epoch 1; class 3 appears
    ep2_f = [torch.randn(shape) + 1 for _ in range(2)]
    ep2_y = [torch.randint(0, 4, shape[:1] + shape[2:]) for _ in range(2)]
    for y in ep2_y:
        y[y == 2] = 0
    for f, y in zip(ep2_f, ep2_y):
        acc.update(f, y)
    m2 = acc.finalize()
    assert m2.valid.tolist() == [True, True, True, True]
    for c in (0, 1, 3):  # only epoch-2 pixels count
        mean, var, _ = _direct_stats(ep2_f, ep2_y, c)
        assert torch.allclose(m2.means[c].double(), mean, atol=1e-5)
        assert torch.allclose(m2.variances[c].double(), var, atol=1e-5)
    assert torch.equal(m2.means[2], epoch1_class2[0]) and torch.equal(m2.variances[2], epoch1_class2[1])
    assert int(acc.epochs) == 2


def test_mav_accumulator_uses_given_predictions_and_the_highest_label():
    # 3 pixels of class 1 (the highest label present, no void): the public code would
    # skip the last unique label; here it gets a MAV.
    feats = _pixels([[0.0, 1.0], [0.0, 3.0], [5.0, 0.0]]).float()
    labels = _labels([1, 1, 1])
    preds = _labels([1, 1, 0])  # third pixel is not a true positive
    acc = MAVAccumulator(2)
    acc.update(feats, labels, preds)
    mavs = acc.finalize()
    assert mavs.valid.tolist() == [False, True]
    assert mavs.means[1].tolist() == [0.0, 2.0]
    assert mavs.variances[1].tolist() == [0.0, 1.0]


def test_mav_accumulator_state_dict_is_plain_tensors_and_round_trips():
    torch.manual_seed(1)
    acc = MAVAccumulator(3)
    f, y = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    acc.update(f, y)
    acc.finalize()
    acc.update(f * 2, y)  # a half-finished epoch
    buffer = io.BytesIO()
    torch.save(acc.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    other = MAVAccumulator(3)
    other.load_state_dict(state)
    a, b = acc.finalize(), other.finalize()
    assert torch.equal(a.means, b.means) and torch.equal(a.variances, b.variances) and torch.equal(a.valid, b.valid)
    with pytest.raises(InputError, match="ckpt.pt: 'count' has shape"):
        MAVAccumulator(4).load_state_dict(state, source="ckpt.pt")


# ----------------------------------------------------------------- feature loss
FEAT_MAVS = MAVs(
    means=torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64),
    variances=torch.tensor([[4.0, 4.0], [1.0, 1.0]], dtype=torch.float64),
    valid=torch.tensor([True, True]),
)


def test_feature_loss_by_hand_divides_by_standard_deviation():
    feats = _pixels([[2.0, 0.0], [1.0, 4.0], [9.0, 9.0]])
    labels = _labels([0, 1, 255])
    loss = mav_feature_loss(feats, labels, FEAT_MAVS, eps=0.0)
    # ||(2, 0) / 2|| = 1 and ||(0, 3) / 1|| = 3; the void pixel is ignored
    assert loss.item() == pytest.approx(2.0)


def test_bug_variance_instead_of_standard_deviation_not_reproduced():
    # the public code divides by sigma^2: class 0 would give ||(2, 0) / 4|| = 0.5
    feats, labels = _pixels([[2.0, 0.0]]), _labels([0])
    assert mav_feature_loss(feats, labels, FEAT_MAVS, eps=0.0).item() == pytest.approx(1.0)


def test_bug_skipping_last_label_not_reproduced_in_feature_loss():
    # no void pixel in the batch: the public code drops the last unique label (1),
    # which would leave 1.0 (class 0 alone); both classes count here.
    feats, labels = _pixels([[2.0, 0.0], [1.0, 4.0]]), _labels([0, 1])
    assert mav_feature_loss(feats, labels, FEAT_MAVS, eps=0.0).item() == pytest.approx(2.0)


def test_feature_loss_skips_classes_without_mav_and_is_zero_in_epoch_zero():
    mavs = MAVs(FEAT_MAVS.means, FEAT_MAVS.variances, torch.tensor([True, False]))
    feats = _pixels([[2.0, 0.0], [1.0, 4.0]]).requires_grad_(True)
    assert mav_feature_loss(feats, _labels([0, 1]), mavs, eps=0.0).item() == pytest.approx(1.0)
    none = MAVAccumulator(2).current
    zero = mav_feature_loss(feats, _labels([0, 1]), none)
    zero.backward()
    assert zero.item() == 0.0 and feats.grad is not None


# ----------------------------------------------------------------- contrastive loss
CONT_MAVS = MAVs(
    means=torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64),
    variances=torch.ones(2, 2, dtype=torch.float64),
    valid=torch.tensor([True, True]),
)


def test_class_mean_features_rows_are_per_class_means():
    torch.manual_seed(2)
    feats = torch.randn(2, 3, 4, 4)
    labels = torch.randint(0, 3, (2, 4, 4))
    labels[1][labels[1] == 1] = 255  # class 1 absent from image 1
    means, classes, images = class_mean_features(feats, labels, normalize=True)
    expected = []
    for b in range(2):
        for c in range(3):
            sel = labels[b] == c
            if sel.any():
                expected.append((b, c, F.normalize(feats[b].permute(1, 2, 0)[sel], dim=1).mean(0)))
    assert [(int(i), int(c)) for i, c in zip(images, classes)] == [(b, c) for b, c, _ in expected]
    assert torch.allclose(means, torch.stack([m for _, _, m in expected]), atol=1e-6)


def test_contrastive_loss_by_hand():
    # class 0 pixels (1, 0), (0, 1) -> mean of unit vectors (0.5, 0.5); class 1 (0, 5) -> (0, 1)
    feats = _pixels([[1.0, 0.0], [0.0, 1.0], [0.0, 5.0], [7.0, 7.0]])
    labels = _labels([0, 0, 1, 255])
    loss = mav_contrastive_loss(feats, labels, CONT_MAVS, tau=0.1)
    # normalised MAVs e0, e1: anchor 0 logits (5, 5) -> ln 2; anchor 1 logits (0, 10), target 1
    expected = (LN2 + math.log1p(math.exp(-10.0))) / 2
    assert loss.item() == pytest.approx(expected)


def test_bug_view_instead_of_transpose_not_reproduced():
    feats = _pixels([[1.0, 0.0], [0.0, 1.0], [0.0, 5.0]])
    labels = _labels([0, 0, 1])
    loss = mav_contrastive_loss(feats, labels, CONT_MAVS, tau=0.1).item()
    # public code: per-class means as a (D, N_present) tensor, then .view(-1, K)
    per_class_cols = torch.tensor([[0.5, 0.0], [0.5, 1.0]], dtype=torch.float64)  # column n = class n
    viewed = per_class_cols.reshape(-1, 2)  # rows no longer the class means
    keys = F.normalize(CONT_MAVS.means, dim=1)
    buggy = F.cross_entropy(viewed @ keys.t() / 0.1, torch.tensor([0, 1])).item()
    transposed = F.cross_entropy(per_class_cols.t() @ keys.t() / 0.1, torch.tensor([0, 1])).item()
    assert buggy != pytest.approx(transposed)  # the test tells both apart
    assert loss == pytest.approx(transposed)


def test_bug_skipping_last_label_not_reproduced_in_contrastive_loss():
    feats = _pixels([[1.0, 0.0], [3.0, 3.0]])
    both = mav_contrastive_loss(feats, _labels([0, 1]), CONT_MAVS, tau=0.1).item()
    # anchor (1, 0): logits (10, 0), target 0; anchor (1, 1)/sqrt 2: equal logits -> ln 2.
    # Skipping the last label (1) would leave log(1 + e^-10) alone.
    assert both == pytest.approx((math.log1p(math.exp(-10.0)) + LN2) / 2)
    # a class whose MAV is not valid is neither an anchor nor a candidate
    partial = MAVs(CONT_MAVS.means, CONT_MAVS.variances, torch.tensor([True, False]))
    assert mav_contrastive_loss(feats, _labels([0, 1]), partial).item() == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------- objectosphere
def test_objectosphere_by_hand_uses_squared_norm():
    feats = _pixels([[0.6, 0.0], [1.0, 1.0], [0.5, 0.5], [3.0, 3.0]])
    labels = _labels([0, 1, 255, 7])  # label 7 is neither known (K = 2) nor void
    loss = objectosphere_loss(feats, labels, xi=1.0)
    # known: max(1 - 0.36, 0) = 0.64 and max(1 - 2, 0) = 0 -> 0.32; unknown: 0.5
    assert loss.item() == pytest.approx(0.82)
    assert objectosphere_loss(feats, labels, unknown_weight=10.0).item() == pytest.approx(0.32 + 5.0)


# ----------------------------------------------------------------- criterion
def test_criterion_weights_and_epoch_zero():
    torch.manual_seed(3)
    k = 3
    sem = torch.randn(2, k, 4, 4, requires_grad=True)
    con = torch.randn(2, k, 4, 4, requires_grad=True)
    labels = torch.randint(0, k, (2, 4, 4))
    labels[0, 0] = 255
    weights = torch.tensor([0.5, 1.0, 2.0])
    crit = ContMAVCriterion(k, ContMAVLossConfig(), class_weights=weights)
    outputs = {"semantic": sem, "contrastive": con}

    first = crit(outputs, labels, None)
    assert set(first) == {"loss_ce", "loss_obj"}  # no MAVs yet
    acc = MAVAccumulator(k)
    acc.update(sem, labels)
    mavs = acc.finalize()
    losses = crit(outputs, labels, mavs)
    assert set(losses) == {"loss_ce", "loss_feat", "loss_cont", "loss_obj"}
    expected = (0.9 * weighted_cross_entropy(sem, labels, weights)
                + 0.1 * mav_feature_loss(sem, labels, mavs)
                + 0.5 * mav_contrastive_loss(con, labels, mavs, 0.1)
                + 0.5 * objectosphere_loss(con, labels, 1.0))
    total = crit.weighted_total(losses)
    assert total.item() == pytest.approx(expected.item())
    total.backward()
    assert sem.grad.abs().sum() > 0 and con.grad.abs().sum() > 0

    focal = ContMAVCriterion(k, ContMAVLossConfig(semantic="focal_dice"), class_weights=weights)
    out = focal(outputs, labels, mavs)
    assert focal.weight_dict["loss_focal"] == 0.9 and focal.weight_dict["loss_dice"] == 0.5
    assert out["loss_focal"].item() == pytest.approx(focal_loss(sem, labels, weights, 2.0).item())
    assert out["loss_dice"].item() == pytest.approx(dice_loss(sem, labels).item())


def test_bug_booleans_from_strings_not_reproduced():
    assert parse_bool("False", "k") is False and parse_bool(" no ", "k") is False and parse_bool(0, "k") is False
    assert parse_bool("True", "k") is True and parse_bool("on", "k") is True and parse_bool(True, "k") is True
    for bad in ("maybe", "", None, 2, "Fals"):
        with pytest.raises(InputError, match="'k'|k:"):
            parse_bool(bad, "k")
    cfg = ContMAVLossConfig.from_dict({"feature": "False", "contrastive": "false", "objectosphere": "0"})
    assert (cfg.feature, cfg.contrastive, cfg.objectosphere) == (False, False, False)
    assert set(ContMAVCriterion(3, cfg).weight_dict) == {"loss_ce"}
    with pytest.raises(InputError, match="loss.yaml: objectosphere"):
        ContMAVLossConfig.from_dict({"objectosphere": "maybe"}, source="loss.yaml")
    with pytest.raises(InputError, match="unknown key"):
        ContMAVLossConfig.from_dict({"mav": True})


# ----------------------------------------------------------------- InfoNCE
def test_infonce_from_logits_multi_positive_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    pos = torch.tensor([[True, True, False]])
    neg = torch.tensor([[False, False, True]])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
    assert infonce_from_logits(logits, pos, neg).item() == pytest.approx(expected)
    extra = torch.tensor([[1.0]])
    expected = (math.log(1 + math.exp(-2) + math.exp(-1)) + math.log(1 + math.exp(-1) + 1)) / 2
    assert infonce_from_logits(logits, pos, neg, extra).item() == pytest.approx(expected)


K1, K2 = [1.0, 0.0], [0.6, 0.8]
U1, U2 = [0.0, 1.0], [-1.0, 0.0]


def test_known_unknown_infonce_by_hand():
    known = torch.tensor([K1, K2], requires_grad=True)
    unknown = torch.tensor([U1, U2])
    loss = known_unknown_infonce(known, unknown, tau=0.5)
    # known anchors: positive = the other known crop, negatives = unknown crops
    k1 = math.log(1 + math.exp(-1.2) + math.exp(-3.2))  # l+ = 1.2, l- = 0, -2
    k2 = math.log(1 + math.exp(0.4) + math.exp(-2.4))  # l+ = 1.2, l- = 1.6, -1.2
    # unknown anchors: positive = the other unknown crop (l+ = 0), negatives = known crops
    u1 = math.log(1 + math.exp(0.0) + math.exp(1.6))
    u2 = math.log(1 + math.exp(-2.0) + math.exp(-1.2))
    assert loss.item() == pytest.approx((k1 + k2 + u1 + u2) / 4)
    loss.backward()
    assert torch.isfinite(known.grad).all()
    only_known = known_unknown_infonce(known, unknown, tau=0.5, anchors="known")
    assert only_known.item() == pytest.approx((k1 + k2) / 2)


def test_known_unknown_infonce_labels_define_positives():
    # k3 has another label: it is neither a positive nor a negative of k1 / k2, and has no positive
    known = torch.tensor([K1, K2, [0.0, -1.0]])
    unknown = torch.tensor([U1])
    loss = known_unknown_infonce(known, unknown, torch.tensor([0, 0, 1]), tau=0.5, anchors="known")
    expected = (math.log1p(math.exp(-1.2)) + math.log1p(math.exp(0.4))) / 2
    assert loss.item() == pytest.approx(expected)
    # without any unknown crop there is no negative and nothing to separate
    assert known_unknown_infonce(known[:2], unknown[:0], tau=0.5).item() == 0.0


# ----------------------------------------------------------------- SynCo
def _unit(v: list[float]) -> torch.Tensor:
    return F.normalize(torch.tensor(v), dim=0)


def test_synco_types_by_hand():
    q = torch.tensor([[1.0, 0.0]])
    n = torch.tensor([[[0.0, 1.0]]])
    one = torch.tensor([[0.25]])
    assert torch.allclose(interpolate_negatives(q, n, one)[0, 0], _unit([0.25, 0.75]))
    assert torch.allclose(extrapolate_negatives(q, n, torch.tensor([[1.5]]))[0, 0], _unit([-0.5, 1.5]))
    assert torch.allclose(mixup_negatives(q[:, None], n, torch.tensor([[0.5]]))[0, 0], _unit([1.0, 1.0]))
    assert torch.allclose(noise_negatives(q[:, None], torch.tensor([[[0.0, 1.0]]]))[0, 0], _unit([1.0, 1.0]))
    assert torch.allclose(gradient_negatives(torch.tensor([[0.0, 1.0]]), q[:, None], 1.0)[0, 0], _unit([1.0, 1.0]))
    adv = adversarial_negatives(torch.tensor([[0.3, -2.0]]), q[:, None], 0.5)[0, 0]
    assert torch.allclose(adv, _unit([1.5, -0.5]))


def test_synthesize_hard_negatives_pool_shape_and_determinism():
    anchors = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    pool = torch.tensor([[0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 0.0, 0.9]])
    # mixup of the single hardest entry with itself is that entry: the hard pool is right
    cfg = SynCoConfig(n_hard=1, n_interpolation=0, n_extrapolation=0, n_mixup=3, n_noise=0, n_gradient=0,
                      n_adversarial=0)
    out = synthesize_hard_negatives(anchors, pool, cfg)
    assert out.shape == (2, 3, 3) and not out.requires_grad
    assert torch.allclose(out[0], F.normalize(pool[0], dim=0).expand(3, 3))
    assert torch.allclose(out[1], F.normalize(pool[2], dim=0).expand(3, 3))

    full = SynCoConfig(n_hard=2)
    a = synthesize_hard_negatives(anchors, pool, full, torch.Generator().manual_seed(5))
    b = synthesize_hard_negatives(anchors, pool, full, torch.Generator().manual_seed(5))
    assert a.shape == (2, 16 + 16 + 16 + 4 + 4 + 4, 3) and torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2, 60))
    # interpolations lie between the anchor and its hardest entry, closer to the anchor
    interp_only = SynCoConfig(n_hard=1, n_interpolation=8, n_extrapolation=0, n_mixup=0, n_noise=0,
                              n_gradient=0, n_adversarial=0)
    interp = synthesize_hard_negatives(anchors, pool, interp_only)[0]
    q, p0 = torch.tensor([1.0, 0.0, 0.0]), F.normalize(pool[0], dim=0)
    assert (interp[:, 2].abs() < 1e-6).all() and (interp[:, 1] > 0).all()
    assert (interp @ q >= p0 @ q - 1e-6).all()
    assert synthesize_hard_negatives(anchors, pool[:0], full).shape == (2, 0, 3)


@pytest.mark.parametrize("direction", ["known_to_unknown", "unknown_to_known", "both"])
def test_synco_directions_add_negatives_to_the_right_anchors(direction):
    known = torch.tensor([K1, K2])
    unknown = torch.tensor([U1, U2])
    # n_hard = 1 and mixup only: each synthetic negative equals the anchor's most similar source crop
    cfg = SynCoConfig(direction=direction, n_hard=1, n_interpolation=0, n_extrapolation=0, n_mixup=2,
                      n_noise=0, n_gradient=0, n_adversarial=0)
    loss = known_unknown_infonce(known, unknown, tau=0.5, synco=cfg)
    e = math.exp
    k_extra = direction in ("unknown_to_known", "both")
    u_extra = direction in ("known_to_unknown", "both")
    # hardest unknown: U1 for K1 (l = 0) and for K2 (l = 1.6); hardest known: K2 for U1 (l = 1.6) and for U2 (l = -1.2)
    k1 = math.log(1 + e(-1.2) + e(-3.2) + (2 * e(0 - 1.2) if k_extra else 0))
    k2 = math.log(1 + e(0.4) + e(-2.4) + (2 * e(1.6 - 1.2) if k_extra else 0))
    u1 = math.log(1 + e(0.0) + e(1.6) + (2 * e(1.6) if u_extra else 0))
    u2 = math.log(1 + e(-2.0) + e(-1.2) + (2 * e(-1.2) if u_extra else 0))
    assert loss.item() == pytest.approx((k1 + k2 + u1 + u2) / 4, rel=1e-5)
    blocked = "known" if direction == "known_to_unknown" else "unknown"
    with pytest.raises(ValueError, match="anchors"):
        known_unknown_infonce(known, unknown, synco=cfg, anchors=blocked)


def test_synco_config_from_dict_checks_types():
    cfg = SynCoConfig.from_dict({"direction": "both", "n_mixup": "8", "noise_std": 0.1})
    assert (cfg.direction, cfg.n_mixup, cfg.noise_std) == ("both", 8, 0.1)
    with pytest.raises(InputError, match="direction"):
        SynCoConfig.from_dict({"direction": "sideways"})
    with pytest.raises(InputError, match="beta_min"):
        SynCoConfig.from_dict({"beta_min": 2.0, "beta_max": 1.0})
