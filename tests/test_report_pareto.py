"""The report shows a guard Pareto folder: frontier plot, settings, recommendation."""

from __future__ import annotations

import json

from geomsafe.report import report
from geomsafe.report.pareto import section
from lib.pareto import summarise

BASE = {"logodds": {"advice": [0.0, 0.0, 0.0]}, "projection": {"tox": [0.0, 0.0]}}


def _cell(guard, strength, change, loss, time=1.0):
    return {
        "cell": {"dataset": "insecure", "guard": guard, "strength": strength},
        "harmful": True,
        "logodds": {"advice": change},
        "projection": {"tox": [1.0, 1.0]},
        "heldout_loss": loss,
        "time": {"ratio": time, "train_step_s": 0.1},
    }


def _summary():
    cells = [
        _cell("none", "-", [0.1, 0.12, 0.08], 2.0),
        _cell("ablate", "mid", [0.01, 0.012, 0.008], 2.02, 1.01),
        _cell("projection", "high", [0.0, 0.001, 0.0], 2.4, 1.3),
        _cell("steer", "low", [0.09, 0.1, 0.08], 2.0, 1.0),
    ]
    return {**summarise(BASE, cells, n_boot=50), "command": "python experiments/guard_pareto.py"}


def test_section_and_report(tmp_path):
    summary = _summary()
    sec = section(summary)
    assert sec["plot"].startswith("<svg") and sec["recommended"]["key"] == "ablate@mid"
    assert [s["key"] for s in sec["settings"]][0] == "ablate@mid"
    (tmp_path / "pareto.json").write_text(json.dumps(summary))
    html = report(tmp_path).read_text()
    assert "Guard Pareto frontier" in html
    assert "Recommended default: <b>ablate@mid</b> (meets the goal)" in html
    assert "projection@high" in html and "python experiments/guard_pareto.py" in html
    assert "harm per data set: the largest ratio among the rule measures" in html


def test_no_recommendation_when_nothing_is_resolved(tmp_path):
    cells = [_cell("none", "-", [0.0, 0.0, 0.0], 2.0), _cell("ablate", "mid", [0.0] * 3, 2.0)]
    (tmp_path / "pareto.json").write_text(json.dumps(summarise(BASE, cells, n_boot=20)))
    assert "No recommendation" in report(tmp_path).read_text()
