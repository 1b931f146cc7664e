from __future__ import annotations

from geomsafe.report.recommend import recommend


def _risk(concept="toxicity", frac=0.3, top=0.7, risk=0.3, n=50):
    return {
        "overall_risk": risk,
        "overall_concept": concept,
        "overall_ci": [0.1, 0.4],
        "n_examples": n,
        "example_score": "behavioural",
        "concentration": {"risky_fraction": frac, "top10_share": top},
        "concepts": [{"concept": "toxicity", "risk": risk}],
    }


def _text(**kw) -> str:
    return " ".join(recommend(None, _risk(**kw), None, None))


def test_a_wholly_risky_set_is_rejected_not_filtered():
    text = _text(frac=0.95, top=0.15)
    assert "Reject" in text and "--filter" not in text and "orthogonal" not in text


def test_a_concentrated_risk_is_filtered():
    text = _text(frac=0.3, top=0.7, n=50)
    assert "--filter 5 --filter-score behavioural" in text and "Reject" not in text


def test_a_spread_risk_is_not_filtered():
    text = _text(frac=0.5, top=0.2)
    assert "will not remove it" in text and "--filter" not in text


def test_no_named_concept_means_no_action_and_no_guard():
    lines = recommend(None, _risk(concept="none", risk=0.0), None, None)
    assert len(lines) == 1 and "no reason to filter" in lines[0]


def test_guard_advice_only_from_measured_effects():
    assert "No guard has been measured" in _text()

    def row(task, guard, low, high):
        change = {"value": (low + high) / 2, "ci_low": low, "ci_high": high}
        return {
            "task": task,
            "guard": guard,
            "toxic_increase_pp": change,
            "measured_shift": 1.0,
            "final_loss": 1.0,
        }

    bench = {
        "rows": [
            row("a", "none", 2.0, 6.0),
            row("a", "orthogonal", -3.0, -1.0),
            row("a", "steer", -1.0, 1.0),
            row("b", "none", -1.0, 3.0),
            row("b", "projection", -5.0, -4.0),
        ]
    }
    text = " ".join(recommend(None, _risk(), None, None, bench))
    assert "guard 'steer'" in text and "--guard steer" in text
    assert "--guard orthogonal" not in text and "--guard projection" not in text
    bench["rows"] = bench["rows"][:2] + bench["rows"][3:]
    text = " ".join(recommend(None, _risk(), None, None, bench))
    assert "No guard has been measured to help here (the guard benchmark" in text
