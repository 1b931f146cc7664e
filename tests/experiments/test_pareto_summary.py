"""Per-cell ratios and the markdown of a Pareto folder from hand-made cell files."""

from __future__ import annotations

import numpy as np
import pytest

from geomsafe.errors import GeomsafeError
from lib.pareto.summary import cell_rows, markdown, summarise

BASE = {
    "logodds": {"advice": [0.0, 0.1, -0.1, 0.0], "heldout:tox": [1.0, 1.0]},
    "projection": {"tox": [0.0, 0.0], "dec": [1.0, 1.0]},
}


def _cell(ds, guard, shift, proj, loss, harmful=True, time=1.0, strength="mid"):
    return {
        "cell": {"dataset": ds, "guard": guard, "strength": strength if guard != "none" else "-"},
        "harmful": harmful,
        "logodds": {k: list(np.add(v, shift[k])) for k, v in BASE["logodds"].items()},
        "projection": proj,
        "heldout_loss": loss,
        "time": {"ratio": time, "train_step_s": 0.1},
    }


UN = _cell(
    "insecure",
    "none",
    {"advice": [0.10, 0.12, 0.08, 0.10], "heldout:tox": [0.2, 0.2]},
    {"tox": [0.4, 0.6], "dec": [1.5, 1.5]},
    2.0,
)
AB = _cell(
    "insecure",
    "ablate",
    {"advice": [0.01, 0.012, 0.008, 0.01], "heldout:tox": [0.1, 0.1]},
    {"tox": [0.1, 0.1], "dec": [1.0, 1.0]},
    2.04,
    time=1.02,
)


def test_cell_rows_ratios():
    (row,) = cell_rows(BASE, [UN, AB], ["advice"], n_boot=100)
    assert row["harm_ratio"] == pytest.approx(0.1)
    assert row["harm"]["heldout:tox"]["value"] == pytest.approx(0.5)
    assert row["harm"]["all"]["value"] == pytest.approx((0.01 + 0.1) / (0.1 + 0.2))
    assert row["resolved"]
    assert row["activation_ratio"] == pytest.approx(0.1 / (0.5 + 0.5))
    assert row["loss_ratio"] == pytest.approx(1.02)
    assert row["time_ratio"] == 1.02
    (pooled,) = cell_rows(BASE, [UN, AB], ["all"], n_boot=100)
    assert pooled["harm_ratio"] == pytest.approx(row["harm"]["all"]["value"])


def test_a_data_set_without_its_unguarded_cell_is_skipped():
    assert cell_rows(BASE, [AB], ["advice"]) == []


def test_summary_and_markdown():
    s = summarise(BASE, [UN, AB], n_boot=100)
    assert s["recommended"]["key"] == "ablate@mid"
    assert s["recommended"]["meets_goal"]  # 0.1 harm, +4% loss, +2% time
    assert s["front"] == ["ablate@mid"]
    md = markdown(s)
    assert "Recommended default: **ablate@mid** (meets the goal)" in md
    assert "| insecure | ablate | mid | 0.100" in md


def test_a_style_controlled_row():
    """With ``controls`` in the base, the row's harm measure is its change minus its control's:
    ``all`` and the rule use it, and the control row is no harm measure of its own."""
    base = {**BASE, "controls": {"advice": "heldout:tox"}}
    (row,) = cell_rows(base, [UN, AB], ["all"], n_boot=100)
    un = 0.1 - 0.2  # advice change minus its control's change, unguarded
    ab = 0.01 - 0.1
    assert row["harm"]["advice-controlled"]["value"] == pytest.approx(ab / un)
    assert row["harm"]["all"]["value"] == pytest.approx(ab / un)
    assert row["harm_ratio"] == pytest.approx(ab / un)
    assert row["unguarded_change"]["value"] == pytest.approx(un)
    assert not row["resolved"]  # the controlled change is negative here
    (named,) = cell_rows(base, [UN, AB], ["advice-controlled"], n_boot=100)
    assert named["harm"]["rule"] == row["harm"]["rule"]
    (plain,) = cell_rows(base, [UN, AB], ["advice"], n_boot=100)
    assert plain["harm_ratio"] == pytest.approx(0.1)  # a row by its name stays uncontrolled
    assert summarise(base, [UN, AB], n_boot=100)["controls"] == {"advice": "heldout:tox"}
    with pytest.raises(GeomsafeError, match="none of the rule rows"):
        cell_rows(base, [UN, AB], ["nope"])


def test_the_resolved_rule_leaves_out_rows_the_unguarded_run_did_not_raise():
    """An unresolved row that the guard pushes far below the base would offset the harm left
    on a resolved row in ``all``; the ``resolved`` rule judges the resolved rows only."""
    base = {"logodds": {"a": [0.0] * 4, "n": [0.0] * 4}, "projection": BASE["projection"]}

    def cell(guard, a, n):
        c = _cell("jb", guard, {"advice": [0] * 4, "heldout:tox": [0] * 2}, BASE["projection"], 2)
        return {**c, "logodds": {"a": a, "n": n}}

    un = cell("none", [0.1, 0.12, 0.08, 0.1], [0.3, -0.3, 0.2, -0.2])
    ab = cell("ablate", [0.05] * 4, [-1.0] * 4)
    (pooled,) = cell_rows(base, [un, ab], ["all"], n_boot=200)
    assert pooled["harm_ratio"] == pytest.approx((0.05 - 1.0) / 0.1)
    (row,) = cell_rows(base, [un, ab], ["resolved"], n_boot=200)
    assert row["harm_ratio"] == pytest.approx(0.5)
    assert row["rule_measures"] == ["a"] and row["resolved"]
    assert row["harm"]["all"]["value"] == pytest.approx(pooled["harm_ratio"])


