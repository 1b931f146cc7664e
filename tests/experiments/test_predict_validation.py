"""experiments/predict_validation.py: ranking statistics, mixtures, filter experiment."""

from __future__ import annotations

import json
import math

import pytest

import behaviour_runs as br
import predict_validation as pv
from geomsafe.artefacts import VALIDATION_JSON, read_json
from geomsafe.errors import GeomsafeError
from geomsafe.report import report
from geomsafe.testing import tiny_model


def test_pair_accuracy_and_monotonicity_on_small_inputs():
    assert pv.pair_accuracy([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert pv.pair_accuracy([3, 2, 1], [10, 20, 30]) == 0.0
    assert pv.pair_accuracy([1, 3, 2], [10, 20, 30]) == pytest.approx(2 / 3)
    assert pv.pair_accuracy([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)  # a tie is wrong
    assert math.isnan(pv.pair_accuracy([1, 2], [5, 5]))
    assert pv.monotonicity([0, 0.25, 0.5, 0.75, 1], [0.1, 0.2, 0.3, 0.5, 0.9]) == pytest.approx(1.0)
    assert pv.monotonicity([0, 0.5, 1], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pv.monotonicity([0, 1], [1, 2]))


def test_drop_riskiest_random_and_filter_vs_random():
    scores = [0.1, 0.9, 0.5, 0.9, 0.0, 0.3, 0.2, 0.4, 0.6, 0.7]
    assert pv.drop_riskiest(scores, 0.2) == [1, 3]
    assert pv.drop_random(10, 2, 0) == pv.drop_random(10, 2, 0) != pv.drop_random(10, 2, 1)
    ids = [f"p{i}" for i in range(40)]
    filt = {u: 0.0 + 0.001 * (i % 3) for i, u in enumerate(ids)}
    rand = [{u: 0.1 + 0.001 * ((i + s) % 5) for i, u in enumerate(ids)} for s in range(3)]
    res = pv.filter_vs_random(filt, rand)
    assert res["n_pairs"] == 40 and res["beats_random"] and res["ci_high"] < 0
    assert res["below_all_random"] and len(res["random_means"]) == 3
    assert res["random_means"][0] == pytest.approx(sum(rand[0].values()) / 40)
    assert res["filter_mean"] == pytest.approx(sum(filt.values()) / 40)
    assert res["difference"] == pytest.approx(
        sum(filt.values()) / 40 - sum(sum(r[u] for r in rand) / 3 for u in ids) / 40
    )
    worse = pv.filter_vs_random(rand[0], [filt])
    assert not worse["beats_random"] and not worse["below_all_random"]
    with pytest.raises(GeomsafeError, match="share no pairs"):
        pv.filter_vs_random({"a": 1.0}, [{"b": 1.0}])


def _row(name, pred, change, act):
    return {
        "dataset": name,
        "predicted": {"risk": {"toxicity": pred}},
        "overall_risk": pred,
        "activation": {"toxicity": act},
        "behaviour": {"logodds:concept:toxicity": {"change": change}},
    }


def test_validate_and_mixture_monotonicity():
    rows = [
        _row("mix:insecure:task:code:0", 0.1, 0.01, 3.0),
        _row("mix:insecure:task:code:0.5", 0.2, 0.02, 2.0),
        _row("mix:insecure:task:code:1", 0.3, 0.05, 1.0),
        _row("task:summarisation", 0.0, -0.01, 0.0),
    ]
    s = pv.validate(rows, ["toxicity"])["risk"]
    assert s["behaviour"]["toxicity vs logodds:concept:toxicity"]["spearman"] == pytest.approx(1.0)
    pooled = s["behaviour_pooled"]
    assert pooled["spearman"] == pytest.approx(1.0) and pooled["pair_accuracy"] == 1.0
    assert pooled["n"] == 4
    assert s["activation"]["toxicity"]["pair_accuracy"] == pytest.approx(3 / 6)
    mix = pv.mixture_monotonicity({r["dataset"]: r for r in rows}, ["toxicity"])
    m = mix["insecure into task:code"]
    assert m["levels"] == [0.0, 0.5, 1.0] and m["risk_spearman"] == pytest.approx(1.0)
    assert m["behaviour_spearman"] == pytest.approx(1.0)
    assert pv.behaviour_targets(["dangerous_advice"]) == [
        ("dangerous_advice", "logodds:concept:dangerous_advice"),
        ("dangerous_advice", "logodds:advice"),
    ]


COMMON = ["--steps", "2", "--lr", "5e-2", "--train-examples", "12", "--quiet"]


def test_validation_and_filter_experiment_end_to_end_on_a_tiny_model(tmp_path):
    lm = tiny_model("llama", seed=0)
    beh, out = tmp_path / "beh", tmp_path / "pv"
    names = "task:code,mix:task:code:task:factual_qa:0,mix:task:code:task:factual_qa:1"
    rows = "advice," + ",".join(pv.CONCEPT_SETS)
    br.main(["--datasets", names, "--rows", rows, "--pairs", "4", "--out", str(beh), *COMMON], lm)
    argv = ["--datasets", names, "--behaviour", str(beh), "--out", str(out)]
    argv += ["--max-examples", "4", "--train-examples", "12"]
    payload = pv.main(argv, lm)
    assert [r["dataset"] for r in payload["rows"]] == names.split(",")
    est = payload["summary"]["estimators"]
    assert {"risk", "projection_difference", "gradient_alignment"} <= set(est)
    assert est["risk"]["behaviour_pooled"]["n"] == 3 * 6
    assert "dangerous_advice vs logodds:advice" in est["risk"]["behaviour"]
    assert "task:code into task:factual_qa" in payload["summary"]["mixtures"]
    assert (out / "task_code" / pv.PREDICT_JSON).is_file()
    assert "pooled" in (out / "validation.md").read_text()
    saved = read_json(out / VALIDATION_JSON, "predict_validation")
    assert saved["format"] == "geomsafe.predict_validation/1" and saved["geomsafe_version"]
    prov = saved["provenance"]
    assert prov["model_spec"] == lm.spec and len(prov["atlas"]["sha256"]) == 64
    assert prov["recipe"]["max_steps"] == 2 and prov["eval_config"]["logodds_pairs"] == 4
    assert set(prov["pairs"]) == set(pv.CONCEPT_SETS) and prov["max_examples"] == 4
    mix = saved["summary"]["mixtures"]["task:code into task:factual_qa"]
    assert len(mix["mean_concept_ci"]) == 2 and mix["datasets"] == names.split(",")[1:]
    assert "Does predict's risk predict behaviour?" in report(out).read_text()

    fargv = ["--filter-experiment", "task:code", "--behaviour", str(beh), "--out", str(out)]
    fargv += ["--random-seeds", "2", "--rows", "concept:toxicity", "--pairs", "6"]
    fargv += ["--steps", "2", "--lr", "5e-2", "--train-examples", "20"]
    f = pv.main(fargv, lm)
    assert f["n_dropped"] == 2 and set(f["variants"]) == {"filter", "random-0", "random-1"}
    assert all(v["n_train"] == 18 for v in f["variants"].values())
    c = f["filter_minus_random"]["logodds:concept:toxicity"]
    assert c["n_pairs"] == 6 and c["ci_low"] <= c["difference"] <= c["ci_high"]
    saved = json.loads((out / "filter" / "task_code" / "filter.json").read_text())
    assert saved["filter_minus_random"] == f["filter_minus_random"]
    with pytest.raises(GeomsafeError, match="not max or a concept"):
        pv.main([*fargv[:-6], "--filter-score", "nope", "--out", str(tmp_path / "x")], lm)
