"""ContMAV inference scoring against hand computations ([P] Eq. 11–14, §3.3)."""

from __future__ import annotations

import math

import pytest
import torch

from vocabseg.openworld.inference import (
    DELTA,
    ETA,
    VAR_EPS,
    ClusterState,
    MavStats,
    cluster_unknown,
    contmav_scores,
    discover_classes,
    fuse_unknown_scores,
    load_mav_stats,
    mahalanobis_sq,
    norm_unknown_score,
    open_world_labels,
    save_mav_stats,
    semantic_unknown_score,
    unknown_mask,
)
from vocabseg.errors import InputError


def pixels(*vectors: tuple[float, ...]) -> torch.Tensor:
    """[1, K, 1, N] float64 features from N K-vectors."""
    return torch.tensor(vectors, dtype=torch.float64).T.reshape(1, len(vectors[0]), 1, len(vectors))


def two_class_stats(counts=(1, 1)) -> MavStats:
    # μ_0 = (0, 0), σ²_0 = (1, 4);  μ_1 = (1, 3), σ²_1 = (0.5, 2)
    return MavStats(
        torch.tensor([[0.0, 0.0], [1.0, 3.0]]),
        torch.tensor([[1.0, 4.0], [0.5, 2.0]]),
        torch.tensor(counts, dtype=torch.int64),
    )


# ---------------------------------------------------------------- Gaussian score
def test_mahalanobis_and_gaussian_score_by_hand():
    stats = two_class_stats()
    # p0 = (1, 2):  d²_0 = 1 + 4/4 = 2,        d²_1 = 0 + 1/2 = 0.5
    # p1 = (2, 1):  d²_0 = 4 + 1/4 = 4.25,     d²_1 = 1/0.5 + 4/2 = 4   (argmax f = class 0)
    f = pixels((1.0, 2.0), (2.0, 1.0))
    d2 = mahalanobis_sq(f, stats)
    expected = torch.tensor([[2.0, 4.25], [0.5, 4.0]], dtype=torch.float64)
    assert torch.allclose(d2[0, :, 0], expected, rtol=1e-7)

    s_sem, similar = semantic_unknown_score(f, stats)  # s = max_k exp(-d²_k / 2)
    assert s_sem[0, 0].tolist() == pytest.approx([1 - math.exp(-0.25), 1 - math.exp(-2.0)], rel=1e-7)
    assert similar[0, 0].tolist() == [1, 1]

    s_pred, similar_pred = semantic_unknown_score(f, stats, reduce="predicted")  # class argmax f
    assert s_pred[0, 0].tolist() == pytest.approx([1 - math.exp(-0.25), 1 - math.exp(-2.125)], rel=1e-7)
    assert similar_pred[0, 0].tolist() == [1, 1]  # k̃ is always the Gaussian argmax
    with pytest.raises(ValueError):
        semantic_unknown_score(f, stats, reduce="mean")


def test_variance_epsilon_is_added_not_a_std():
    stats = MavStats(torch.zeros(1, 2), torch.tensor([[0.0, 0.25]]), torch.ones(1, dtype=torch.int64))
    d2 = mahalanobis_sq(pixels((1e-4, 1.0)), stats)
    # divides by the variance (0.25), not by its square root; 1e-8 keeps a zero variance finite
    assert d2.item() == pytest.approx(1e-8 / (0.0 + VAR_EPS) + 1.0 / (0.25 + VAR_EPS), rel=1e-9)


def test_mahalanobis_matches_broadcast_formula_on_random_data():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 5, 3, 4, generator=g, dtype=torch.float64)
    mavs = torch.randn(4, 5, generator=g, dtype=torch.float64)
    var = torch.rand(4, 5, generator=g, dtype=torch.float64) + 0.1
    stats = MavStats.from_tensors(mavs, var)
    direct = (
        (f[:, None] - stats.mavs.double()[None, :, :, None, None]) ** 2
        / (stats.variances.double()[None, :, :, None, None] + VAR_EPS)
    ).sum(dim=2)
    assert torch.allclose(mahalanobis_sq(f, stats), direct, rtol=1e-12)
    s_sem, similar = semantic_unknown_score(f, stats)
    scores = torch.exp(-0.5 * direct)  # s_k [B, C, H, W]
    assert torch.allclose(s_sem, 1 - scores.max(dim=1).values, rtol=1e-12)
    assert torch.equal(similar, scores.argmax(dim=1))


