"""Paired and unpaired tests for comparing two models that answered the same samples.

Two models scored on the same problems are paired: their per-problem outcomes are correlated
(an easy problem is easy for both), so comparing two independent intervals wastes most of the
information. What `compare`, `show --baseline`, `run` and `gate` use, per metric:

    pass/fail per sample (every value 0 or 1)   exact McNemar test on the discordant pairs;
                                                the paired difference with the Agresti-Min interval
    continuous per sample (loss, ROUGE, pass@k  paired bootstrap of the metric itself (a mean, or a
    over n > 1 samples, ratios like tau)        ratio of totals), BOOTSTRAP_RESAMPLES resamples of
                                                the shared samples with a fixed seed: the percentile
                                                interval and a two-sided p-value
    no shared samples (other --limit, other     unpaired z test on the two standard errors: the
    data, no samples file)                      comparison the aggregates alone allow

Holm's step-down correction across a table controls the chance of any false "significant" at
alpha, whatever the dependence between the rows.

Everything here is a pure function of lists and plain numbers; the bootstrap is reproducible
bit for bit (numpy's PCG64 with a fixed seed).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from mtp_bench.scoring.metrics import Z95

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0

# what each test is called in tables (one letter) and in words (captions, JSON)
METHODS = {
    "mcnemar": ("M", "exact McNemar test (pass/fail, paired)"),
    "bootstrap": ("B", f"paired bootstrap ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})"),
    "unpaired": ("U", "unpaired z test on the two standard errors (no shared per-sample values: see the notes)"),
}


@dataclass(frozen=True)
class Difference:
    """One comparison of a model against a reference on one metric. `diff` = model - reference;
    `ci95` is the interval of that difference (None where the test gives none)."""

    method: str  # "mcnemar" | "bootstrap" | "unpaired"
    p: float | None  # two-sided p-value; None when no test is possible (no standard errors)
    diff: float
    ci95: tuple[float, float] | None
    n: int  # shared samples (paired) or 0 (unpaired)
    note: str | None = None  # why a paired test was not possible, for the unpaired fallback

    def to_dict(self) -> dict:
        return {"method": self.method, "p": self.p, "diff": self.diff,
                "ci95": list(self.ci95) if self.ci95 is not None else None, "n": self.n, "note": self.note}


# ----------------------------------------------------------------------------- McNemar

def binom_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, one rounding at the end).

    >>> binom_half_cdf(1, 7)  # (C(7,0) + C(7,1)) / 2**7 = 8/128
    0.0625
    >>> binom_half_cdf(-1, 3), binom_half_cdf(3, 3)
    (0.0, 1.0)
    """
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: b = pairs where only the
    model passed, c = pairs where only the reference passed. Under "no difference" each
    discordant pair is a fair coin, so p = min(1, 2 P(X <= min(b, c))), X ~ Binomial(b + c, 1/2)
    (the conditional binomial test; scipy.stats.binomtest(b, b + c).pvalue agrees).

    >>> mcnemar_exact(1, 6)  # 2 * 8/128
    0.125
    >>> mcnemar_exact(0, 0), mcnemar_exact(3, 3)
    (1.0, 1.0)
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return min(1.0, 2.0 * binom_half_cdf(min(b, c), b + c))


def paired_proportion_ci(b: int, c: int, n: int) -> tuple[float, float]:
    """95% interval of the paired difference of two pass rates, (b - c) / n, by Agresti & Min
    (2005): the Wald interval after adding 1/2 to each of the four cells (n + 2 pairs), which
    keeps its coverage near 95% even with few discordant pairs; clipped to [-1, 1].

    >>> [round(x, 4) for x in paired_proportion_ci(10, 2, 50)]
    [0.0245, 0.2832]
    """
    if n < 1 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need n >= 1 and 0 <= b + c <= n, got b={b}, c={c}, n={n}")
    b1, c1, n1 = b + 0.5, c + 0.5, n + 2
    d = (b1 - c1) / n1
    se = math.sqrt(max((b1 + c1) - (b1 - c1) ** 2 / n1, 0.0)) / n1
    return (max(-1.0, d - Z95 * se), min(1.0, d + Z95 * se))


def mcnemar_test(model: Sequence[float], reference: Sequence[float]) -> Difference:
    """Exact McNemar on paired 0/1 outcomes (same samples, same order).

    >>> t = mcnemar_test([1, 1, 1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1, 1, 1])  # b = 4, c = 1
    >>> (t.method, t.diff, t.p)  # p = 2 * (1 + 5) / 32
    ('mcnemar', 0.375, 0.375)
    """
    if len(model) != len(reference) or not model:
        raise ValueError("mcnemar_test needs two non-empty sequences of the same length")
    b = sum(1 for x, y in zip(model, reference) if x and not y)
    c = sum(1 for x, y in zip(model, reference) if y and not x)
    n = len(model)
    return Difference("mcnemar", mcnemar_exact(b, c), (b - c) / n, paired_proportion_ci(b, c, n), n)


