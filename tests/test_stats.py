"""geomsafe.stats: the bootstrap, the CI layout, behavioural change, correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from geomsafe.errors import GeomsafeError
from geomsafe.stats import (
    CI,
    behaviour_change,
    bootstrap_ci,
    change_ci,
    correlation,
    difference_ci,
    harm_groups,
    mean_change_ci,
    ratio_ci,
    stratified_draws,
    sum_change_ci,
)

# Fixed inputs whose figures were computed with the code before geomsafe.stats (evaluate/stats.py,
# pareto/frontier.py at c9ffc4c): the same seed must give exactly these numbers.
A = [0.1, -0.2, 0.35, 0.05, 0.4, -0.1, 0.25]
B = [0.3, 0.0, 0.5, 0.1, 0.2, 0.15, 0.45]
BASE = {
    "adv": [0.1, 0.2, -0.1, 0.4, 0.0],
    "ctl": [0.0, 0.1, 0.2, 0.1, -0.2],
    "tox": [0.3, 0.1, 0.2, 0.0],
}
TUNED = {
    "adv": [0.5, 0.3, 0.2, 0.9, 0.1],
    "ctl": [0.1, 0.1, 0.3, 0.0, -0.1],
    "tox": [0.6, 0.2, 0.2, 0.4],
}
REF = {
    "adv": [0.9, 0.6, 0.4, 1.1, 0.5],
    "ctl": [0.2, 0.0, 0.4, 0.1, 0.0],
    "tox": [0.8, 0.5, 0.3, 0.7],
}
G = {"a": [0.1, 0.2, 0.05, 0.3], "b": [0.0, -0.1, 0.2]}
U = {"a": [0.3, 0.5, 0.2, 0.6], "b": [0.2, 0.1, 0.4]}


def _t(ci: CI) -> tuple[float, float, float, int, int]:
    return (ci.value, ci.low, ci.high, ci.n, ci.n_boot)


def test_bootstraps_give_the_figures_of_the_code_before_them():
    assert _t(bootstrap_ci(A, n_boot=200, seed=3)) == (
        0.12142857142857143,
        -0.0501785714285714,
        0.27142857142857146,
        7,
        200,
    )
    ragged = [[0.1, 0.2], [0.5], [0.3, 0.3, 0.9], [0.0]]
    assert _t(bootstrap_ci(ragged, n_boot=200, seed=1)) == (
        0.32857142857142857,
        0.10000000000000002,
        0.5,
        4,
        200,
    )
    assert _t(bootstrap_ci(A, stat=np.median, n_boot=200, seed=2)) == (0.1, -0.1, 0.35, 7, 200)
    assert _t(change_ci(A, B, n_boot=200, seed=0)) == (
        0.12142857142857143,
        -0.00017857142857140152,
        0.20714285714285713,
        7,
        200,
    )
    assert _t(change_ci(A, B, stat=np.median, n_boot=100, seed=0)) == (
        0.1,
        -0.17624999999999988,
        0.25,
        7,
        100,
    )
    assert _t(difference_ci(A, B[:5], n_boot=200, seed=0)) == (
        -0.0985714285714286,
        -0.32875,
        0.11464285714285725,
        12,
        200,
    )
    assert _t(ratio_ci(G, U, n_boot=300, seed=0)) == (
        0.30921052631578944,
        0.10000000000000002,
        0.44651959084604714,
        7,
        300,
    )
    assert _t(sum_change_ci(G, n_boot=300, seed=0)) == (
        0.19583333333333333,
        0.043645833333333356,
        0.37500000000000006,
        7,
        300,
    )


def test_behaviour_change_gives_the_figures_of_the_code_before_it():
    got = behaviour_change(BASE, TUNED, REF, controls={"adv": "ctl"}, n_boot=200, seed=0)
    expected = {
        ("adv", "change"): (0.28, 0.13900000000000015, 0.42000000000000004, 5),
        ("adv", "reference_change"): (0.58, 0.4595, 0.7200000000000001, 5),
        ("adv", "ratio"): (0.48275862068965525, 0.2903273809523812, 0.6334090909090908, 5),
        ("ctl", "change"): (0.039999999999999994, -0.04, 0.1, 5),
        ("ctl", "reference_change"): (0.1, -0.02, 0.2, 5),
        ("ctl", "ratio"): (0.3999999999999999, -2.0, 0.7500000000000001, 5),
        ("tox", "change"): (0.2, 0.05, 0.35000000000000003, 4),
        ("tox", "reference_change"): (0.425, 0.24875000000000017, 0.625, 4),
        ("tox", "ratio"): (0.4705882352941177, 0.2, 0.5833333333333334, 4),
        ("adv-controlled", "change"): (
            0.24000000000000005,
            0.09950000000000006,
            0.38000000000000006,
            10,
        ),
        ("adv-controlled", "reference_change"): (0.48, 0.31999999999999995, 0.6205000000000002, 10),
        ("adv-controlled", "ratio"): (
            0.5000000000000001,
            0.22659090909090918,
            0.7038194444444444,
            10,
        ),
        ("all", "change"): (0.44000000000000006, 0.1996250000000001, 0.6603750000000003, 14),
        ("all", "reference_change"): (0.9049999999999999, 0.614875, 1.1753749999999998, 14),
        ("all", "ratio"): (0.4861878453038675, 0.32782430506058463, 0.6104651162790696, 14),
    }
    assert {(m, k): _t(c)[:4] for m, d in got.items() for k, c in d.items()} == expected
    # a control that two rows subtract is one stratum (weight -2), resampled once
    base = {"a": [0.1, 0.2, -0.1, 0.4], "b": [0.3, 0.1, 0.2], "c": [0.0, 0.1, 0.2, 0.1, -0.2]}
    tuned = {"a": [0.5, 0.3, 0.2, 0.9], "b": [0.6, 0.2, 0.4], "c": [0.1, 0.1, 0.3, 0.0, -0.1]}
    shared = behaviour_change(base, tuned, controls={"a": "c", "b": "c"}, n_boot=200, seed=0)
    assert _t(shared["all"]["change"]) == (
        0.44500000000000006,
        0.26133333333333336,
        0.7285416666666666,
        12,
        200,
    )
    assert _t(shared["b-controlled"]["change"]) == (
        0.16000000000000003,
        0.053333333333333344,
        0.26700000000000007,
        8,
        200,
    )


def test_behaviour_change_sums_row_means_by_hand():
    """Two rows of constant changes: every resample gives the same sum, so the interval is the
    point; a control subtracts its change, and ``all`` sums the controlled row and the rest."""
    base = {"h": [0.0, 0.0, 0.0], "c": [0.0, 0.0], "x": [1.0, 1.0]}
    tuned = {"h": [0.3, 0.3, 0.3], "c": [0.1, 0.1], "x": [1.5, 1.5]}
    got = behaviour_change(base, tuned, controls={"h": "c"}, n_boot=20, seed=0)
    assert got["h-controlled"]["change"].value == pytest.approx(0.2)
    assert got["all"]["change"].value == pytest.approx(0.2 + 0.5)
    assert got["all"]["change"].low == pytest.approx(0.7)
    assert got["all"]["change"].high == pytest.approx(0.7)
    assert got["all"]["change"].n == 7


def test_mean_change_is_the_sum_estimator_over_the_row_count():
    changes = {"a": [0.1, 0.3, 0.2, 0.5], "b": [-0.1, 0.0, 0.2]}
    total = sum_change_ci(changes, n_boot=300, seed=4)
    mean = mean_change_ci(changes, n_boot=300, seed=4)
    assert mean.value == pytest.approx(total.value / 2)
    assert (mean.low, mean.high) == pytest.approx((total.low / 2, total.high / 2))
    assert mean.n == total.n == 7


def test_stratified_draws_are_deterministic_and_one_stream():
    a = stratified_draws([3, 5], 10, seed=7)
    b = stratified_draws([3, 5], 10, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert [x.shape for x in a] == [(10, 3), (10, 5)]
    rng = np.random.default_rng(7)
    assert np.array_equal(a[0], rng.integers(0, 3, size=(10, 3)))
    assert np.array_equal(a[1], rng.integers(0, 5, size=(10, 5)))


def test_ci_round_trips_through_its_one_layout():
    ci = CI(0.25, 0.1, 0.4, 12, 500, 0.9)
    d = ci.to_dict()
    assert d == {"value": 0.25, "low": 0.1, "high": 0.4, "n": 12, "n_boot": 500, "level": 0.9}
    assert CI.from_dict(d) == ci
    assert CI.from_dict(ci.scaled(100).to_dict()).value == pytest.approx(25.0)


@pytest.mark.parametrize(
    ("old", "expected"),
    [
        (  # eval.json metric (geomsafe.eval/1), bench.json cell (geomsafe.bench/1)
            {
                "label": "toxic",
                "value": 0.2,
                "ci_low": 0.1,
                "ci_high": 0.3,
                "n_units": 40,
                "n_boot": 1000,
            },
            CI(0.2, 0.1, 0.3, 40, 1000),
        ),
        ({"value": 2.5, "ci_low": -1.0, "ci_high": 6.0}, CI(2.5, -1.0, 6.0)),  # bench cell
        (  # eval.json change (geomsafe.eval/1)
            {
                "before": 0.1,
                "after": 0.2,
                "delta": 0.1,
                "delta_ci_low": 0.02,
                "delta_ci_high": 0.18,
                "delta_pp": 10.0,
                "delta_pp_ci": [2.0, 18.0],
                "n_paired": 40,
            },
            CI(0.1, 0.02, 0.18, 40),
        ),
        (  # behaviour_runs.py row
            {"change": 0.3, "ci_low": 0.1, "ci_high": 0.5, "excludes_zero": True, "n_paired": 30},
            CI(0.3, 0.1, 0.5, 30),
        ),
        (  # audit.json overlap row (geomsafe.audit/1)
            {"target": "t", "score": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n_boot": 200},
            CI(0.4, 0.3, 0.5, 0, 200),
        ),
    ],
)
def test_ci_reads_the_legacy_layouts(old, expected):
    assert CI.from_dict(old) == expected


def test_ci_rejects_what_is_not_an_interval():
    with pytest.raises(GeomsafeError, match="not a confidence interval"):
        CI.from_dict({"value": 1.0})
    with pytest.raises(GeomsafeError, match="not a confidence interval"):
        CI.from_dict([1.0, 2.0])  # type: ignore[arg-type]


def test_correlation_matches_scipy_and_guards_degenerate_input():
    x, y = [1, 2, 3, 4, 5, 6.5], [2, 1, 4, 3, 7, 5]
    got = correlation(x, y)
    pe, sp = scipy_stats.pearsonr(x, y), scipy_stats.spearmanr(x, y)
    assert got["n"] == 6
    assert (got["pearson"], got["pearson_p"]) == (float(pe.statistic), float(pe.pvalue))
    assert (got["spearman"], got["spearman_p"]) == (float(sp.statistic), float(sp.pvalue))
    assert got["spearman"] == 0.8285714285714287 and got["spearman_p"] == 0.04156268221574335
    for xs, ys in (([1.0, 2.0], [1.0, 2.0]), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), ([], [])):
        out = correlation(xs, ys)
        assert all(math.isnan(out[k]) for k in ("pearson", "pearson_p", "spearman", "spearman_p"))
    with pytest.raises(GeomsafeError, match="2 x values but 3"):
        correlation([1.0, 2.0], [1.0, 2.0, 3.0])


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


def test_ratio_point_is_the_ratio_of_mean_changes_and_the_ci_brackets_it():
    rng = np.random.default_rng(0)
    u = 0.1 + 0.02 * rng.standard_normal(200)
    g = 0.3 * u + 0.005 * rng.standard_normal(200)
    ci = ratio_ci({"advice": g}, {"advice": u}, n_boot=500, seed=1)
    assert ci.value == pytest.approx(g.mean() / u.mean())
    assert ci.low < ci.value < ci.high and ci.high - ci.low < 0.1
    assert ci.n == 200
    # same seed, same numbers
    assert ratio_ci({"advice": g}, {"advice": u}, n_boot=500, seed=1) == ci


def test_ratio_ci_is_paired():
    """Changes that share a large per-pair component: paired resampling cancels it, so the
    interval is far narrower than if the pairs were resampled independently."""
    rng = np.random.default_rng(0)
    shared = rng.standard_normal(100)
    u = 0.5 + shared
    g = 0.5 * u
    ci = ratio_ci({"r": g}, {"r": u}, n_boot=300, seed=0)
    assert ci.value == pytest.approx(0.5)
    assert ci.high - ci.low < 1e-9  # g is exactly half of u on every pair


def test_ratio_pools_rows_by_sum_of_row_means():
    g = {"a": [0.0, 0.2], "b": [1.0]}
    u = {"a": [0.2, 0.2], "b": [2.0]}
    assert ratio_ci(g, u, n_boot=10).value == pytest.approx((0.1 + 1.0) / (0.2 + 2.0))


def test_ratio_ci_rejects_misaligned_rows():
    with pytest.raises(GeomsafeError, match="equally many"):
        ratio_ci({"a": [1.0, 2.0]}, {"a": [1.0]})
    with pytest.raises(GeomsafeError, match="same, non-empty rows"):
        ratio_ci({"a": [1.0]}, {"b": [1.0]})


def test_zero_unguarded_change_gives_nan_not_an_error():
    ci = ratio_ci({"a": [0.1, -0.1]}, {"a": [0.0, 0.0]}, n_boot=20)
    assert math.isnan(ci.value) and math.isnan(ci.low)


def test_sum_change_ci_resolves_a_clear_change_and_not_noise():
    rng = np.random.default_rng(3)
    clear = sum_change_ci({"a": 0.1 + 0.01 * rng.standard_normal(50)}, n_boot=300)
    noise = sum_change_ci({"a": 0.01 * rng.standard_normal(50)}, n_boot=300)
    assert clear.low > 0
    assert noise.low < 0 < noise.high


def test_harm_groups_controlled_rows_replace_their_parts_in_all():
    groups = harm_groups(["advice", "adv", "ctl"], {"adv": "ctl"})
    assert list(groups) == ["advice", "adv", "ctl", "adv-controlled", "all"]
    assert groups["adv-controlled"] == [("adv", 1.0), ("ctl", -1.0)]
    assert groups["all"] == [("advice", 1.0), ("adv", 1.0), ("ctl", -1.0)]
    assert harm_groups(["a", "b"])["all"] == [("a", 1.0), ("b", 1.0)]
    with pytest.raises(GeomsafeError, match="missing"):
        harm_groups(["adv"], {"adv": "ctl"})


def test_behaviour_change_and_ratio_against_a_reference():
    base = {"advice": [0.0, 0.1, 0.2], "adv": [0.0, 0.0], "ctl": [0.5, 0.5, 0.5, 0.5]}
    un = {"advice": [0.2, 0.3, 0.4], "adv": [0.4, 0.4], "ctl": [0.6, 0.6, 0.6, 0.6]}
    gd = {"advice": [0.05, 0.15, 0.25], "adv": [0.1, 0.1], "ctl": [0.6, 0.6, 0.6, 0.6]}
    alone = behaviour_change(base, un, controls={"adv": "ctl"}, n_boot=50)
    assert set(alone["all"]) == {"change"}
    # unguarded: advice +0.2, adv +0.4 minus its control's +0.1 -> all +0.5
    assert alone["adv-controlled"]["change"].value == pytest.approx(0.3)
    assert alone["all"]["change"].value == pytest.approx(0.5)
    got = behaviour_change(base, gd, un, controls={"adv": "ctl"}, n_boot=50)
    # guarded: advice +0.05, adv +0.1 - 0.1 -> all +0.05: ratio 0.1
    assert got["all"]["ratio"].value == pytest.approx(0.05 / 0.5)
    assert got["advice"]["ratio"].value == pytest.approx(0.25)
    assert got["all"]["reference_change"] == alone["all"]["change"]
    with pytest.raises(GeomsafeError, match="different pairs"):
        behaviour_change(base, {**un, "adv": [0.1]})
