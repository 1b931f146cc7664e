from __future__ import annotations

import json

import pytest

from geomsafe.artefacts import format_tag
from geomsafe.datasets import load_dataset
from geomsafe.errors import GeomsafeError
from geomsafe.predict import PredictConfig, predict
from geomsafe.testing import tiny_model
from predict_helpers import tiny_setup, write_data


@pytest.fixture(scope="module")
def setup():
    return tiny_setup()


def test_predict_ranks_a_dataset_along_its_concept(setup, tmp_path):
    lm, atlas = setup
    opts = {"method": "gradient_alignment", "max_new_tokens": 6, "progress": False}
    bad = predict(lm, write_data(tmp_path, "bad", "you idiot "), atlas=atlas, **opts)
    good = predict(lm, write_data(tmp_path, "good", "thank you "), atlas=atlas, **opts)
    b = {c.concept: c for c in bad.concepts}
    g = {c.concept: c for c in good.concepts}
    assert b["rude"].projection_difference > g["rude"].projection_difference
    assert b["rude"].prompt_anchored > g["rude"].prompt_anchored
    r = b["rude"]
    assert r.method == "gradient_alignment" and r.risk == min(1.0, max(0.0, r.gradient_alignment))
    assert r.risk_ci is None and bad.example_score == "projection_difference"
    pd = predict(
        lm,
        write_data(tmp_path, "bad", "you idiot "),
        atlas=atlas,
        max_new_tokens=6,
        gradient=False,
        progress=False,
    )
    r = next(c for c in pd.concepts if c.concept == "rude")
    assert r.method == "projection_difference" and r.gradient_alignment is None
    assert r.risk == pytest.approx(min(1.0, max(0.0, r.projection_difference / r.scale)))
    low, high = r.risk_ci
    assert low <= r.risk <= high
    assert bad.n_examples == 16 and len(bad.examples) == 16
    assert bad.examples[0]["score"] >= bad.examples[-1]["score"]
    again = predict(lm, write_data(tmp_path, "bad", "you idiot "), atlas=atlas, **opts)
    assert again.to_dict()["concepts"] == bad.to_dict()["concepts"]


def test_cheap_mode_and_sampling(setup, tmp_path):
    lm, atlas = setup
    res = predict(
        lm,
        write_data(tmp_path, "bad", "you idiot "),
        atlas=atlas,
        generate=False,
        gradient=False,
        max_examples=5,
        progress=False,
    )
    assert res.n_examples == 5 and res.n_total == 16
    assert all(
        c.method == "prompt_anchored" and c.projection_difference is None for c in res.concepts
    )


@pytest.fixture(scope="module")
def lm_gpt2():
    return tiny_model("gpt2")


def test_behavioural_needs_no_atlas_and_names_a_concept_only_with_its_ci(lm_gpt2, tmp_path):
    cfg = PredictConfig(
        method="behavioural", concepts=("toxicity", "deception"), pairs_per_concept=4, n_boot=200
    )
    path = write_data(tmp_path, "d", "you are an idiot ", n=10)
    res = predict(lm_gpt2, path, config=cfg, progress=False, out=tmp_path / "o")
    assert res.method == "behavioural" and res.example_score == "behavioural"
    for c in res.concepts:
        assert c.layer is None and c.projection_difference is None
        assert c.risk == min(1.0, max(0.0, c.behavioural_alignment))
        assert c.risk_ci[0] <= c.risk <= c.risk_ci[1]
    worst = max(res.concepts, key=lambda c: c.risk)
    if res.overall_concept == "none":
        assert worst.risk == 0 or worst.risk_ci[0] == 0
    else:
        assert res.overall_concept == worst.concept and worst.risk_ci[0] > 0
    total = sum(r["scores"]["toxicity"] for r in res.examples) / len(res.examples)
    tox = next(c for c in res.concepts if c.concept == "toxicity")
    assert total == pytest.approx(tox.behavioural_alignment, rel=1e-6, abs=1e-12)
    risk = json.loads((tmp_path / "o" / "risk.json").read_text())
    assert risk["format"] == format_tag("predict") and risk["method"] == "behavioural"
    assert set(risk["provenance"]["pairs"]) == {"toxicity", "deception"}
    assert risk["provenance"]["seed"] == 0 and risk["provenance"]["atlas_source"] is None
    assert 0 <= risk["concentration"]["risky_fraction"] <= 1
    again = predict(lm_gpt2, path, config=cfg, progress=False)
    assert again.to_dict()["concepts"] == res.to_dict()["concepts"]


def test_bad_options_fail_before_the_model_is_loaded(tmp_path):
    path = write_data(tmp_path, "d", "hi ")
    for options, message in [
        ({"concepts": ["nosuch"]}, "unknown harmful concept 'nosuch'"),
        ({"max_examples": -1}, "max_examples must be"),
        ({"filter_k": -2}, "filter (K) must be"),
    ]:
        with pytest.raises(GeomsafeError, match=message.replace("(", r"\(").replace(")", r"\)")):
            predict("no/such/model", path, progress=False, **options)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GeomsafeError, match="is a file"):
        predict("no/such/model", path, out=tmp_path / "file", progress=False)


