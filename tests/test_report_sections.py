"""The report reads the CIs of every eval.json / bench.json / audit.json version: the one layout
(``CI.to_dict``, version 2) and the layouts before it give the same figures."""

from __future__ import annotations

from geomsafe.bench.table import cells
from geomsafe.evaluate.result import Change, Metric
from geomsafe.report.recommend import _toxic_change
from geomsafe.report.sections import _ci3, evaluation_section
from geomsafe.stats import CI

BEFORE, AFTER, DELTA = (
    CI(0.1, 0.05, 0.15, 40, 200),
    CI(0.3, 0.2, 0.4, 40, 200),
    CI(0.2, 0.1, 0.3, 40, 200),
)

# geomsafe.eval/1: a metric and a change as written before the one CI layout (literal)
OLD_METRIC = {
    "label": "toxic-output rate",
    "kind": "rate",
    "value": 0.3,
    "ci_low": 0.2,
    "ci_high": 0.4,
    "n_units": 40,
    "n_values": 80,
    "n_boot": 200,
    "detail": False,
    "concept": "toxicity",
    "units": {"a": [0.3]},
}
OLD_BEFORE = {**OLD_METRIC, "value": 0.1, "ci_low": 0.05, "ci_high": 0.15}
OLD_CHANGE = {
    "label": "toxic-output rate",
    "kind": "rate",
    "before": 0.1,
    "after": 0.3,
    "delta": 0.2,
    "delta_ci_low": 0.1,
    "delta_ci_high": 0.3,
    "delta_pp": 20.0,
    "delta_pp_ci": [10.0, 30.0],
    "n_paired": 40,
}


def _evaluation(metric, before, change):
    return {
        "model": {"metrics": {"toxic_rate": metric}},
        "before": {"metrics": {"toxic_rate": before}},
        "changes": {"toxic_rate": change},
    }


def test_eval_files_of_both_layouts_give_the_same_section():
    m = Metric("toxic_rate", "toxic-output rate", "rate", {"a": [0.3]}, AFTER, concept="toxicity")
    b = Metric("toxic_rate", "toxic-output rate", "rate", {"a": [0.1]}, BEFORE, concept="toxicity")
    c = Change("toxic_rate", "toxic-output rate", "rate", BEFORE, AFTER, DELTA, 40)
    new = _evaluation(m.to_dict(), b.to_dict(), c.to_dict())
    assert new["model"]["metrics"]["toxic_rate"]["ci"] == AFTER.to_dict()
    assert new["changes"]["toxic_rate"]["delta"] == DELTA.to_dict()
    old = _evaluation(OLD_METRIC, OLD_BEFORE, OLD_CHANGE)
    got_new, got_old = evaluation_section(new)["rows"], evaluation_section(old)["rows"]
    assert got_new == got_old
    assert got_old[0]["change"] == [20.0, 10.0, 30.0] and got_old[0]["n"] == 40
    assert _toxic_change(old) == _toxic_change(new) == (20.0, 10.0, 30.0)
    assert Metric.from_dict("toxic_rate", OLD_METRIC).ci == AFTER  # --baseline an old eval.json


def test_bench_and_audit_rows_of_both_layouts():
    old_cell = {"value": 12.5, "ci_low": 2.0, "ci_high": 20.0}  # geomsafe.bench/1
    new_cell = CI(12.5, 2.0, 20.0, 40, 200).to_dict()
    assert _ci3(old_cell) == _ci3(new_cell) == [12.5, 2.0, 20.0]
    row = {
        "model": "m",
        "task": "t",
        "guard": "none",
        "toxic_increase_pp": old_cell,
        "behaviour_change": None,
        "overlap": {"score": 0.4, "harmful": "h", "p_value": 0.01},
        "predicted_shift": 0.1,
        "measured_shift": 0.2,
        "final_loss": 1.0,
    }
    assert cells(row) == cells({**row, "toxic_increase_pp": new_cell})
    assert cells(row)[3] == "+12.5 [+2.0, +20.0]"
    old_row = {"target": "t", "score": 0.4, "ci_low": 0.3, "ci_high": 0.5, "n_boot": 20}
    new_row = {"target": "t", "score": 0.4, "ci": CI(0.4, 0.3, 0.5, 10, 20).to_dict()}
    for r in (old_row, new_row):
        assert CI.at(r, "ci").low == 0.3 and CI.at(r, "ci").high == 0.5
