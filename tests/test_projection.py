from __future__ import annotations

import json

import pytest
import torch

from geomsafe.adapters import view
from geomsafe.atlas import FeatureAtlas
from geomsafe.bench.geometry import task_geometry, task_pairs
from geomsafe.concepts import ConceptSet, Pair
from geomsafe.datasets import load_dataset
from geomsafe.directions import extract
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, encode
from geomsafe.predict import predict
from geomsafe.projection import (
    concept_layers,
    mean_projection,
    measured_shift,
    own_examples,
    own_response,
    project,
    project_with_prompt,
    projection_difference,
    prompt_projection,
)
from geomsafe.testing import tiny_model
from geomsafe.train import TrainConfig
from geomsafe.train.lora import make_peft_model

PROMPTS = ["What is 2+2?", "Tell me a story about a cat.", "hi", "Name three colours please."]
EXAMPLES = [
    Example("What is 2+2?", "Four."),
    Example("Tell me a story about a cat.", "Once upon a time a cat sat on a very warm mat."),
    Example("hi", "Hello there, how can I help?"),
]


def atlas_for(lm, best=(1, 2), layers=None):
    layers = list(range(lm.n_layers)) if layers is None else layers
    gen = torch.Generator().manual_seed(0)
    dirs = {}
    for name in ("toxicity", "deception"):
        d = torch.randn(len(layers), lm.d_model, generator=gen)
        dirs[name] = d / d.norm(dim=-1, keepdim=True)
    stats = {"toxicity": {"best_layer": best[0]}, "deception": {"best_layer": best[1]}}
    return FeatureAtlas(layers, dirs, dict.fromkeys(dirs, "harmful"), stats)


def manual(lm, example, layer, direction, tokens):
    """Projection from a plain forward with ``output_hidden_states`` (layer < last)."""
    enc = encode(lm.tokenizer, example)
    with torch.no_grad():
        hs = lm.model(torch.tensor([enc.input_ids]), output_hidden_states=True).hidden_states
    h = hs[layer + 1][0]  # output of decoder layer `layer`
    span = h[-1:] if tokens == "last" else h[enc.prompt_len :]
    return float(span.mean(0) @ direction)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("tokens", ["response", "last"])
def test_project_equals_a_manual_forward(family, tokens):
    lm = tiny_model(family, 4)
    atlas = atlas_for(lm)
    got = project(lm, EXAMPLES, atlas, tokens=tokens, batch_size=2)
    assert set(got) == {"toxicity", "deception"}  # the harmful concepts by default
    for name, layer in (("toxicity", 1), ("deception", 2)):
        assert got[name].shape == (len(EXAMPLES),) and got[name].dtype == torch.float32
        want = [manual(lm, e, layer, atlas.direction(name, layer), tokens) for e in EXAMPLES]
        assert got[name].tolist() == pytest.approx(want, abs=1e-4)
    at0 = project(lm, EXAMPLES, atlas, ["deception"], tokens=tokens, layers={"deception": 0})
    want = [manual(lm, e, 0, atlas.direction("deception", 0), tokens) for e in EXAMPLES]
    assert set(at0) == {"deception"} and at0["deception"].tolist() == pytest.approx(want, abs=1e-4)