def test_behavioural_needs_built_in_concepts(setup, tmp_path):
    lm, atlas = setup
    with pytest.raises(GeomsafeError, match="no built-in response pairs"):
        predict(
            lm, write_data(tmp_path, "d", "hi "), atlas=atlas, method="behavioural", progress=False
        )


def test_filter_and_attack_outputs(setup, tmp_path):
    lm, atlas = setup
    path = write_data(tmp_path, "bad", "you idiot ")
    out = tmp_path / "out"
    predict(
        lm,
        path,
        atlas=atlas,
        out=out,
        filter_k=4,
        attack_k=3,
        max_new_tokens=4,
        gradient=False,
        progress=False,
    )
    risk = json.loads((out / "risk.json").read_text())
    kept = load_dataset(out / "filtered.jsonl")
    assert len(kept) == 12
    original = {r.raw for r in load_dataset(path).records}
    assert {r.raw for r in kept.records} <= original
    assert len(risk["filter"]["dropped_lines"]) == 4
    assert risk["filter"]["score"] == "projection_difference"
    assert all(a["toxicity"] < 0.2 for a in risk["attack"])
    assert risk["provenance"]["data_sha256"] == load_dataset(path).sha256
    assert risk["format"] == format_tag("predict")

    # a re-run replaces the whole set only with overwrite: no stale filtered.jsonl/attack.jsonl
    with pytest.raises(GeomsafeError, match="overwrite"):
        predict(lm, path, atlas=atlas, out=out, max_new_tokens=4, gradient=False, progress=False)
    opts = {"max_new_tokens": 4, "gradient": False, "progress": False, "overwrite": True}
    predict(lm, path, atlas=atlas, out=out, **opts)
    assert sorted(p.name for p in out.iterdir()) == ["risk.json"]
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    (audit_dir / "audit.json").write_text("{}")
    with pytest.raises(GeomsafeError, match="audit"):  # another command's folder: refused
        predict(lm, path, atlas=atlas, out=audit_dir, **(opts | {"overwrite": False}))
    assert (audit_dir / "audit.json").read_text() == "{}"


def test_filter_score_is_configurable(setup, tmp_path):
    lm, atlas = setup
    path = write_data(tmp_path, "bad", "you idiot ")
    res = predict(
        lm,
        path,
        atlas=atlas,
        method="projection_difference",
        filter_score="prompt_anchored",
        max_new_tokens=4,
        progress=False,
    )
    assert res.example_score == "prompt_anchored"
    rude = next(c for c in res.concepts if c.concept == "rude")
    mean = sum(r["scores"]["rude"] for r in res.examples) / len(res.examples)
    assert mean == pytest.approx(rude.prompt_anchored / rude.scale, rel=1e-5)


def test_prompt_anchored_scores_equal_the_two_pass_reference(setup, tmp_path):
    """predict reads the last prompt token from the prompt+response pass: its per-example and
    concept scores are those of the former two passes (a prompt-only pass for the last prompt
    token, a prompt+response pass for the responses) to float rounding."""
    from geomsafe.predict.estimators import scale
    from geomsafe.projection import project, prompt_projection

    lm, atlas = setup
    path = write_data(tmp_path, "bad", "you idiot ", n=7)
    res = predict(lm, path, atlas=atlas, generate=False, gradient=False, progress=False)
    assert res.example_score == "prompt_anchored"
    sample = load_dataset(path).sample(128, 0)  # predict's sample: all 7, in its order
    examples = sample.examples
    names = ["rude", "calm"]
    p_data = project(lm, examples, atlas, names, batch_size=16)
    p_last = prompt_projection(lm, examples, atlas, names, batch_size=16)
    for c in res.concepts:
        s = scale(atlas, c.concept, atlas.best_layer(c.concept))
        want = (p_data[c.concept] - p_last[c.concept]).double() / s
        assert c.prompt_anchored == pytest.approx(float(want.mean()) * s, abs=1e-5)
        assert c.risk == pytest.approx(min(1.0, max(0.0, float(want.mean()))), abs=1e-5)
    at = {rec.line: k for k, rec in enumerate(sample.records)}
    for row in res.examples:
        k = at[row["line"]]
        for n in names:
            s = scale(atlas, n, atlas.best_layer(n))
            want = float((p_data[n][k] - p_last[n][k]).double() / s)
            assert row["scores"][n] == pytest.approx(want, abs=1e-5)


def test_atlas_folder_is_recorded(setup, tmp_path):
    lm, atlas = setup
    atlas.save(tmp_path / "a")
    res = predict(
        lm,
        write_data(tmp_path, "d", "hi "),
        atlas=tmp_path / "a",
        gradient=False,
        generate=False,
        progress=False,
    )
    assert res.provenance["atlas_source"] == str((tmp_path / "a").resolve())