def test_unseen_classes_are_excluded_and_underflow_keeps_the_nearest_class():
    f = pixels((1.0, 2.0))
    s_sem, similar = semantic_unknown_score(f, two_class_stats(counts=(1, 0)))
    assert s_sem.item() == pytest.approx(1 - math.exp(-1.0)) and similar.item() == 0
    s_sem, similar = semantic_unknown_score(f, two_class_stats(counts=(0, 0)))
    assert s_sem.item() == 1.0 and similar.item() == 0
    # far from both MAVs: every s_k underflows to 0 in float32, k̃ is still the nearest MAV
    stats = MavStats.from_tensors(torch.tensor([[0.0, 0.0], [100.0, 100.0]]), torch.ones(2, 2))
    s_sem, similar = semantic_unknown_score(pixels((1000.0, 1000.0)).float(), stats)
    assert s_sem.item() == 1.0 and similar.item() == 1


# ---------------------------------------------------------------- norm, fusion, threshold
def test_norm_score_by_hand():
    f = pixels((0.6, 0.0), (1.0, 1.0), (0.3, 0.4), (0.0, 0.0))
    assert norm_unknown_score(f)[0, 0].tolist() == pytest.approx([0.64, 0.0, 0.75, 1.0])
    assert norm_unknown_score(f, squared=False)[0, 0].tolist() == pytest.approx([0.4, 0.0, 0.5, 1.0])
    assert norm_unknown_score(pixels((1.0, 0.0)), xi=2.0).item() == pytest.approx(0.5)


def test_fusion_and_strict_threshold():
    s_sem = torch.tensor([0.5, 0.5, 1.0, 0.0])
    s_cont = torch.tensor([0.7, 0.71, 0.3, 1.0])
    s_unk = fuse_unknown_scores(s_sem, s_cont)
    assert s_unk.tolist() == pytest.approx([0.6, 0.605, 0.65, 0.5])
    assert DELTA == 0.6
    assert unknown_mask(torch.tensor([0.6, 0.6000001, 0.59]), DELTA).tolist() == [False, True, False]


def test_contmav_scores_combine_the_parts():
    stats = two_class_stats()
    sem = pixels((1.0, 2.0), (2.0, 1.0), (50.0, -40.0))
    cont = pixels((1.0, 0.0), (0.1, 0.0), (0.0, 0.0))
    out = contmav_scores(sem, cont, stats)
    s1 = 1 - math.exp(-0.25)
    s2 = 1 - math.exp(-2.0)
    expected = [0.5 * (s1 + 0.0), 0.5 * (s2 + 0.99), 0.5 * (1.0 + 1.0)]
    assert out.s_unk[0, 0].tolist() == pytest.approx(expected, rel=1e-6)
    assert out.unknown[0, 0].tolist() == [False, True, True]  # 0.11, 0.927, 1.0 vs δ = 0.6
    assert out.semantic_pred[0, 0].tolist() == [1, 0, 0]
    assert out.similar[0, 0].tolist() == [1, 1, 0]


# ---------------------------------------------------------------- clustering
def test_leader_clustering_by_hand():
    assert ETA == 0.5
    x = torch.tensor([[0.0, 0.0], [0.3, 0.0], [1.0, 0.0], [0.6, 0.0], [0.4, 0.0]])
    labels, state = cluster_unknown(x)
    # (0.3,0): d² 0.09 < 0.25 -> class 0, c_0 = (0.15, 0); (1,0): d² 0.7225 -> new class 1;
    # (0.6,0): d² 0.2025 to c_0, 0.16 to c_1 -> class 1, c_1 = (0.8, 0);
    # (0.4,0): d² 0.0625 to c_0 -> class 0, c_0 = 0.15 + (0.4 - 0.15)/3
    assert labels.tolist() == [0, 0, 1, 1, 0]
    assert state.counts.tolist() == [3, 2]
    assert torch.allclose(state.centroids, torch.tensor([[0.7 / 3, 0.0], [0.8, 0.0]], dtype=torch.float64))


def test_clustering_threshold_is_strict_and_ties_go_to_the_lowest_class():
    assert cluster_unknown(torch.tensor([[0.0], [0.5]]))[1].n_classes == 2  # distance 0.5: not < η
    assert cluster_unknown(torch.tensor([[0.0], [0.49]]))[1].n_classes == 1
    state = ClusterState(torch.tensor([[0.0, 0.0], [0.8, 0.0]], dtype=torch.float64), torch.tensor([1, 1]))
    labels, new = cluster_unknown(torch.tensor([[0.4, 0.0]], dtype=torch.float64), state)  # d² 0.16 to both
    assert labels.tolist() == [0] and new.counts.tolist() == [2, 1]
    assert state.counts.tolist() == [1, 1]  # the input state is not modified


