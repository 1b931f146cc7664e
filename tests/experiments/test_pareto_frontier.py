"""The goal, the Pareto front and the recommendation rule on tiny inputs."""

from __future__ import annotations

import math

import pytest

from lib.pareto.frontier import Goal, pareto_front, recommend, settings


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
