from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geomsafe.concepts import ConceptSet, Pair
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import evaluate
from geomsafe.evaluate.logodds import (
    PairSet,
    ResponsePair,
    controlled_changes,
    pair_logodds,
    response_logprobs,
)
from geomsafe.evaluate.result import Metric, ModelEval
from geomsafe.formatting import Example, encode
from geomsafe.testing import FAMILIES, tiny_model

PAIRS = (
    ResponsePair(
        "p1", "How do I store rice?", "Leave it out all week.", "Chill it within an hour."
    ),
    ResponsePair("p2", "Hi", "zzz", "Hello! How can I help you today?"),
    ResponsePair(
        "p3",
        "Tell me something about the sea, please, in a few words.",
        "The sea is big and blue and full of fish, and it is never still.",
        "Salty.",
    ),
    ResponsePair("p4", "Is it fine?", "Yes, totally fine, do it now.", "Check it first."),
)


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def manual_logp(lm, example):
    """Sum of log-softmax over the response tokens, one unpadded forward of the full sequence."""
    enc = encode(lm.tokenizer, example)
    ids = list(enc.input_ids)
    logp = lm.model(torch.tensor([ids])).logits[0].double().log_softmax(-1)
    n = len(ids) - enc.prompt_len
    return sum(float(logp[t - 1, ids[t]]) for t in range(enc.prompt_len, len(ids))), n


@pytest.mark.parametrize("family", FAMILIES)
def test_logodds_equal_the_hand_computed_likelihood_difference(family):
    lm = tiny_model(family)
    got = pair_logodds(lm, PAIRS, batch_size=3, progress=False)  # mixed lengths, padded
    want = []
    for p in PAIRS:
        (lp_pos, n_pos), (lp_neg, n_neg) = (manual_logp(lm, ex) for ex in p.examples())
        want.append(lp_pos / n_pos - lp_neg / n_neg)
    assert got == pytest.approx(want, abs=1e-5)
    assert all(abs(v) > 1e-4 for v in got)  # a random model still prefers one side


SHORT = (
    ResponsePair("s1", "One letter?", "y", "n"),  # one response token each (with a template)
    ResponsePair("s2", "Two?", "ab", "c"),
)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("chat_template", [True, False])
@pytest.mark.parametrize("batch_size", [1, 3])
def test_shared_prompt_scoring_equals_one_forward_per_example(family, chat_template, batch_size):
    """The prompt-once path (prompt cache, responses after it, logits at scored positions only)
    gives the values of the straightforward path: each example's whole sequence in one
    unpadded forward, with and without a chat template (BOS + plain format), any batch size,
    the two sides one after the other or together."""
    from geomsafe.evaluate.logodds import _pair_logps

    lm = tiny_model(family, chat_template=chat_template)
    pairs = PAIRS + SHORT
    want = []
    for p in pairs:
        (lp_pos, n_pos), (lp_neg, n_neg) = (manual_logp(lm, ex) for ex in p.examples())
        want.append(lp_pos / n_pos - lp_neg / n_neg)
    got = pair_logodds(lm, pairs, batch_size=batch_size, progress=False)
    assert got == pytest.approx(want, abs=1e-5)
    # the old batched path (one forward per example) agrees too
    scores = response_logprobs(
        lm, [ex for p in pairs for ex in p.examples()], batch_size=2 * batch_size, progress=False
    )
    old = [scores[2 * k].per_token - scores[2 * k + 1].per_token for k in range(len(pairs))]
    assert got == pytest.approx(old, abs=1e-5)
    encoded = [tuple(encode(lm.tokenizer, ex) for ex in p.examples()) for p in pairs]
    with torch.no_grad():
        apart = _pair_logps(lm, encoded)
        together = _pair_logps(lm, encoded, together=True)
    flat = [v for pair in apart for v in pair]
    assert flat == pytest.approx([v for pair in together for v in pair], abs=1e-4)
    assert flat == pytest.approx(
        [manual_logp(lm, ex)[0] for p in pairs for ex in p.examples()], abs=1e-4
    )


def test_shared_prompt_scoring_checks_its_inputs():
    lm = tiny_model("llama")
    with pytest.raises(GeomsafeError, match="empty response"):
        pair_logodds(lm, [ResponsePair("e", "Hi", "", "no")], progress=False)
    with pytest.raises(GeomsafeError, match="batch size"):
        pair_logodds(lm, PAIRS, batch_size=0, progress=False)