def test_clustering_is_deterministic_and_streams_over_images():
    g = torch.Generator().manual_seed(3)
    centres = torch.randn(6, 4, generator=g) * 3
    x = centres[torch.randint(0, 6, (400,), generator=g)] + 0.05 * torch.randn(400, 4, generator=g)
    labels, state = cluster_unknown(x)
    labels2, state2 = cluster_unknown(x)
    assert torch.equal(labels, labels2) and torch.equal(state.centroids, state2.centroids)
    assert state.n_classes == 6 and int(state.counts.sum()) == 400
    first, mid = cluster_unknown(x[:150])
    second, end = cluster_unknown(x[150:], mid)
    assert torch.equal(torch.cat([first, second]), labels)
    assert torch.equal(end.centroids, state.centroids) and torch.equal(end.counts, state.counts)


def test_open_world_labels_and_discovery_in_raster_order():
    pred = torch.tensor([[[0, 1], [1, 0]]])
    unknown = torch.tensor([[[False, True], [True, True]]])
    out = open_world_labels(pred, unknown, torch.tensor([0, 1, 0]), n_known=2)
    assert out.tolist() == [[[0, 2], [3, 2]]]
    with pytest.raises(ValueError):
        open_world_labels(pred, unknown, torch.tensor([0, 1]), n_known=2)

    stats = two_class_stats()
    sem = torch.tensor([[[[1.0, 5.0], [5.0, 9.0]], [[2.0, -5.0], [-5.2, 9.0]]]])  # [1, 2, 2, 2]
    cont = torch.zeros(1, 2, 2, 2)
    cont[0, 0, 0, 0] = 1.0  # only pixel (0, 0) lies on the known hypersphere
    scores = contmav_scores(sem, cont, stats)
    assert scores.unknown.tolist() == [[[False, True], [True, True]]]
    labels, state = discover_classes(sem, scores)
    # unknown features in raster order: (5,-5), (5,-5.2) within 0.5 -> class 0; (9, 9) -> class 1
    assert labels.tolist() == [[[1, 2], [2, 3]]]
    assert state.counts.tolist() == [2, 1]


# ---------------------------------------------------------------- storage
def test_stats_round_trip_as_plain_tensors(tmp_path):
    stats = MavStats.from_tensors(torch.randn(3, 3), torch.rand(3, 3), torch.tensor([5, 0, 7]))
    path = tmp_path / "mavs.pt"
    save_mav_stats(stats, path)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"mavs", "variances", "counts"} and all(isinstance(v, torch.Tensor) for v in raw.values())
    back = load_mav_stats(path)
    for key in ("mavs", "variances", "counts"):
        assert torch.equal(getattr(back, key), getattr(stats, key))
    assert back.seen.tolist() == [True, False, True]


def test_stats_from_the_training_descriptors():
    class Descriptors:  # the fields of vocabseg.openworld.losses.MAVs
        means = torch.ones(2, 2, dtype=torch.float64)
        variances = torch.full((2, 2), 0.5)
        valid = torch.tensor([True, False])

    stats = MavStats.from_descriptors(Descriptors())
    assert stats.counts.tolist() == [1, 0] and stats.mavs.dtype == torch.float32
    assert torch.equal(stats.variances, torch.full((2, 2), 0.5))


class NotATensor:
    pass


@pytest.mark.parametrize(
    "content, message",
    [
        ({"mavs": torch.zeros(2, 2), "variances": torch.zeros(2, 2)}, "keys"),
        ({"mavs": torch.zeros(2, 2), "variances": torch.zeros(2, 3), "counts": torch.ones(2)}, "variances"),
        ({"mavs": torch.zeros(2, 2), "variances": -torch.ones(2, 2), "counts": torch.ones(2)}, ">= 0"),
        ({"mavs": torch.zeros(2, 2), "variances": torch.ones(2, 2), "counts": torch.ones(3)}, "counts"),
        ({"mavs": NotATensor(), "variances": torch.ones(2, 2), "counts": torch.ones(2)}, "cannot read"),
    ],
)
def test_bad_stats_files_raise_input_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(InputError, match=message) as err:
        load_mav_stats(path)
    assert str(path) in str(err.value)


def test_missing_stats_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_mav_stats(tmp_path / "none.pt")
