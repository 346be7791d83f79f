"""Paired statistics, checked against scipy where it is installed and against hand-computed values."""

import math
import random

import pytest

from mtp_bench.scoring import stats


def test_binomial_cdf_is_exact_against_a_direct_sum():
    for n in (1, 5, 17, 60):
        for k in range(-1, n + 2):
            direct = sum(math.comb(n, i) for i in range(0, min(k, n) + 1)) / 2**n if k >= 0 else 0.0
            assert stats.binom_half_cdf(k, n) == pytest.approx(direct, rel=1e-15)


def test_mcnemar_hand_computed_values():
    # b = 1, c = 6: P(X <= 1 | n = 7) = (1 + 7) / 128; two-sided doubles it
    assert stats.mcnemar_exact(1, 6) == 16 / 128
    assert stats.mcnemar_exact(6, 1) == 16 / 128
    # b = 0, c = 5: 2 / 32
    assert stats.mcnemar_exact(0, 5) == 2 / 32
    assert stats.mcnemar_exact(0, 0) == 1.0 and stats.mcnemar_exact(4, 4) == 1.0
    with pytest.raises(ValueError):
        stats.mcnemar_exact(-1, 2)


def test_mcnemar_matches_scipy_binomtest():
    sp = pytest.importorskip("scipy.stats")
    for b, c in [(0, 1), (2, 9), (15, 15), (30, 12), (100, 140), (3, 0)]:
        assert stats.mcnemar_exact(b, c) == pytest.approx(sp.binomtest(b, b + c, 0.5).pvalue, rel=1e-12)


def test_mcnemar_test_counts_only_discordant_pairs():
    model = [1] * 40 + [0] * 10 + [1] * 5 + [0] * 45
    ref = [1] * 40 + [0] * 10 + [0] * 5 + [1] * 45  # b = 5, c = 45
    t = stats.mcnemar_test(model, ref)
    assert t.method == "mcnemar" and t.n == 100
    assert t.diff == pytest.approx((5 - 45) / 100)
    assert t.p == pytest.approx(2 * stats.binom_half_cdf(5, 50))
    lo, hi = t.ci95
    assert lo < t.diff < hi < 0  # the interval excludes 0 like the test does


def test_agresti_min_interval_hand_computed():
    # b = 10, c = 2, n = 50: cells + 1/2 -> 10.5, 2.5 of 52; d = 8/52; se = sqrt(13 - 64/52) / 52
    d, se = 8 / 52, math.sqrt(13 - 64 / 52) / 52
    lo, hi = stats.paired_proportion_ci(10, 2, 50)
    assert (lo, hi) == pytest.approx((d - 1.959963984540054 * se, d + 1.959963984540054 * se))
    assert stats.paired_proportion_ci(0, 0, 3)[0] >= -1 and stats.paired_proportion_ci(3, 0, 3)[1] <= 1


def _pairs(n, shift, seed=1, noise=0.3):
    rng = random.Random(seed)
    base = [rng.gauss(5.0, 1.0) for _ in range(n)]
    return [b + shift + rng.gauss(0, noise) for b in base], base


def test_paired_bootstrap_agrees_with_the_paired_t_test_on_a_mean():
    sp = pytest.importorskip("scipy.stats")
    a, b = _pairs(200, 0.05)
    t = stats.paired_bootstrap(a, [1] * 200, b, [1] * 200)
    ref = sp.ttest_rel(a, b)
    assert t.diff == pytest.approx(sum(a) / 200 - sum(b) / 200)
    assert t.p == pytest.approx(ref.pvalue, abs=0.02)
    lo, hi = ref.confidence_interval(0.95)
    assert t.ci95 == pytest.approx((lo, hi), abs=0.01)


def test_paired_bootstrap_interval_matches_scipy_bootstrap():
    sp = pytest.importorskip("scipy.stats")
    import numpy as np

    a, b = _pairs(80, 0.1, seed=3)
    t = stats.paired_bootstrap(a, [1] * 80, b, [1] * 80)
    res = sp.bootstrap((np.array(a), np.array(b)), lambda x, y, axis=-1: x.mean(axis) - y.mean(axis), paired=True,
                       n_resamples=10000, method="percentile", random_state=np.random.default_rng(0))
    assert t.ci95 == pytest.approx((res.confidence_interval.low, res.confidence_interval.high), abs=0.01)


def test_paired_bootstrap_uses_the_pairing():
    """A small shift that every sample shares is clear when paired, invisible unpaired."""
    a, b = _pairs(50, 0.1, noise=0.05)
    paired = stats.paired_bootstrap(a, [1] * 50, b, [1] * 50)
    m = lambda xs: sum(xs) / len(xs)
    se = lambda xs: math.sqrt(sum((x - m(xs)) ** 2 for x in xs) / (len(xs) - 1) / len(xs))
    unpaired = stats.unpaired_z_test(m(a), se(a), m(b), se(b))
    assert paired.p < 0.01 < 0.5 < unpaired.p


def test_paired_bootstrap_of_a_ratio_of_totals_is_reproducible():
    rng = random.Random(5)
    den_a = [rng.randint(1, 9) for _ in range(30)]
    num_a = [d * rng.uniform(1, 3) for d in den_a]
    num_b, den_b = [d * rng.uniform(1, 3) for d in den_a], den_a
    t1 = stats.paired_bootstrap(num_a, den_a, num_b, den_b)
    t2 = stats.paired_bootstrap(num_a, den_a, num_b, den_b)
    assert t1 == t2  # fixed seed
    assert t1.diff == pytest.approx(sum(num_a) / sum(den_a) - sum(num_b) / sum(den_b))
    assert t1.ci95[0] <= t1.diff <= t1.ci95[1]
    assert stats.paired_bootstrap(num_a, den_a, num_b, den_b, seed=1) != t1


def test_unpaired_z_test_hand_computed():
    t = stats.unpaired_z_test(0.5, 0.1, 0.2, 0.1, note="why")
    z = 0.3 / math.sqrt(0.02)
    assert t.p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert t.method == "unpaired" and t.note == "why" and t.n == 0
    assert stats.unpaired_z_test(1.0, None, 0.5, 0.1).p is None
    assert stats.unpaired_z_test(0.0, 0.0, 0.0, 0.0).p == 1.0
    assert stats.unpaired_z_test(1.0, 0.0, 0.0, 0.0).p == 0.0


def test_holm_hand_computed_and_against_the_definition():
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, None, 0.9]) == [pytest.approx(1.0), None, pytest.approx(1.0)]
    assert stats.holm([]) == []
    # step-down rule: reject the i-th smallest while p_(i) <= alpha / (m - i + 1)
    rng = random.Random(0)
    for _ in range(50):
        ps = [rng.random() ** 3 for _ in range(8)]
        adj = stats.holm(ps)
        order = sorted(range(8), key=lambda i: ps[i])
        rejected = set()
        for rank, i in enumerate(order):
            if ps[i] > 0.05 / (8 - rank):
                break
            rejected.add(i)
        assert {i for i in range(8) if adj[i] < 0.05 or math.isclose(adj[i], 0.05)} >= rejected
        assert {i for i in range(8) if adj[i] < 0.05} <= rejected
