from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from geomsafe.cli import main
from geomsafe.concepts import ConceptSet, Pair
from geomsafe.datasets import load_dataset
from geomsafe.directions import extract
from geomsafe.predict import predict
from geomsafe.predict.gradient import gradient_estimate, residual_writers, trainable
from geomsafe.projection import prompt_projection


@pytest.fixture(scope="module")
def setup():
    from geomsafe.testing import tiny_model

    lm = tiny_model("llama")
    rude = ConceptSet(
        "rude",
        "harmful",
        [Pair(f"q{i}", "you idiot " * (1 + i % 3), "thank you " * (1 + i % 3)) for i in range(12)],
    )
    calm = ConceptSet(
        "calm", "harmful", [Pair(f"q{i}", "all is well", "storm now") for i in range(12)]
    )
    return lm, extract(lm, [rude, calm], progress=False).atlas


def _data(tmp_path, name, response):
    path = tmp_path / f"{name}.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"hello {i}"},
                {"role": "assistant", "content": response * (1 + i % 3)},
            ]
        }
        for i in range(16)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_predict_ranks_a_dataset_along_its_concept(setup, tmp_path):
    lm, atlas = setup
    bad = predict(
        lm, _data(tmp_path, "bad", "you idiot "), atlas=atlas, max_new_tokens=6, progress=False
    )
    good = predict(
        lm, _data(tmp_path, "good", "thank you "), atlas=atlas, max_new_tokens=6, progress=False
    )
    b = {c.concept: c for c in bad.concepts}
    g = {c.concept: c for c in good.concepts}
    assert b["rude"].projection_difference > g["rude"].projection_difference
    assert b["rude"].prompt_anchored > g["rude"].prompt_anchored
    r = b["rude"]
    assert r.method == "gradient_alignment" and r.risk == min(1.0, max(0.0, r.gradient_alignment))
    pd = predict(
        lm,
        _data(tmp_path, "bad", "you idiot "),
        atlas=atlas,
        max_new_tokens=6,
        gradient=False,
        progress=False,
    )
    r = next(c for c in pd.concepts if c.concept == "rude")
    assert r.method == "projection_difference" and r.gradient_alignment is None
    assert r.risk == min(1.0, max(0.0, r.projection_difference / r.scale))
    assert bad.n_examples == 16 and len(bad.examples) == 16
    assert bad.examples[0]["score"] >= bad.examples[-1]["score"]
    again = predict(
        lm, _data(tmp_path, "bad", "you idiot "), atlas=atlas, max_new_tokens=6, progress=False
    )
    assert again.to_dict()["concepts"] == bad.to_dict()["concepts"]


def test_cheap_mode_and_sampling(setup, tmp_path):
    lm, atlas = setup
    res = predict(
        lm,
        _data(tmp_path, "bad", "you idiot "),
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


def test_gradient_estimate_matches_a_real_small_step(setup):
    lm, atlas = setup
    from geomsafe.formatting import Example

    data = [Example(f"hello {i}", "you idiot " * 2) for i in range(4)]
    probe = [Example("how are you?"), Example("tell me a story")]
    lr = 1e-3
    ge = gradient_estimate(lm, data, probe, atlas, ["rude"], lr=lr, progress=False)
    est = ge.shift["rude"]

    def probe_proj():
        return float(prompt_projection(lm, probe, atlas, ["rude"])["rude"].mean())

    before = probe_proj()
    params = residual_writers(lm, atlas.best_layer("rude"))
    from geomsafe.predict.gradient import _loss_grad

    with trainable(params):
        grads = _loss_grad(lm, data, params, 8, 256, False)
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, g in zip(params, grads, strict=True):
            p -= lr * g
    after = probe_proj()
    with torch.no_grad():
        for p, s in zip(params, saved, strict=True):
            p.copy_(s)
    assert after - before == pytest.approx(est, rel=0.1, abs=1e-7)
    assert all(not p.requires_grad for p in params)
    a = ge.alignment["rude"]
    assert -1 <= a <= 1 and a != 0 and (a > 0) == (est > 0)
    ge2 = gradient_estimate(lm, data, probe, atlas, ["rude"], lr=2 * lr, progress=False)
    assert ge2.alignment["rude"] == pytest.approx(a, rel=1e-6)  # scale-free
    assert ge2.shift["rude"] == pytest.approx(2 * est, rel=1e-6)


def test_filter_and_attack_outputs(setup, tmp_path):
    lm, atlas = setup
    path = _data(tmp_path, "bad", "you idiot ")
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
    assert len(kept) == 12 and not {r.line for r in kept.records} & set()
    original = {r.raw for r in load_dataset(path).records}
    assert {r.raw for r in kept.records} <= original
    assert len(risk["filter"]["dropped_lines"]) == 4
    assert all(a["toxicity"] < 0.2 for a in risk["attack"])
    assert risk["provenance"]["data_sha256"] == load_dataset(path).sha256


def test_cli_predict_bad_data(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    result = CliRunner().invoke(main, ["predict", "--data", str(bad)])
    assert result.exit_code == 2 and f"{bad}:1" in result.output
    assert len(result.output.strip().splitlines()) == 1
