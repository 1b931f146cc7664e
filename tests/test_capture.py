from __future__ import annotations

import pytest
import torch

from geomsafe.capture import (
    backbone,
    capture,
    capture_projections,
    make_batches,
    record,
    run_until_stopped,
    token_span,
)
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Encoded, Example, encode
from geomsafe.layers import get_layers

EXAMPLES = [
    Example("What is the capital of France?", "Paris is the capital."),
    Example("hi", "hello there, how can I help you today?"),
    Example("Tell me a long story about a dragon who learns to fly", "Once upon a time."),
    Example("2+2?", "4"),
    Example("Name a colour.", "Blue, like the sky on a clear summer afternoon."),
]


def _final_norm(lm):
    net = backbone(lm.model)
    for name in ("norm", "ln_f", "final_layernorm"):
        if hasattr(net, name):
            return getattr(net, name)
    raise AssertionError("no final norm")


def _reference(lm, ex: Example, rule: str, skip_first: int = 1) -> torch.Tensor:
    """Per-layer mean over selected tokens from output_hidden_states, one example at a time."""
    enc = encode(lm.tokenizer, ex)
    start, end = token_span(enc, rule, skip_first)
    with torch.no_grad():
        out = lm.model(torch.tensor([enc.input_ids]), output_hidden_states=True)
    hs = out.hidden_states
    n = lm.n_layers
    rows = [hs[layer + 1][0, start:end].mean(0) for layer in range(n - 1)]
    return torch.stack(rows)  # [L-1, D]


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("rule", ["response", "prompt", "last", "all"])
def test_capture_equals_hidden_states(any_tiny, padding_side, rule):
    acts = capture(
        any_tiny, EXAMPLES, tokens=rule, batch_size=3, padding_side=padding_side, progress=False
    )
    n = any_tiny.n_layers
    assert acts.pooled.shape == (len(EXAMPLES), n, any_tiny.d_model)
    for i, ex in enumerate(EXAMPLES):
        ref = _reference(any_tiny, ex, rule)
        torch.testing.assert_close(acts.pooled[i, : n - 1], ref, atol=1e-5, rtol=1e-4)


def test_batched_equals_one_by_one(any_tiny):
    batched = capture(any_tiny, EXAMPLES, batch_size=5, padding_side="left", progress=False)
    single = torch.stack(
        [capture(any_tiny, [ex], batch_size=1, progress=False).pooled[0] for ex in EXAMPLES]
    )
    torch.testing.assert_close(batched.pooled, single, atol=1e-5, rtol=1e-4)


