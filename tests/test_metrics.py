"""The paper's metrics against scikit-learn and hand-computed cases."""
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, label_ranking_average_precision_score, roc_auc_score

from birdsep import metrics


def _random(seed=0, n=200, c=12, ties=False):
    rng = np.random.default_rng(seed)
    t = (rng.random((n, c)) < 0.15).astype(int)
    t[np.arange(n), rng.integers(0, c, n)] = 1  # every window has a label
    s = rng.random((n, c)) + 0.6 * t  # informative but imperfect
    if ties:
        s = np.round(s, 1)
    return t, s


@pytest.mark.parametrize("ties", [False, True])
def test_average_precision_matches_sklearn(ties):
    t, s = _random(1, ties=ties)
    for c in range(t.shape[1]):
        assert metrics.average_precision(t[:, c], s[:, c]) == pytest.approx(average_precision_score(t[:, c], s[:, c]))


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_matches_sklearn(ties):
    t, s = _random(2, ties=ties)
    for c in range(t.shape[1]):
        assert metrics.roc_auc(t[:, c], s[:, c]) == pytest.approx(roc_auc_score(t[:, c], s[:, c]))


def test_cmap_is_sklearn_macro_ap_over_species_with_five_positives():
    t, s = _random(3)
    t[:, 0] = 0
    t[:4, 0] = 1  # only four positives: left out
    keep = t.sum(0) >= 5
    expected = average_precision_score(t[:, keep], s[:, keep], average="macro")
    assert metrics.cmap(t, s) == pytest.approx(expected)
    assert metrics.score_all(t, s).cmap_species == keep.sum() == t.shape[1] - 1


@pytest.mark.parametrize("ties", [False, True])
def test_lwlrap_is_lrap_weighted_by_label_count(ties):
    # lwlrap weights every (window, label) pair equally: sklearn's LRAP weighted by labels per window
    t, s = _random(4, ties=ties)
    expected = label_ranking_average_precision_score(t, s, sample_weight=t.sum(1))
    assert metrics.lwlrap(t, s) == pytest.approx(expected)


def test_hand_computed_cases():
    t = np.array([[0, 1, 1], [1, 0, 0]])
    s = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3]])
    # window 1: species 1 at rank 2 (1 hit) → 1/2, species 2 at rank 3 (2 hits) → 2/3; window 2: rank 3 → 1/3
    assert metrics.lwlrap(t, s) == pytest.approx((1 / 2 + 2 / 3 + 1 / 3) / 3)  # 0.5
    assert label_ranking_average_precision_score(t, s) == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1 / 3) / 2)
    assert metrics.top1_precision(t, s) == 0.0
    assert metrics.top1_precision(t, np.array([[0, 1, 0], [1, 0, 0]])) == 1.0
    assert metrics.top1_precision(t, np.array([[0, 1, 1], [1, 1, 0]])) == 0.5  # a tie at the top is wrong

    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])
    assert metrics.average_precision(y, p) == pytest.approx((1 + 2 / 3) / 2)
    assert metrics.roc_auc(y, p) == pytest.approx(3 / 4)
    assert metrics.dprime(0.75) == pytest.approx(math.sqrt(2) * 0.6744897501960817)
    assert metrics.dprime(0.5) == 0.0


def test_perfect_and_edge_cases():
    t = np.eye(6, dtype=int).repeat(5, axis=0)  # 30 windows, 6 species, 5 positives each
    s = t + 0.01
    r = metrics.score_all(t, s)
    assert (r.cmap, r.lwlrap, r.top1, r.auc) == (1.0, 1.0, 1.0, 1.0)
    assert math.isinf(r.dprime)
    assert math.isnan(metrics.cmap(t[:, :1] * 0, s[:, :1]))  # no species with 5 positives
    assert math.isnan(metrics.lwlrap(np.zeros((3, 2)), np.ones((3, 2))))
    assert metrics.lwlrap(np.ones((2, 2)), np.ones((2, 2))) == 1.0  # all true: ties cost nothing
    with pytest.raises(ValueError):
        metrics.cmap(np.ones((3, 2)), np.ones((2, 3)))


@pytest.mark.parametrize("ties", [False, True])
def test_weighted_metrics_equal_the_resampled_set(ties):
    t, s = _random(5, n=120, c=9, ties=ties)
    w = np.random.default_rng(1).integers(0, 3, len(t))  # each window drawn 0, 1 or 2 times
    rows = np.repeat(np.arange(len(t)), w)
    want = metrics.score_all(t[rows], s[rows])
    got = metrics.Weighted(t, s).metrics(w.astype(float))
    assert got == pytest.approx([want.cmap, want.lwlrap, want.dprime, want.top1])
    full = metrics.score_all(t, s)
    assert metrics.Weighted(t, s).metrics(np.ones(len(t))) == pytest.approx([full.cmap, full.lwlrap, full.dprime,
                                                                             full.top1])


def test_bootstrap_is_paired_and_centred():
    t, s = _random(6, n=300, c=8)
    groups = np.arange(300) // 3  # 100 recordings of 3 windows
    boot = metrics.bootstrap(t, {"a": s, "b": s + 0.3 * t}, groups, reps=200, seed=0)
    full = metrics.score_all(t, s)
    assert boot["a"].shape == (200, 4)
    assert np.median(boot["a"][:, 0]) == pytest.approx(full.cmap, abs=0.02)
    assert np.all(boot["b"][:, 0] >= boot["a"][:, 0])  # the same draws: a better score set is better in each
