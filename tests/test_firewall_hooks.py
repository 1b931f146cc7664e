from __future__ import annotations

import pytest
import torch

from geomsafe.capture import record
from geomsafe.errors import GeomsafeError
from geomsafe.firewall import Check, Firewall
from geomsafe.firewall.hooks import cap_coefficients, install, lm_module
from geomsafe.formatting import Example, encode
from geomsafe.layers import get_layers
from geomsafe.testing import tiny_firewall

PROMPTS = ["What is the capital of France?", "hi", "Tell me a story about a dragon."]


def make_firewall(width: int, tau: float = 0.0, layer: int = 0) -> Firewall:
    return tiny_firewall(width, tau, layer)


def _batch(lm, prompts):
    ids = [list(encode(lm.tokenizer, Example(p)).input_ids) for p in prompts]
    width = max(map(len, ids))
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for r, row in enumerate(ids):
        input_ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    return input_ids, mask


def _generate(model, lm, prompts, n=6):
    ids, mask = _batch(lm, prompts)
    return model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=n, do_sample=False, pad_token_id=0
    )


def test_monitor_changes_no_logits_and_scores_equal_hidden_states(any_tiny):
    lm = any_tiny
    fw = make_firewall(lm.d_model)
    ex = Example(PROMPTS[0], "Paris.")
    ids = torch.tensor([encode(lm.tokenizer, ex).input_ids])
    with torch.no_grad():
        plain = lm.model(ids, output_hidden_states=True)
        with install(lm.model, fw, "monitor") as session:
            watched = lm.model(ids)
    assert torch.equal(plain.logits, watched.logits)
    scores = session.rows()[0].scores  # [T, K]
    for k, c in enumerate(fw.checks):
        ref = plain.hidden_states[c.layer + 1][0] @ c.direction
        torch.testing.assert_close(scores[:, k], ref, atol=1e-5, rtol=1e-4)


def test_monitor_generation_is_unchanged_and_batched_rows_match_single(tiny_llama):
    lm = tiny_llama
    fw = make_firewall(lm.d_model)
    with torch.no_grad():
        plain = _generate(lm.model, lm, PROMPTS)
        with install(lm.model, fw, "monitor") as session:
            watched = _generate(lm.model, lm, PROMPTS)
        batched = session.rows()
        singles = []
        for p in PROMPTS:
            with install(lm.model, fw, "monitor") as one:
                _generate(lm.model, lm, [p])
            singles.append(one.rows()[0])
    assert torch.equal(plain, watched)
    for b, s in zip(batched, singles, strict=True):
        assert b.prompt_ids == s.prompt_ids and b.n_prompt == s.n_prompt
        torch.testing.assert_close(b.scores, s.scores, atol=1e-4, rtol=1e-4)


def _clamped_outputs(lm, fw, ex):
    """The checked layers' outputs with and without clamp, and the positions clamp reads."""
    ids = torch.tensor([encode(lm.tokenizer, ex).input_ids])
    layers = sorted({c.layer for c in fw.checks})
    with torch.no_grad():
        with record(lm.model, layers) as plain:
            lm.model(ids)
        plain = dict(plain)
        with install(lm.model, fw, "clamp"), record(lm.model, layers) as clamped:
            lm.model(ids)
        clamped = dict(clamped)
    return plain, clamped


def test_clamp_caps_every_projection_and_keeps_the_orthogonal_complement(any_tiny):
    lm = any_tiny
    # one layer: its output before the clamp is the plain model's
    fw = make_firewall(lm.d_model, tau=-0.05).select(["harmful_request", "tox", "dec"])
    plain, clamped = _clamped_outputs(lm, fw, Example(PROMPTS[2]))
    for layer in plain:
        caps = [c for c in fw.checks if c.layer == layer and c.clampable]
        u = torch.stack([c.direction for c in caps])  # [c, D]
        tau = torch.tensor([c.threshold for c in caps])
        before = plain[layer][0, -1]  # a prefill pass reads its last position only
        after = clamped[layer][0, -1]
        assert (before @ u.T > tau).any(), "the test needs a projection above τ"
        assert (after @ u.T <= tau + 1e-5).all()
        q, _ = torch.linalg.qr(u.T)  # orthonormal basis of span(U)
        off_after, off_before = after - (after @ q) @ q.T, before - (before @ q) @ q.T
        torch.testing.assert_close(off_after, off_before, atol=1e-5, rtol=1e-5)
        # positions the clamp does not read are untouched
        torch.testing.assert_close(clamped[layer][0, :-1], plain[layer][0, :-1])