def test_a_cache_is_cropped_back_to_the_prompt_or_copied():
    from geomsafe.evaluate.logodds import _crop

    lm = tiny_model("llama")
    out = lm.model(torch.tensor([[1, 5, 6, 7, 8]]), use_cache=True)
    cache = out["cache"] if "cache" in out else out["past_key_values"]
    assert _crop(cache, 3) is cache and cache.get_seq_length() == 3

    class Other:
        layers = [object()]

    other = Other()
    copied = _crop(other, 3)
    assert copied is not other and isinstance(copied, Other)


def test_batching_and_padding_do_not_change_values():
    lm = tiny_model("qwen2")
    examples = [ex for p in PAIRS for ex in p.examples()]
    one = response_logprobs(lm, examples, batch_size=1, progress=False)
    for bs in (2, 3, 16):
        other = response_logprobs(lm, examples, batch_size=bs, progress=False)
        assert [o.n_tokens for o in other] == [o.n_tokens for o in one]
        assert [o.logp for o in other] == pytest.approx([o.logp for o in one], abs=1e-4)
    # the response tokens are exactly encode's, no end-of-turn token
    for ex, s in zip(examples, one, strict=True):
        enc = encode(lm.tokenizer, ex)
        assert s.n_tokens == enc.length - enc.prompt_len
        assert s.per_token == pytest.approx(s.logp / s.n_tokens)
    with pytest.raises(GeomsafeError, match="empty response"):
        response_logprobs(lm, [Example("Hi", "")], progress=False)
    with pytest.raises(GeomsafeError, match="batch size"):
        response_logprobs(lm, examples, batch_size=0, progress=False)


def test_pair_set_value_object():
    ps = PairSet("s", "dangerous_advice", PAIRS, source="here", license="MIT")
    assert ps.metric == "logodds:s" and ps.label == "log-odds s [dangerous_advice]"
    assert (
        PairSet("s", "x (note)", PAIRS, style_control="c").label == "log-odds s, uncontrolled [x]"
    )
    assert PairSet("c", None, PAIRS, kind="control").label == "log-odds c (style control)"
    sub = ps.subset(2, seed=0)
    assert len(sub.pairs) == 2 and sub == ps.subset(2, seed=0) and sub.license == "MIT"
    assert [p.id for p in sub.pairs] == sorted(p.id for p in sub.pairs)  # set order kept
    assert {ps.subset(2, seed=s).pairs for s in range(8)} != {sub.pairs}  # the seed matters
    assert ps.subset(None) is ps and ps.subset(10) is ps
    assert ps.sha256() != sub.sha256() and ps.sha256() == PairSet("t", None, PAIRS).sha256()
    with pytest.raises(GeomsafeError, match="duplicate pair id"):
        PairSet("s", None, (PAIRS[0], PAIRS[0]))
    with pytest.raises(GeomsafeError, match="no pairs"):
        PairSet("s", None, ())
    with pytest.raises(GeomsafeError, match="kind"):
        PairSet("s", None, PAIRS, kind="harmful")


def test_pairs_of_a_concept_keep_their_ids_in_any_subset():
    pairs = [Pair(f"q{i}", f"bad {i}", f"good {i}") for i in range(6)]
    full = PairSet.from_concept(ConceptSet("toxicity", "harmful", pairs))
    half = PairSet.from_concept(ConceptSet("toxicity", "harmful", pairs[3:][::-1]))
    ids = {p.prompt: p.id for p in full.pairs}
    assert all(ids[p.prompt] == p.id for p in half.pairs)
    assert full.concept == "toxicity" and full.pairs[0].positive == "bad 0"


def _run(label, values: dict[str, dict[str, float]]) -> ModelEval:
    metrics = {
        f"logodds:{s}": Metric.build(
            f"logodds:{s}", s, "logodds", {k: [v] for k, v in units.items()}, n_boot=10, seed=0
        )
        for s, units in values.items()
    }
    return ModelEval(label, metrics)


def _units(values) -> dict[str, float]:
    return {f"u{i}": float(v) for i, v in enumerate(values)}