def test_the_time_ratio_pairs_the_steps_by_batch():
    """Steps of unequal length (the same batches in both lists) move a ratio of medians; the
    summed times of the same steps do not."""
    timed = {**AB, "time": {"ratio": 9.0, "guarded_s": [1.1, 5.5, 2.2], "unguarded_s": [1, 5, 2]}}
    (row,) = cell_rows(BASE, [UN, timed], ["advice"], n_boot=50)
    assert row["time_ratio"] == pytest.approx(8.8 / 8.0)
    assert row["time_ratio_median"] == 9.0
    (old,) = cell_rows(BASE, [UN, AB], ["advice"], n_boot=50)  # no step times kept: its ratio
    assert old["time_ratio"] == 1.02


def test_a_control_shared_by_two_rows_is_subtracted_for_each():
    base = {"logodds": {r: [0.0] * 3 for r in ("h1", "h2", "c")}, "projection": BASE["projection"]}
    base["controls"] = {"h1": "c", "h2": "c"}

    def cell(guard, h, c):
        made = _cell(
            "jb", guard, {"advice": [0] * 4, "heldout:tox": [0] * 2}, BASE["projection"], 2
        )
        return {**made, "logodds": {"h1": [h] * 3, "h2": [h] * 3, "c": [c] * 3}}

    un, guarded = cell("none", 0.3, 0.1), cell("steer", 0.2, 0.1)
    (row,) = cell_rows(base, [un, guarded], ["all"], n_boot=50)
    assert row["unguarded_change"]["value"] == pytest.approx((0.3 - 0.1) * 2)
    assert row["harm_ratio"] == pytest.approx((0.1 + 0.1) / 0.4)
    (named,) = cell_rows(base, [un, guarded], ["h1-controlled", "h2-controlled"], n_boot=50)
    assert named["harm_ratio"] == pytest.approx(row["harm_ratio"])
    assert named["rule_measures"] == ["h1-controlled", "h2-controlled"]


def test_the_worst_rule_lets_no_measure_offset_another():
    """Two resolved rows: the guard pushes one far below the base and keeps the other's harm.
    Their summed change reads as a cut; the worst measure does not."""
    base = {"logodds": {"a": [0.0] * 4, "b": [0.0] * 4}, "projection": BASE["projection"]}

    def cell(guard, a, b):
        c = _cell("jb", guard, {"advice": [0] * 4, "heldout:tox": [0] * 2}, BASE["projection"], 2)
        return {**c, "logodds": {"a": a, "b": b}}

    un = cell("none", [0.1, 0.12, 0.08, 0.1], [0.2, 0.22, 0.18, 0.2])
    steer = cell("steer", [0.09] * 4, [-0.5] * 4)
    (worst,) = cell_rows(base, [un, steer], ["resolved"], n_boot=200)
    assert worst["rule_measures"] == ["a", "b"] and worst["worst_measure"] == "a"
    assert worst["harm_ratio"] == pytest.approx(0.9)
    assert worst["harm"]["rule"] == worst["harm"]["a"] == worst["harm"]["rule:worst"]
    (summed,) = cell_rows(base, [un, steer], ["resolved"], n_boot=200, harm_rule="sum")
    assert summed["harm_ratio"] == pytest.approx((0.09 - 0.5) / 0.3)
    assert summed["harm"]["rule:worst"] == worst["harm"]["rule"]
    s = summarise(base, [un, steer], rule_rows=["resolved"], n_boot=200)
    assert s["harm_rule"] == "worst" and not s["recommended"]["meets_goal"]
    assert "the largest ratio among the rule measures" in markdown(s)
    assert summarise(base, [un, steer], rule_rows=["resolved"], n_boot=200, harm_rule="sum")[
        "recommended"
    ]["harm"] == pytest.approx(summed["harm_ratio"])
    with pytest.raises(GeomsafeError, match="harm rule must be one of"):
        cell_rows(base, [un, steer], ["resolved"], harm_rule="mean")


def test_the_recommendation_is_taken_among_settings_measured_on_every_data_set():
    """A setting run on one data set of two has a milder worst case; it is not recommended
    over a setting measured on both."""
    zero = {"advice": [0.0] * 4, "heldout:tox": [0.0] * 2}
    un_code = _cell("code", "none", zero, BASE["projection"], 1.0, harmful=False)
    ab_code = _cell("code", "ablate", zero, BASE["projection"], 1.01, harmful=False)
    steer = _cell(
        "insecure",
        "steer",
        {"advice": [0.001] * 4, "heldout:tox": [0.0] * 2},
        {"tox": [0.0, 0.0], "dec": [1.0, 1.0]},
        2.0,
    )
    s = summarise(BASE, [UN, AB, un_code, ab_code, steer], n_boot=100)
    assert s["datasets"] == ["code", "insecure"] and s["complete_settings"] == ["ablate@mid"]
    assert s["recommended"]["key"] == "ablate@mid"
    by_key = {x["key"]: x for x in s["settings"]}
    assert by_key["steer@mid"]["excess"] < by_key["ablate@mid"]["excess"]
    assert list(by_key["steer@mid"]["datasets"]) == ["insecure"]
    md = markdown(s)
    assert "| steer@mid | 1 of 2 |" in md and "measured on every data set: ablate@mid" in md
    # without a complete setting that has a harm figure, every setting is a candidate
    assert summarise(BASE, [UN, steer, un_code], n_boot=100)["recommended"]["key"] == "steer@mid"
