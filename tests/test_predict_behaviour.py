from __future__ import annotations

import pytest
import torch

from geomsafe.evaluate.logodds import PairSet, ResponsePair, pair_logodds, response_logps
from geomsafe.formatting import Example, encode
from geomsafe.predict.behaviour import behavioural_estimate
from geomsafe.predict.sketch import block_linears, sketch_matrices
from geomsafe.testing import tiny_model

FAMILIES = ["llama", "qwen2", "gemma", "gpt2"]


def _pairs() -> PairSet:
    return PairSet(
        "rude",
        "rude",
        tuple(
            ResponsePair(f"r{i}", f"question {i}?", "you idiot " * (1 + i % 2), "thank you")
            for i in range(5)
        ),
    )


def _data(text: str, n: int = 6) -> list[Example]:
    return [Example(f"hello {i}", text * (1 + i % 3)) for i in range(n)]


def _full_grads(lm, data, mods):
    """Full weight gradients of the data loss (summed response NLL / response tokens)."""
    enc = [encode(lm.tokenizer, ex, 256) for ex in data]
    total = sum(e.length - e.prompt_len for e in enc)
    weights = [m.weight for _, m, _ in mods]
    for w in weights:
        w.requires_grad_(True)
    try:
        loss = -response_logps(lm, enc).sum() / total
        return torch.autograd.grad(loss, weights)
    finally:
        for w in weights:
            w.requires_grad_(False)


@pytest.mark.parametrize("family", FAMILIES)
def test_behavioural_estimate_matches_a_real_lora_shaped_step(family):
    lm = tiny_model(family)
    pairs, data, lr, rank = _pairs(), _data("you idiot "), 1e-2, 4
    est = behavioural_estimate(lm, data, {"rude": pairs}, lr=lr, rank=rank, seed=3, progress=False)
    mods = block_linears(lm)
    mats = sketch_matrices(lm, rank, 3)
    grads = _full_grads(lm, data, mods)
    before = sum(pair_logodds(lm, pairs, progress=False)) / len(pairs.pairs)
    saved = [m.weight.detach().clone() for _, m, _ in mods]
    with torch.no_grad():
        for (name, m, _), g in zip(mods, grads, strict=True):
            a = mats[name]
            if isinstance(m, torch.nn.Linear):  # W: out x in; step -lr ∇W AᵀA
                m.weight -= lr * g @ a.T @ a
            else:  # Conv1D stores W as in x out
                m.weight -= lr * a.T @ a @ g
    after = sum(pair_logodds(lm, pairs, progress=False)) / len(pairs.pairs)
    with torch.no_grad():
        for (_, m, _), s in zip(mods, saved, strict=True):
            m.weight.copy_(s)
    assert est.change["rude"] != 0
    assert after - before == pytest.approx(est.change["rude"], rel=0.05)
    a = est.alignment["rude"]
    assert -1 < a < 1 and (a > 0) == (est.change["rude"] > 0)
    assert float(est.contributions[:, 0].sum()) == pytest.approx(a, rel=1e-6)
    assert all(not p.requires_grad for p in lm.model.parameters())


def test_alignment_is_scale_free_and_seeded():
    lm = tiny_model("llama")
    data = _data("you idiot ")
    one = behavioural_estimate(lm, data, {"rude": _pairs()}, lr=1e-3, progress=False)
    two = behavioural_estimate(lm, data, {"rude": _pairs()}, lr=2e-3, progress=False)
    assert two.alignment["rude"] == pytest.approx(one.alignment["rude"], rel=1e-9)
    assert two.change["rude"] == pytest.approx(2 * one.change["rude"], rel=1e-9)
    other = behavioural_estimate(lm, data, {"rude": _pairs()}, seed=1, progress=False)
    assert other.alignment["rude"] != one.alignment["rude"]


def test_per_example_scores_separate_the_examples_that_push():
    lm = tiny_model("llama")
    data = _data("you idiot ", 4) + _data("thank you ", 4)
    est = behavioural_estimate(lm, data, {"rude": _pairs()}, rank=32, progress=False)
    c = est.contributions[:, 0]
    assert float(c[:4].mean()) > float(c[4:].mean())


def test_the_sketch_cache_belongs_to_its_model_and_goes_with_it():
    """Keyed by the model object, held weakly: a model built later (which may reuse a freed
    model's address) starts with no cached sketches."""
    import gc

    from geomsafe.predict import behaviour

    lm = tiny_model("gpt2")
    behavioural_estimate(lm, _data("you idiot "), {"rude": _pairs()}, progress=False)
    assert len(behaviour._CACHE[lm.model]) == 1
    del lm
    gc.collect()
    fresh = tiny_model("llama")
    assert fresh.model not in behaviour._CACHE