def test_project_runs_in_eval_mode_and_restores_the_mode():
    lm = tiny_model("llama", 4)
    lm.model.train()
    seen = []
    handle = lm.model.model.layers[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
    try:
        project(lm, EXAMPLES, atlas_for(lm))
    finally:
        handle.remove()
    assert seen and not any(seen) and lm.model.training


def test_prompt_projection_is_the_last_prompt_token():
    lm = tiny_model("qwen2", 4)
    atlas = atlas_for(lm)
    got = prompt_projection(lm, EXAMPLES, atlas, ["toxicity"])  # responses are ignored
    want = [
        manual(lm, Example(e.prompt), 1, atlas.direction("toxicity", 1), "last") for e in EXAMPLES
    ]
    assert got["toxicity"].tolist() == pytest.approx(want, abs=1e-4)
    mean = mean_projection(lm, [e.prompt for e in EXAMPLES], atlas, ["toxicity"])
    assert mean["toxicity"] == pytest.approx(sum(want) / len(want), abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_one_pass_gives_the_response_and_the_last_prompt_token_projections(family, batch_size):
    """project_with_prompt = project over responses + prompt_projection, from one pass per
    example; a prompt cut to fit max_length with its response gets its own prompt pass."""
    lm = tiny_model(family, 4)
    atlas = atlas_for(lm)
    names = ["toxicity", "deception"]
    kw = dict(batch_size=batch_size)
    for max_length in (512, 30):  # 30: the long example's prompt loses tokens to its response
        resp, last = project_with_prompt(lm, EXAMPLES, atlas, names, max_length=max_length, **kw)
        want_resp = project(lm, EXAMPLES, atlas, names, max_length=max_length, **kw)
        want_last = prompt_projection(lm, EXAMPLES, atlas, names, max_length=max_length, **kw)
        for n in names:
            assert resp[n].tolist() == pytest.approx(want_resp[n].tolist(), abs=1e-5)
            assert last[n].tolist() == pytest.approx(want_last[n].tolist(), abs=1e-5)
    long = Example(EXAMPLES[1].prompt, "x" * 40)  # prompt cut when encoded with its response
    enc, alone = encode(lm.tokenizer, long, 30), encode(lm.tokenizer, Example(long.prompt), 30)
    assert enc.input_ids[: enc.prompt_len] != alone.input_ids
    _, last = project_with_prompt(lm, [long, *EXAMPLES], atlas, names, max_length=30)
    want = prompt_projection(lm, [long, *EXAMPLES], atlas, names, max_length=30)
    assert last["toxicity"].tolist() == pytest.approx(want["toxicity"].tolist(), abs=1e-5)
    with pytest.raises(GeomsafeError, match="no examples"):
        project_with_prompt(lm, [], atlas, names)


def test_concept_layers_resolves_and_checks():
    lm = tiny_model("llama", 4)  # 4 layers
    atlas = atlas_for(lm)
    names = ["toxicity", "deception"]
    assert concept_layers(atlas, names) == {"toxicity": 1, "deception": 2}
    assert concept_layers(atlas, names, 3, lm) == {"toxicity": 3, "deception": 3}
    assert concept_layers(atlas, names, {"deception": 0}) == {"toxicity": 1, "deception": 0}
    with pytest.raises(GeomsafeError, match="no feature 'honesty'"):
        concept_layers(atlas, ["honesty"])
    with pytest.raises(GeomsafeError, match="not in the atlas"):
        concept_layers(atlas_for(lm, layers=[1, 2]), names, 3)
    with pytest.raises(GeomsafeError, match="width 64 but the model has"):
        concept_layers(atlas_for(tiny_model("llama", 4, width=64)), names, lm=lm)
    deep = atlas_for(lm, best=(6, 6), layers=list(range(8)))  # an atlas of a deeper model
    assert concept_layers(deep, names) == {"toxicity": 6, "deception": 6}
    with pytest.raises(GeomsafeError, match="out of range for a 4-layer model"):
        concept_layers(deep, names, lm=lm)
    with pytest.raises(GeomsafeError, match="width"):  # project checks against the model
        project(lm, EXAMPLES, atlas_for(tiny_model("llama", 4, width=64)))
    with pytest.raises(GeomsafeError, match="no examples"):
        project(lm, [], atlas)


def tuned_peft(lm):
    peft_model = make_peft_model(lm.model, TrainConfig(seed=0))
    return peft_model, view(lm, peft_model)


def test_measured_shift_of_a_peft_model():
    lm = tiny_model("qwen2", 4)
    atlas = atlas_for(lm, best=(1, 1))
    base_projection = mean_projection(lm, PROMPTS, atlas)  # before LoRA is added
    peft_model, tuned = tuned_peft(lm)
    zero = measured_shift(tuned, PROMPTS, atlas)  # LoRA B starts at zero: no shift
    assert all(abs(v) < 1e-6 for v in zero.values())
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    shift = measured_shift(tuned, PROMPTS, atlas)
    after = mean_projection(tuned, PROMPTS, atlas)
    with peft_model.disable_adapter():
        before = mean_projection(tuned, PROMPTS, atlas)
    for name in ("toxicity", "deception"):
        assert shift[name] == pytest.approx(after[name] - before[name], abs=1e-6)
        assert abs(shift[name]) > 1e-3
    given = measured_shift(tuned, PROMPTS, atlas, base_projection=base_projection)
    assert given == pytest.approx(shift, abs=1e-5)  # the precomputed base is the same base


def test_measured_shift_with_a_base_model():
    base, other = tiny_model("llama", 4), tiny_model("llama", 4, seed=1)
    atlas = atlas_for(base)
    shift = measured_shift(other, PROMPTS, atlas, ["toxicity"], base=base)
    want = mean_projection(other, PROMPTS, atlas, ["toxicity"])["toxicity"]
    want -= mean_projection(base, PROMPTS, atlas, ["toxicity"])["toxicity"]
    assert shift["toxicity"] == pytest.approx(want, abs=1e-6) and abs(want) > 1e-3
    precomputed = mean_projection(base, PROMPTS, atlas, ["toxicity"])
    again = measured_shift(other, PROMPTS, atlas, ["toxicity"], base_projection=precomputed)
    assert again == shift


def test_measured_shift_errors():
    lm = tiny_model("llama", 4)
    atlas = atlas_for(lm)
    with pytest.raises(GeomsafeError, match="needs a base"):
        measured_shift(lm, PROMPTS, atlas)
    with pytest.raises(GeomsafeError, match="not both"):
        measured_shift(lm, PROMPTS, atlas, base=lm, base_projection={"toxicity": 0.0})
    with pytest.raises(GeomsafeError, match="no value for deception"):
        measured_shift(lm, PROMPTS, atlas, base_projection={"toxicity": 0.0})


def test_projection_difference_is_data_minus_own():
    lm = tiny_model("llama", 4)
    atlas = atlas_for(lm)
    own = ["Four, I think.", "", "Hi!"]
    got = projection_difference(lm, EXAMPLES, atlas, None, own)
    data = project(lm, EXAMPLES, atlas)
    replies = [own[0], ".", own[2]]  # the empty own response is projected as "."
    mine = project(
        lm, [Example(e.prompt, r) for e, r in zip(EXAMPLES, replies, strict=True)], atlas
    )
    for name in ("toxicity", "deception"):
        assert torch.allclose(got[name], data[name] - mine[name], atol=1e-6)
    assert own_examples(EXAMPLES, own)[1] == Example(EXAMPLES[1].prompt, ".")  # empty: "."
    again = projection_difference(lm, EXAMPLES, atlas, None, own, data_projection=data)
    assert all(torch.equal(again[n], got[n]) for n in got)
    with pytest.raises(GeomsafeError, match="2 own responses for 3 examples"):
        projection_difference(lm, EXAMPLES, atlas, None, own[:2])
    with pytest.raises(GeomsafeError, match="data projection"):
        projection_difference(
            lm, EXAMPLES, atlas, None, own, data_projection={"toxicity": data["toxicity"]}
        )


def test_predict_and_bench_predict_the_same_shift(tmp_path):
    """predict's projection difference and the bench's predicted shift are one number."""
    lm = tiny_model("llama", 4)
    words = {"rude": ("go away", "welcome"), "calm": ("breathe slowly", "panic now")}
    sets = [
        ConceptSet(name, "harmful", [Pair(f"ask {i}", pos * (1 + i % 2), neg) for i in range(8)])
        for name, (pos, neg) in words.items()
    ]
    ex = extract(lm, sets, progress=False)
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": f"hello {i}", "completion": "go away " * (1 + i % 3)} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_dataset(path)

    pred = predict(
        lm, data, atlas=ex.atlas, max_new_tokens=5, gradient=False, batch_size=4, progress=False
    )
    pairs = task_pairs(lm, data, 5, batch_size=4)
    geom = task_geometry(lm, pairs, ex.atlas, ex.activations, [1, 2], batch_size=4)
    by_concept = {c.concept: c.projection_difference for c in pred.concepts}
    assert set(by_concept) == set(geom.predicted) == {"rude", "calm"}
    for name, value in by_concept.items():
        assert value == pytest.approx(geom.predicted[name], abs=1e-6)
    assert abs(by_concept["rude"]) > 1e-3
    own = [r["own_response"] for r in sorted(pred.examples, key=lambda r: r["line"])]
    assert [own_response(t) for t in own] == [p.negative for p in pairs.pairs]
