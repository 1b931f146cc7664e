from __future__ import annotations

import pytest
import torch

from geomsafe.formatting import Example
from geomsafe.predict.gradient import (
    _loss_grad,
    gradient_estimate,
    probe_prompts,
    residual_writers,
    trainable,
)
from geomsafe.projection import prompt_projection
from predict_helpers import tiny_setup


@pytest.fixture(scope="module")
def setup():
    return tiny_setup()


def test_gradient_estimate_matches_a_real_small_step(setup):
    lm, atlas = setup
    data = [Example(f"hello {i}", "you idiot " * 2) for i in range(4)]
    probe = [Example("how are you?"), Example("tell me a story")]
    lr = 1e-3
    ge = gradient_estimate(lm, data, probe, atlas, ["rude"], lr=lr, progress=False)
    est = ge.shift["rude"]

    def probe_proj():
        return float(prompt_projection(lm, probe, atlas, ["rude"])["rude"].mean())

    before = probe_proj()
    params = residual_writers(lm, atlas.best_layer("rude"))
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


def test_loss_gradient_does_not_depend_on_the_batching(setup):
    lm, _ = setup
    data = [Example(f"hello {i}", "ab " * (1 + i)) for i in range(5)]
    params = residual_writers(lm, 1)
    with trainable(params):
        one = _loss_grad(lm, data, params, 1, 256, False)
        all_ = _loss_grad(lm, data, params, 8, 256, False)
    for a, b in zip(one, all_, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_probe_prompts_mix_the_categories():
    probes = probe_prompts(8)
    assert len(probes) == 8 and len({p.prompt for p in probes}) == 8
