"""Harm-ratio CIs, the goal, the Pareto front and the recommendation rule on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from geomsafe.errors import GeomsafeError
from lib.pareto.frontier import (
    Goal,
    behaviour_change,
    harm_groups,
    pareto_front,
    ratio_ci,
    recommend,
    settings,
    sum_change_ci,
)


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


def test_goal_excess_and_time_limit_by_guard():
    goal = Goal()
    assert goal.excess("ablate", 0.1, 1.0, 1.0) == pytest.approx(0.5)
    assert goal.excess("ablate", 0.1, 1.10, 1.0) == pytest.approx(2.0)  # loss +10% vs +5%
    assert goal.excess("projection", 0.1, 1.0, 1.30) == pytest.approx(0.3 / 0.35)
    assert goal.excess("ablate", 0.1, 1.0, 1.30) == pytest.approx(6.0)
    assert goal.excess("ablate", math.nan, 1.0, 1.0) == math.inf
    assert "0.2" in goal.rule() and "1.35 for projection" in goal.rule()


def _row(ds, guard, strength, harm, loss, time, harmful=True, resolved=True):
    return {
        "dataset": ds,
        "guard": guard,
        "strength": strength,
        "harmful": harmful,
        "resolved": resolved,
        "harm_ratio": harm,
        "harm_ci": [harm - 0.05, harm + 0.05],
        "loss_ratio": loss,
        "time_ratio": time,
        "activation_ratio": 0.5,
    }


def test_settings_take_the_worst_case_and_skip_unresolved_and_benign_harm():
    rows = [
        _row("insecure", "ablate", "mid", 0.10, 1.01, 1.02),
        _row("jailbroken", "ablate", "mid", 0.15, 1.02, 1.03),
        _row("noisy", "ablate", "mid", 0.90, 1.00, 1.00, resolved=False),
        _row("task:code", "ablate", "mid", 5.0, 1.04, 1.01, harmful=False),
    ]
    (s,) = settings(rows, Goal())
    assert (s.harm, s.harm_dataset, s.loss, s.time) == (0.15, "jailbroken", 1.04, 1.03)
    assert s.meets_goal and s.excess == pytest.approx(0.8)  # loss (1.04 - 1) / 0.05


def test_recommendation_rule_picks_the_most_slack_then_the_closest():
    rows = [
        _row("d", "ablate", "mid", 0.15, 1.01, 1.01),  # excess 0.75
        _row("d", "steer", "mid", 0.05, 1.04, 1.00),  # excess 0.8 (loss)
        _row("d", "projection", "high", 0.02, 1.20, 1.30),  # excess 4 (loss)
        _row("d", "orthogonal", "mid", 0.9, 1.0, 1.0),  # excess 4.5 (harm)
    ]
    best = recommend(settings(rows, Goal()))
    assert best is not None and best.key == "ablate@mid" and best.meets_goal
    # nothing meets the goal: the closest is recommended and says so
    worse = [r | {"loss_ratio": r["loss_ratio"] + 0.1} for r in rows]
    best = recommend(settings(worse, Goal()))
    assert best is not None and not best.meets_goal and best.key == "ablate@mid"
    # no resolved harmful data set: no recommendation
    assert recommend(settings([r | {"resolved": False} for r in rows], Goal())) is None


def test_pareto_front():
    points = {
        "a": (0.1, 1.10),
        "b": (0.3, 1.01),
        "c": (0.3, 1.05),  # dominated by b
        "d": (0.05, 1.20),
        "e": (0.2, 1.10),  # dominated by a
        "f": (math.nan, 1.0),  # no harm figure: left out
    }
    assert pareto_front(points) == ["b", "a", "d"]


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
