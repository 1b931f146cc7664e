"""The report shows a predict-validation folder: dose-response curve, pooled scatter, goals."""

from __future__ import annotations

import json
import math

import pytest

import predict_validation as pv
from geomsafe.artefacts import VALIDATION_JSON, kind_of, read_json, write_json
from geomsafe.errors import GeomsafeError
from geomsafe.report import report
from geomsafe.report.validation import GOALS, level_ci, section
from geomsafe.stats import mean_change_ci

CONCEPTS = ["toxicity", "deception"]
LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _row(name, risk, change, half=0.01):
    """One data set as validation_row returns it (risk per concept, change per concept row
    with its per-pair changes, spread by ``half`` around the change)."""
    beh = {
        f"logodds:concept:{c}": {
            "change": change + k * 0.001,
            "ci_low": change + k * 0.001 - half,
            "ci_high": change + k * 0.001 + half,
            "pair_changes": {
                f"p{i}": change + k * 0.001 + d * half for i, d in enumerate((-1, -0.5, 0.5, 1))
            },
        }
        for k, c in enumerate(CONCEPTS)
    }
    pred = {c: risk + k * 0.001 for k, c in enumerate(CONCEPTS)}
    return {
        "dataset": name,
        "predicted": {"risk": pred, "projection_difference": {c: -v for c, v in pred.items()}},
        "overall_risk": max(pred.values()),
        "overall_concept": "deception",
        "activation": dict.fromkeys(CONCEPTS, 0.0),
        "behaviour": beh,
    }


def _payload(mix_risk, mix_change, tasks=((0.05, 0.0), (0.3, 0.2), (0.6, 0.4))):
    rows = [
        _row(f"mix:insecure:task:code:{f:g}", r, c)
        for f, r, c in zip(LEVELS, mix_risk, mix_change, strict=True)
    ]
    rows += [_row(f"task:t{i}", r, c) for i, (r, c) in enumerate(tasks)]
    payload = pv.summarise(rows, CONCEPTS)
    return {**payload, "provenance": {"model_spec": "tiny"}, "command": "python pv.py"}


def test_level_ci_is_the_mean_change_bootstrap_over_the_rows_pairs():
    beh = {
        "a": {"change": 1.0, "pair_changes": {"p1": 0.7, "p2": 1.0, "p3": 1.3}},
        "b": {"change": 3.0, "pair_changes": {"q1": 2.6, "q2": 3.4}},
        "old": {"change": 2.0, "ci_low": 1.5, "ci_high": 2.5},  # no per-pair changes kept
    }
    low, high = level_ci(beh, ["a", "b"])
    ci = mean_change_ci({"a": [0.7, 1.0, 1.3], "b": [2.6, 3.4]})
    assert (low, high) == (ci.low, ci.high) and ci.value == pytest.approx(2.0)
    assert low < 2.0 < high
    for rows in (["a", "missing"], ["a", "old"], []):
        assert all(math.isnan(v) for v in level_ci(beh, rows))


def test_missed_goals_are_sentences_and_the_plots_are_inline_svg(tmp_path):
    # risk falls at the last level (mixture Spearman 0.9: meets the goal), behaviour rises
    payload = _payload([0.1, 0.2, 0.3, 0.5, 0.4], [0.0, 0.1, 0.2, 0.3, 0.5])
    mix = payload["summary"]["mixtures"]["insecure into task:code"]
    assert mix["risk_spearman"] == pytest.approx(0.9)
    assert mix["behaviour_spearman"] == pytest.approx(1.0)
    assert len(mix["mean_concept_ci"]) == 5
    write_json(tmp_path / VALIDATION_JSON, payload, "predict_validation")
    html = report(tmp_path).read_text()
    assert "Does predict's risk predict behaviour?" in html
    assert "dose-response" in html
    sec = section(payload)
    assert sec["dose_plot"].startswith("<svg") and sec["scatter"].startswith("<svg")
    assert html.count("<svg") >= 2
    assert "insecure into task:code (ρ=0.90)" in html and "(ρ=1.00)" in html  # the legends
    pooled = payload["summary"]["estimators"]["risk"]["behaviour_pooled"]
    assert f"{pooled['spearman']:.3f}" in html and f"{pooled['p']:.2g}" in html
    assert f"{pooled['pair_accuracy']:.3f}" in html
    # the risk Spearman 0.9 meets the goal (≥ 0.9); the pooled ranking does not (ties, noise)
    assert not any("predicted risk does not rise" in m for m in sec["missed"])

    worse = _payload([0.1, 0.3, 0.2, 0.5, 0.4], [0.0, 0.1, 0.2, 0.3, 0.5])
    write_json(tmp_path / VALIDATION_JSON, worse, "predict_validation")
    html = report(tmp_path).read_text()
    risk_rho = worse["summary"]["mixtures"]["insecure into task:code"]["risk_spearman"]
    assert (
        "Goal missed: predicted risk does not rise with the fraction of insecure into task:code "
        f"(Spearman over the levels {risk_rho:.2f}, goal ≥ 0.9)" in html
    )
    assert "All goals met" not in html


