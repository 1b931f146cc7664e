from __future__ import annotations

import numpy as np
import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.stats import bootstrap_ci, change_ci, difference_ci


def test_constant_values_give_a_point_interval():
    ci = bootstrap_ci([0.25] * 10, n_boot=200)
    assert (ci.value, ci.low, ci.high, ci.n) == (0.25, 0.25, 0.25, 10)


def test_rate_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    x = (rng.random(400) < 0.3).astype(float)
    ci = bootstrap_ci(x, n_boot=2000, seed=0)
    p = x.mean()
    se = np.sqrt(p * (1 - p) / len(x))
    assert ci.value == pytest.approx(p)
    assert ci.low == pytest.approx(p - 1.96 * se, abs=0.01)
    assert ci.high == pytest.approx(p + 1.96 * se, abs=0.01)
    wide = bootstrap_ci(x[:40], n_boot=2000, seed=0)
    assert wide.high - wide.low > 2 * (ci.high - ci.low)  # fewer units, wider interval


def test_same_seed_same_interval_other_seed_differs():
    x = np.random.default_rng(0).normal(size=50)
    a, b = bootstrap_ci(x, seed=3), bootstrap_ci(x, seed=3)
    c = bootstrap_ci(x, seed=4)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)


def test_units_are_resampled_whole_and_pooled():
    # two prompts, ragged samples: the pooled mean is sum / count, not the mean of means
    units = [[1.0, 1.0, 1.0], [0.0]]
    ci = bootstrap_ci(units, n_boot=500)
    assert ci.value == pytest.approx(0.75)
    assert ci.n == 2
    # every resample is {both, only first, only second}: pooled means 0.75, 1, 0
    dense = bootstrap_ci(np.array([[1.0, 1.0], [0.0, 0.0]]), n_boot=500)
    assert dense.value == 0.5 and dense.low == 0.0 and dense.high == 1.0


def test_custom_statistic_and_generic_path_agree_with_fast_mean():
    x = np.random.default_rng(2).normal(size=(30, 3))
    fast = bootstrap_ci(x, n_boot=300, seed=1)
    slow = bootstrap_ci(x, stat=lambda a: float(np.mean(a)), n_boot=300, seed=1)
    assert fast.value == pytest.approx(slow.value)
    assert fast.low == pytest.approx(slow.low) and fast.high == pytest.approx(slow.high)
    med = bootstrap_ci(x[:, 0], stat=np.median, n_boot=300)
    assert med.value == pytest.approx(np.median(x[:, 0]))


def test_paired_change_cancels_unit_noise():
    rng = np.random.default_rng(5)
    before = rng.normal(size=60) * 10  # large between-unit spread
    after = before + 0.1
    paired = change_ci(before, after, n_boot=500)
    assert paired.value == pytest.approx(0.1)
    assert paired.low == pytest.approx(0.1) and paired.high == pytest.approx(0.1)
    # an independent resample of the two arms would be dominated by the spread
    b = bootstrap_ci(before, n_boot=500, seed=1)
    assert b.high - b.low > 1.0
    assert bootstrap_ci(before, paired=after, n_boot=500) == paired  # the same thing


def test_difference_of_independent_samples_matches_the_normal_approximation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, size=300), rng.normal(0.5, 2.0, size=120)  # different sizes
    ci = difference_ci(a, b, n_boot=4000, seed=0)
    se = np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    assert ci.value == pytest.approx(a.mean() - b.mean()) and ci.n == 420
    assert ci.low == pytest.approx(ci.value - 1.96 * se, abs=0.04)
    assert ci.high == pytest.approx(ci.value + 1.96 * se, abs=0.04)
    assert difference_ci(a, b, n_boot=300, seed=4) == difference_ci(a, b, n_boot=300, seed=4)
    same = difference_ci([2.0] * 5, [0.5] * 9, n_boot=50)
    assert (same.value, same.low, same.high) == (1.5, 1.5, 1.5)
    with pytest.raises(GeomsafeError):
        difference_ci([], [1.0])
    with pytest.raises(GeomsafeError):
        difference_ci([1.0], [1.0], n_boot=0)


def test_bad_inputs():
    with pytest.raises(GeomsafeError):
        bootstrap_ci([])
    with pytest.raises(GeomsafeError):
        bootstrap_ci([1.0], n_boot=0)
    with pytest.raises(GeomsafeError):
        change_ci([1.0, 2.0], [1.0])