def test_clamp_with_one_direction_is_the_relu_formula(tiny_llama):
    lm = tiny_llama
    fw = make_firewall(lm.d_model, tau=-0.05).select(["pow"])
    (c,) = fw.checks
    plain, clamped = _clamped_outputs(lm, fw, Example(PROMPTS[0]))
    h = plain[c.layer][0, -1]
    assert h @ c.direction > c.threshold, "the test needs a projection above τ"
    expected = h - torch.relu(h @ c.direction - c.threshold) * c.direction
    torch.testing.assert_close(clamped[c.layer][0, -1], expected, atol=1e-6, rtol=1e-6)


def test_clamp_acts_on_every_generated_token(tiny_llama):
    lm = tiny_llama
    fw = make_firewall(lm.d_model, tau=-0.05)
    seen: list[torch.Tensor] = []
    layer = fw.checks[1].layer
    caps = torch.stack([c.direction for c in fw.checks if c.layer == layer and c.clampable])
    with torch.no_grad(), install(lm.model, fw, "clamp") as session:
        blocks = get_layers(lm.model)
        handle = blocks[layer].register_forward_hook(lambda m, a, o: seen.append(o[:, -1]))
        try:
            _generate(lm.model, lm, [PROMPTS[1]], n=5)
        finally:
            handle.remove()
    assert len(seen) == 5 and session.rows()[0].n_clamped > 0
    for h in seen:
        assert (h @ caps.T <= -0.05 + 1e-5).all()


def test_cap_coefficients_reach_the_nearest_point():
    g = torch.Generator().manual_seed(0)
    u = torch.randn(3, 8, generator=g)
    u = u / u.norm(dim=-1, keepdim=True)
    h = torch.randn(50, 8, generator=g) * 2
    tau = torch.tensor([0.1, -0.2, 0.3])
    lam = cap_coefficients(h @ u.T, u @ u.T, tau, max_sweeps=500)
    x = h - lam @ u
    assert (lam >= 0).all()
    assert (x @ u.T <= tau + 1e-5).all()
    # KKT: a positive λ_k only where constraint k is active
    active = (x @ u.T - tau).abs() < 1e-4
    assert ((lam < 1e-6) | active).all()


def test_block_forces_the_end_of_turn_token_and_records_the_reason(tiny_llama):
    lm = tiny_llama
    fw = make_firewall(lm.d_model, tau=-100.0)  # everything fires at once
    eos = 2
    with torch.no_grad(), install(lm.model, fw, "block", eos_token_id=eos) as session:
        out = _generate(lm.model, lm, PROMPTS, n=6)
    width = _batch(lm, PROMPTS)[0].shape[1]
    assert out.shape[1] == width + 1 and (out[:, width] == eos).all()
    for row in session.rows():
        v = row.verdict
        assert v is not None and v.stage == "prompt" and v.position == row.n_prompt - 1
        assert v.score > v.threshold and v.concept in {"harmful_request", "tox", "dec", "pow"}