def test_last_layer_is_before_final_norm(tiny_llama):
    ex = EXAMPLES[0]
    acts = capture(tiny_llama, [ex], tokens="all", per_token=True, progress=False)
    enc = encode(tiny_llama.tokenizer, ex)
    with torch.no_grad():
        hs = tiny_llama.model(torch.tensor([enc.input_ids]), output_hidden_states=True)
    last = acts.tokens[0][:, -1]  # [T, D] at the last layer
    ref_final = hs.hidden_states[-1][0, 1:]
    assert not torch.allclose(last, ref_final, atol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(_final_norm(tiny_llama)(last), ref_final, atol=1e-5, rtol=1e-4)


def test_per_token_shapes_and_sink_skipped(tiny_llama):
    acts = capture(tiny_llama, EXAMPLES[:2], tokens="all", per_token=True, progress=False)
    for ex, toks, n in zip(EXAMPLES[:2], acts.tokens, acts.n_tokens, strict=True):
        enc = encode(tiny_llama.tokenizer, ex)
        assert toks.shape == (enc.length - 1, tiny_llama.n_layers, tiny_llama.d_model)
        assert n == enc.length - 1
    kept = capture(tiny_llama, EXAMPLES[:1], tokens="all", skip_first=0, progress=False)
    assert kept.n_tokens[0] == encode(tiny_llama.tokenizer, EXAMPLES[0]).length


def test_layer_subset_and_negative_index(tiny_llama):
    full = capture(tiny_llama, EXAMPLES[:2], progress=False)
    sub = capture(tiny_llama, EXAMPLES[:2], layers=[0, -1], progress=False)
    assert sub.layers == [0, tiny_llama.n_layers - 1]
    torch.testing.assert_close(sub.layer(0), full.layer(0))
    torch.testing.assert_close(sub.layer(tiny_llama.n_layers - 1), full.pooled[:, -1])


def test_record_removes_hooks_even_on_error(tiny_llama):
    blocks = get_layers(tiny_llama.model)
    with pytest.raises(RuntimeError), record(tiny_llama.model, [0, 1]):
        assert all(len(b._forward_hooks) == 1 for b in blocks[:2])
        raise RuntimeError("boom")
    assert all(len(b._forward_hooks) == 0 for b in blocks)


def test_stop_after_last_skips_upper_layers(tiny_llama):
    calls = []
    blocks = get_layers(tiny_llama.model)
    handle = blocks[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        with record(tiny_llama.model, [0], stop_after_last=True) as store:
            run_until_stopped(tiny_llama.model, input_ids=torch.tensor([[1, 5, 6]]))
        assert 0 in store and not calls
    finally:
        handle.remove()


def test_batches_are_length_sorted_and_positions_follow_mask():
    enc = [Encoded(tuple(range(1, n + 1)), 1) for n in (2, 5, 3)]
    (batch,) = make_batches(enc, 3, 0, "left")
    assert batch.index == [1, 2, 0]
    assert batch.position_ids[2].tolist() == [0, 0, 0, 0, 1]
    assert batch.attention_mask[2].tolist() == [0, 0, 0, 1, 1]


def test_bad_inputs(tiny_llama):
    with pytest.raises(GeomsafeError, match="token rule"):
        capture(tiny_llama, EXAMPLES, tokens="middle", progress=False)
    with pytest.raises(GeomsafeError, match="response"):
        capture(tiny_llama, ["no response here"], tokens="response", progress=False)
    with pytest.raises(GeomsafeError, match="out of range"):
        capture(tiny_llama, EXAMPLES, layers=[7], progress=False)
    with pytest.raises(GeomsafeError, match="no examples"):
        capture(tiny_llama, [], progress=False)


def test_over_long_examples_keep_prompt_end_and_response_start():
    from geomsafe.formatting import Example, encode
    from geomsafe.testing import char_tokenizer

    tok = char_tokenizer()
    ex = Example("p" * 300 + " question?", "r" * 40)
    full = encode(tok, ex)
    cut = encode(tok, ex, max_length=100)
    assert len(cut.input_ids) == 100 and cut.length - cut.prompt_len == 40
    assert cut.input_ids[-40:] == full.input_ids[-40:]  # the whole response
    assert cut.input_ids[:60] == full.input_ids[full.prompt_len - 60 : full.prompt_len]
    long_r = encode(tok, Example("q?", "r" * 300), max_length=100)
    assert long_r.length == 100 and long_r.length - long_r.prompt_len >= 50
    assert encode(tok, Example("p" * 300), max_length=50).length == 50


SYSTEM = ({"role": "system", "content": "You answer briefly."},)
PAIRED = [
    Example((*SYSTEM, {"role": "user", "content": q}), r)
    for q, rs in (
        ("What is the capital of France?", ("Paris.", "It is Lyon, a city in the south.")),
        ("hi", ("hello there, how can I help you today?", "go away", "hey")),  # three replies
        ("Name a colour.", ("Blue.", "Seven.")),
    )
    for r in rs
] + [Example((*SYSTEM, {"role": "user", "content": "Count to three."}))]  # no response


def _count_tokens(lm):
    """A pre-hook on the embedding that counts the token positions the backbone computes."""
    seen = []
    emb = lm.model.get_input_embeddings()
    return seen, emb.register_forward_pre_hook(lambda m, a: seen.append(a[0].numel()))


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("rule", ["response", "prompt", "last", "all"])
def test_shared_prefix_equals_separate_runs(any_tiny, padding_side, rule):
    examples = PAIRED if rule != "response" else PAIRED[:-1]
    kwargs = dict(tokens=rule, batch_size=3, padding_side=padding_side, progress=False)
    kwargs |= dict(per_token=True, heads=True)
    seen, handle = _count_tokens(any_tiny)
    try:
        shared = capture(any_tiny, examples, share_prefix=True, **kwargs)
        n_shared = sum(seen)
        seen.clear()
        plain = capture(any_tiny, examples, **kwargs)
        n_plain = sum(seen)
    finally:
        handle.remove()
    assert n_shared < 0.8 * n_plain  # the system prompt ran once, each pair's prompt once
    torch.testing.assert_close(shared.pooled, plain.pooled, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shared.heads, plain.heads, atol=1e-5, rtol=1e-4)
    assert shared.n_tokens == plain.n_tokens
    for a, b in zip(shared.tokens, plain.tokens, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prefix_at_a_layer_subset(tiny_llama):
    kwargs = dict(layers=[1], batch_size=2, progress=False)
    shared = capture(tiny_llama, PAIRED[:-1], share_prefix=True, **kwargs)
    plain = capture(tiny_llama, PAIRED[:-1], **kwargs)
    torch.testing.assert_close(shared.pooled, plain.pooled, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("rule", ["response", "last", "all"])
def test_capture_projections_equal_projected_pooled_means(any_tiny, rule):
    g = torch.Generator().manual_seed(0)
    dirs = {
        0: torch.randn(3, any_tiny.d_model, generator=g),
        2: torch.randn(any_tiny.d_model, generator=g),
    }
    kwargs = dict(tokens=rule, batch_size=2, progress=False)
    got = capture_projections(any_tiny, EXAMPLES, dirs, **kwargs)
    pooled = capture(any_tiny, EXAMPLES, layers=[0, 2], **kwargs)
    assert set(got) == {0, 2} and got[0].shape == (5, 3) and got[2].shape == (5, 1)
    for layer, u in dirs.items():
        want = pooled.layer(layer) @ torch.atleast_2d(u).T
        torch.testing.assert_close(got[layer], want, atol=1e-6, rtol=1e-6)


def test_capture_projections_bad_directions(tiny_llama):
    with pytest.raises(GeomsafeError, match="no directions"):
        capture_projections(tiny_llama, EXAMPLES, {})
    with pytest.raises(GeomsafeError, match=r"need \[K, 32\]"):
        capture_projections(tiny_llama, EXAMPLES, {0: torch.zeros(2, 7)})