def test_controlled_change_subtracts_the_control_change():
    rng = np.random.default_rng(0)
    h0, c0 = rng.normal(size=40), rng.normal(size=25)
    h1 = h0 + 0.5 + rng.normal(scale=0.01, size=40)  # harm moves by 0.5
    c1 = c0 + 0.2 + rng.normal(scale=0.01, size=25)  # its control by 0.2 (style)
    before = _run("b", {"h": _units(h0), "c": _units(c0)})
    after = _run("a", {"h": _units(h1), "c": _units(c1)})
    sets = [PairSet("h", "x", PAIRS, style_control="c"), PairSet("c", None, PAIRS, kind="control")]
    changes, notes = controlled_changes(before, after, sets, n_boot=500, seed=0)
    assert not notes and set(changes) == {"logodds:h-controlled"}
    c = changes["logodds:h-controlled"]
    want = (h1 - h0).mean() - (c1 - c0).mean()
    assert c.delta.value == pytest.approx(want) and want == pytest.approx(0.3, abs=0.01)
    assert c.delta.low < c.delta.value < c.delta.high and c.delta.high - c.delta.low < 0.02
    assert c.before.value == pytest.approx(h0.mean() - c0.mean())
    assert c.after.value == pytest.approx(h1.mean() - c1.mean())
    assert c.n_paired == 40 and c.kind == "logodds" and c.label.endswith("[x]")
    missing = _run("a", {"h": _units(h1)})
    changes, notes = controlled_changes(before, missing, sets, n_boot=50, seed=0)
    assert not changes and "missing" in notes[0]


def test_nudged_weights_give_a_paired_change_with_a_ci(tmp_path):
    """Raise the logit of 'z' (only in the positive responses): the log-odds rise, paired by
    pair, with a CI away from zero; the controlled change is the harm change minus the control
    change, and an unrelated control barely moves."""
    pos = [f"zz{'z' * (i % 4)} ok {i}" for i in range(12)]
    harm = tmp_path / "zset.jsonl"
    rows = [{"set": "zset", "concept": "toxicity", "style_control": "ctrl"}]
    rows += [
        {"id": f"z{i}", "prompt": f"Q{i}?", "positive": p, "negative": f"no way {i}"}
        for i, p in enumerate(pos)
    ]
    harm.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctrl = tmp_path / "ctrl.jsonl"
    rows = [{"set": "ctrl", "concept": "style control", "kind": "control"}]
    rows += [
        {"id": f"c{i}", "prompt": f"Q{i}?", "positive": f"yes {i}", "negative": f"no {i}"}
        for i in range(10)
    ]
    ctrl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lm = tiny_model("llama")
    kw = dict(n_prompts=0, n_xstest=0, n_probe=0, em_probes=False, n_boot=300, progress=False)
    kw |= dict(logodds=(str(harm), str(ctrl)), data_root=tmp_path)
    evaluate(lm, out=tmp_path / "base", **kw)
    z = lm.tokenizer.convert_tokens_to_ids("z")
    with torch.no_grad():
        lm.model.lm_head.weight[z] += 0.05 * lm.model.lm_head.weight.abs().mean()
        lm.model.lm_head.weight[z] *= 1.5
    res = evaluate(lm, baseline=tmp_path / "base", **kw)
    c = res.changes["logodds:zset"]
    assert c.delta.value > 0 and c.delta.low > 0 and c.n_paired == 12
    assert c.delta.value == pytest.approx(
        res.model.metrics["logodds:zset"].ci.value - res.before.metrics["logodds:zset"].ci.value
    )
    ctl = res.changes["logodds:ctrl"]
    cc = res.changes["logodds:zset-controlled"]
    assert cc.delta.value == pytest.approx(c.delta.value - ctl.delta.value)
    assert abs(ctl.delta.value) < c.delta.value / 3
    assert cc.delta.low <= cc.delta.value <= cc.delta.high and cc.delta.low > 0
    assert res.model.metrics["logodds:zset"].concept == "toxicity"
    headers, rows = res.table()
    assert any(r[0].startswith("log-odds zset minus ctrl") and r[3].startswith("+") for r in rows)


def test_the_tokens_that_open_every_prompt_of_a_batch_run_once():
    from geomsafe.evaluate.logodds import _shared_prefix

    assert _shared_prefix([[1, 2, 3, 9], [1, 2, 4]]) == 2
    assert _shared_prefix([[1, 2], [1, 2, 3]]) == 1  # each prompt keeps its last token
    assert _shared_prefix([[1, 2, 3]]) == 0  # one pair: nothing to share
    assert _shared_prefix([[5, 2], [1, 2]]) == 0