# ----------------------------------------------------------------------------- paired bootstrap

def paired_bootstrap(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float],
                     den_b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = BOOTSTRAP_SEED) -> Difference:
    """Paired bootstrap of the difference of a ratio of totals, sum(num) / sum(den), between
    model a and reference b over the same samples (a mean is the case den = 1 for every sample).

    Each resample draws the samples with replacement, the same draw for both models, and
    recomputes both statistics. Interval: the 2.5 and 97.5 percentiles of the resampled
    differences. p-value: the resampled differences centred on the observed one stand for the
    null distribution, p = (1 + #{|d* - d| >= |d|}) / (1 + resamples) (two-sided; identical
    per-sample values give p = 1). Resamples whose denominator sums to 0 are dropped.

    >>> t = paired_bootstrap([1.0, 2.0, 3.0, 4.0], [1] * 4, [1.0, 2.0, 3.0, 4.0], [1] * 4)
    >>> (t.diff, t.ci95, t.p)
    (0.0, (0.0, 0.0), 1.0)
    """
    import numpy as np

    arrays = [np.asarray(x, dtype=np.float64) for x in (num_a, den_a, num_b, den_b)]
    n = len(arrays[0])
    if n == 0 or any(len(x) != n for x in arrays):
        raise ValueError("paired_bootstrap needs four non-empty sequences of the same length")
    na, da, nb, db = arrays
    d = float(na.sum() / da.sum() - nb.sum() / db.sum())
    rng = np.random.Generator(np.random.PCG64(seed))
    idx = rng.integers(0, n, size=(resamples, n))
    with np.errstate(divide="ignore", invalid="ignore"):
        star = na[idx].sum(1) / da[idx].sum(1) - nb[idx].sum(1) / db[idx].sum(1)
    star = star[np.isfinite(star)]
    if star.size == 0:
        return Difference("bootstrap", None, d, None, n, "every resample had a zero denominator")
    lo, hi = np.percentile(star, [2.5, 97.5])
    # a tolerance so that float noise around an exactly-zero difference still counts as "as extreme"
    tol = 1e-12 * max(1.0, abs(d))
    extreme = int(np.count_nonzero(np.abs(star - d) >= abs(d) - tol))
    p = (1 + extreme) / (1 + star.size)
    return Difference("bootstrap", min(1.0, p), d, (float(lo), float(hi)), n)


# ----------------------------------------------------------------------------- unpaired fallback

def normal_two_sided_p(z: float) -> float:
    """2 P(Z >= |z|) for a standard normal Z.

    >>> round(normal_two_sided_p(1.959963984540054), 6)
    0.05
    """
    return math.erfc(abs(z) / math.sqrt(2.0))


def unpaired_z_test(value_a: float, stderr_a: float | None, value_b: float, stderr_b: float | None,
                    note: str | None = None) -> Difference:
    """z = (a - b) / sqrt(se_a^2 + se_b^2), two-sided normal p; no p-value (None) when either
    side has no standard error. Two exact values (both standard errors 0) differ with p = 0
    unless they are equal.

    >>> t = unpaired_z_test(0.5, 0.1, 0.2, 0.1)
    >>> (round(t.diff, 4), round(t.p, 4), [round(x, 4) for x in t.ci95])
    (0.3, 0.0339, [0.0228, 0.5772])
    >>> unpaired_z_test(1.0, None, 0.5, 0.1).p is None
    True
    """
    d = value_a - value_b
    if stderr_a is None or stderr_b is None or not math.isfinite(d):
        return Difference("unpaired", None, d, None, 0, note)
    se = math.sqrt(stderr_a**2 + stderr_b**2)
    if se == 0:
        return Difference("unpaired", 1.0 if d == 0 else 0.0, d, (d, d), 0, note)
    return Difference("unpaired", normal_two_sided_p(d / se), d, (d - Z95 * se, d + Z95 * se), 0, note)


# ----------------------------------------------------------------------------- multiple comparisons

def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (None entries are left out of the family and stay None):
    sort the m p-values, multiply the i-th smallest (1-based) by m - i + 1, keep the running
    maximum, cap at 1. A test survives at alpha when its adjusted p-value is below alpha.

    >>> holm([0.01, 0.04, 0.03, 0.005])
    [0.03, 0.06, 0.06, 0.02]
    >>> holm([None, 0.2])
    [None, 0.2]
    """
    present = [(p, i) for i, p in enumerate(pvalues) if p is not None]
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