def test_block_mid_response_names_the_response_stage(tiny_llama):
    lm = tiny_llama
    fw = make_firewall(lm.d_model, tau=-100.0)
    # only a response check fires, and never at the prompt's last token: τ above that score
    with torch.no_grad(), install(lm.model, fw, "monitor") as probe:
        _generate(lm.model, lm, [PROMPTS[0]], n=6)
    row = probe.rows()[0]
    k = 3  # "pow"
    at_prompt = float(row.scores[row.n_prompt - 1, k])
    later = row.scores[row.n_prompt :, k]
    assert (later > at_prompt).any(), "the test needs a later token scoring higher"
    tau = (at_prompt + float(later.max())) / 2
    checks = [fw.checks[k].__class__(**{**fw.checks[k].__dict__, "threshold": tau})]
    with torch.no_grad(), install(lm.model, Firewall(checks), "block", eos_token_id=2) as session:
        out = _generate(lm.model, lm, [PROMPTS[0]], n=6)
    v = session.rows()[0].verdict
    assert v is not None and v.stage == "response" and v.position >= row.n_prompt
    stop = v.position - row.n_prompt + 1  # index of the forced token among the new ones
    assert out[0, len(row.prompt_ids) + stop] == 2


def test_hooks_are_removed_on_exit_and_on_error(tiny_llama):
    lm = tiny_llama
    fw = make_firewall(lm.d_model)
    modules = [lm_module(lm.model), *get_layers(lm.model)]

    def n_hooks():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)

    with install(lm.model, fw, "clamp"):
        assert n_hooks() > 0
    assert n_hooks() == 0
    with pytest.raises(RuntimeError), install(lm.model, fw, "monitor"):
        raise RuntimeError("boom")
    assert n_hooks() == 0


def test_works_on_a_peft_model(tiny_llama):
    from peft import LoraConfig, get_peft_model

    lm = tiny_llama
    peft_model = get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    fw = make_firewall(lm.d_model)
    with torch.no_grad():
        ids = torch.tensor([encode(lm.tokenizer, Example(PROMPTS[0])).input_ids])
        ref = peft_model(ids, output_hidden_states=True).hidden_states
        with install(peft_model, fw, "monitor") as session:
            peft_model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    scores = session.rows()[0].scores
    c = fw.checks[1]
    torch.testing.assert_close(
        scores[: ids.shape[1], 1], ref[c.layer + 1][0] @ c.direction, atol=1e-5, rtol=1e-4
    )



def test_a_peft_model_with_the_plain_models_layer_template(tiny_llama):
    """``screen`` and ``calibrate`` pass ``lm.layer_template`` (``model.layers.{num}``), a path
    in the model that a peft model wraps: the firewall still finds, scores and clamps the
    blocks (a fresh LoRA adds nothing, so the numbers are the plain model's)."""
    from peft import LoraConfig, get_peft_model

    lm = tiny_llama
    fw = make_firewall(lm.d_model, tau=-5.0)  # every read position is clamped
    ids, mask = _batch(lm, PROMPTS)
    with torch.no_grad():
        with install(lm.model, fw, "clamp", layer_template=lm.layer_template) as plain:
            want = lm.model(input_ids=ids, attention_mask=mask).logits
        peft_model = get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        with install(peft_model, fw, "clamp", layer_template=lm.layer_template) as session:
            got = peft_model(input_ids=ids, attention_mask=mask).logits
    assert sum(r.n_clamped for r in plain.rows()) > 0
    torch.testing.assert_close(got, want)
    for row, ref in zip(session.rows(), plain.rows(), strict=True):
        torch.testing.assert_close(row.scores, ref.scores)
        assert row.n_clamped == ref.n_clamped and row.verdict == ref.verdict

def test_bad_use_is_a_clear_error(tiny_llama):
    lm = tiny_llama
    fw = make_firewall(lm.d_model)
    with pytest.raises(GeomsafeError, match="unknown firewall mode"), install(lm.model, fw, "x"):
        pass
    raw = Firewall([Check("tox", 1, fw.checks[1].direction)])
    with pytest.raises(GeomsafeError, match="calibrated"), install(lm.model, raw, "clamp"):
        pass
    wide = make_firewall(lm.d_model + 8)
    with pytest.raises(GeomsafeError, match="width"), install(lm.model, wide):
        pass
    deep = make_firewall(lm.d_model, layer=5)
    with pytest.raises(GeomsafeError, match="layers"), install(lm.model, deep):
        pass
