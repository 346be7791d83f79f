import doctest
import math
import random
import statistics

import pytest

from mtp_bench.api.metric import Metric
from mtp_bench.scoring import metrics
from mtp_bench.scoring.metrics import delta, improved, intervals_overlap, mean_metric, point_metric


def test_doctests_run():
    failures, tried = doctest.testmod(metrics)
    assert tried > 5 and failures == 0


def test_mean_metric_matches_statistics_module():
    rng = random.Random(0)
    values = [rng.random() for _ in range(37)]
    m = mean_metric(values, higher_is_better=False)
    se = statistics.stdev(values) / math.sqrt(len(values))
    assert m.value == pytest.approx(statistics.fmean(values), abs=1e-15)
    assert m.stderr == pytest.approx(se, rel=1e-12)
    assert m.ci95 == pytest.approx((m.value - 1.959964 * se, m.value + 1.959964 * se), rel=1e-6)
    assert (m.n, m.higher_is_better) == (37, False)


def test_mean_metric_of_bools_is_a_fraction():
    m = mean_metric([True, False, False, True, True], True)
    assert m.value == 0.6 and m.n == 5


def test_mean_metric_is_order_independent():
    rng = random.Random(1)
    values = [rng.uniform(-1e6, 1e6) for _ in range(200)]
    shuffled = values[:]
    rng.shuffle(shuffled)
    assert mean_metric(values, True) == mean_metric(shuffled, True)


def test_single_value_has_no_interval_and_empty_is_an_error():
    m = mean_metric([0.25], True)
    assert (m.value, m.stderr, m.ci95, m.n) == (0.25, None, None, 1)
    with pytest.raises(ValueError, match="empty"):
        mean_metric([], True)


def test_interval_overlap():
    a = Metric(0.5, 0.01, (0.48, 0.52), 100, True)
    b = Metric(0.6, 0.01, (0.58, 0.62), 100, True)
    c = Metric(0.55, 0.03, (0.49, 0.61), 100, True)
    assert intervals_overlap(a, b) is False and intervals_overlap(b, a) is False
    assert intervals_overlap(a, c) is True and intervals_overlap(c, b) is True
    assert intervals_overlap(a, point_metric(0.5, 1, True)) is None


def test_improved_follows_direction():
    hi, lo = point_metric(2.0, 1, True), point_metric(1.0, 1, True)
    assert delta(hi, lo) == 1.0 and improved(hi, lo) is True and improved(lo, hi) is False
    loss_hi, loss_lo = point_metric(2.0, 1, False), point_metric(1.0, 1, False)
    assert improved(loss_lo, loss_hi) is True and improved(loss_hi, loss_lo) is False
    assert improved(hi, hi) is None


def test_metric_dict_roundtrip_keeps_nan_as_strict_json():
    import json

    m = Metric(float("nan"), None, None, 3, True)
    d = m.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    back = Metric.from_dict(d)
    assert math.isnan(back.value) and back.n == 3
    m2 = mean_metric([1, 2, 4], True)
    assert Metric.from_dict(json.loads(json.dumps(m2.to_dict()))) == m2


def test_metric_normalises_numpy_scalars_and_rejects_non_numbers():
    import numpy as np

    m = Metric(np.float32(0.5), np.float64(0.1), (np.float64(0.3), 0.7), np.int64(4), np.bool_(True))
    assert (type(m.value), type(m.stderr), type(m.n), type(m.higher_is_better)) == (float, float, int, bool)
    for bad in (dict(value="0.5"), dict(value=True), dict(n=-1), dict(n=2.0), dict(higher_is_better=1)):
        kw = dict(value=0.5, stderr=None, ci95=None, n=1, higher_is_better=True) | bad
        with pytest.raises(TypeError):
            Metric(**kw)