def test_all_goals_met_and_a_changed_goal_in_the_file(tmp_path):
    payload = _payload([0.1, 0.2, 0.3, 0.4, 0.5], [0.0, 0.1, 0.2, 0.3, 0.5])
    sec = section(payload)
    assert sec["default"]["spearman"] >= GOALS["pooled_spearman"]
    assert (
        sec["missed"] == []
        and sec["mixtures"][0]["ci"][0][0] < 0.0 < sec["mixtures"][0]["ci"][0][1]
    )
    write_json(tmp_path / VALIDATION_JSON, payload, "predict_validation")
    assert "All goals met" in report(tmp_path).read_text()
    strict = section({**payload, "goals": {**GOALS, "pooled_spearman": 1.01}})
    assert [m for m in strict["missed"] if "pooled Spearman" in m]


def test_stamp_round_trips_and_an_old_unstamped_file_is_read_by_name(tmp_path):
    payload = _payload([0.1, 0.2, 0.3, 0.4, 0.5], [0.0, 0.1, 0.2, 0.3, 0.5])
    path = write_json(tmp_path / VALIDATION_JSON, payload, "predict_validation")
    back = read_json(path, "predict_validation")
    assert back["format"] == "geomsafe.predict_validation/1" and "geomsafe_version" in back
    assert kind_of(back, path) == ("predict_validation", 1)
    assert back["provenance"] == {"model_spec": "tiny"} and back["rows"] == json.loads(
        json.dumps(payload["rows"])
    )
    with pytest.raises(GeomsafeError, match="not a geomsafe pareto file"):
        read_json(path, "pareto")

    # before the stamp: no format, concepts, per-level CI or p-value; known by its name
    old = json.loads(json.dumps(payload))
    for key in ("concepts", "default_estimator", "goals", "provenance"):
        old.pop(key)
    for m in old["summary"]["mixtures"].values():
        m.pop("mean_concept_ci"), m.pop("datasets")
    for s in old["summary"]["estimators"].values():
        s["behaviour_pooled"].pop("p")
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / VALIDATION_JSON).write_text(json.dumps(old))
    assert kind_of(old, old_dir / VALIDATION_JSON) == ("predict_validation", None)
    sec, new = section(old), section(payload)
    assert sec["concepts"] == sorted(CONCEPTS)
    flat = [[v for ci in sec_["mixtures"][0]["ci"] for v in ci] for sec_ in (sec, new)]
    assert flat[0] == pytest.approx(flat[1])
    assert sec["estimators"][0]["p"] == pytest.approx(new["estimators"][0]["p"])
    assert "dose-response" in report(old_dir).read_text()


def test_a_malformed_file_is_a_one_line_error(tmp_path):
    (tmp_path / VALIDATION_JSON).write_text(json.dumps({"rows": []}))
    with pytest.raises(GeomsafeError, match="not a well-formed predict_validation result"):
        report(tmp_path)
    (tmp_path / VALIDATION_JSON).write_text(json.dumps({"format": "geomsafe.pareto/1"}))
    with pytest.raises(GeomsafeError, match="not a geomsafe predict_validation file"):
        report(tmp_path)


def test_no_mixture_says_so(tmp_path):
    rows = [_row(f"task:t{i}", r, c) for i, (r, c) in enumerate([(0.1, 0.0), (0.2, 0.1)])]
    payload = pv.summarise(rows, CONCEPTS)
    sec = section(payload)
    assert sec["dose_plot"] is None
    assert any("Dose-response goal not checked" in m for m in sec["missed"])
    write_json(tmp_path / VALIDATION_JSON, payload, "predict_validation")
    assert "No dose-response mixture" in report(tmp_path).read_text()
