from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsafe.guard import GuardConfig, build_guards
from geomsafe.guard.covariance import cross_covariance
from guard_helpers import make_batch, peft_llama, random_atlas, randomise_lora_b

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cross_covariance_matches_numpy():
    g = torch.Generator().manual_seed(0)
    pt, ph = torch.randn(7, 2, generator=g), torch.randn(7, 3, generator=g)
    want = np.cov(pt.T.numpy(), ph.T.numpy(), bias=True)[:2, 2:]
    np.testing.assert_allclose(cross_covariance(pt, ph).numpy(), want, atol=1e-6)


def test_covariance_penalty_matches_numpy():
    atlas = random_atlas()
    model = peft_llama()
    randomise_lora_b(model, std=0.1)
    batch = make_batch(seed=3, batch=3, length=10)
    cfg = GuardConfig(concepts=["tox", "dec"], targets=["help", "code"], weight=0.5, layers=[0, 1])
    (guard,) = build_guards(["covariance"], atlas, cfg)
    with guard.install(model):
        model(**batch)
    pen = guard.penalty(model, batch)
    mask = (batch["labels"] != -100).numpy()
    expected = 0.0
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
    for layer in (0, 1):
        r = out.hidden_states[layer + 1].numpy()[mask].astype(np.float64)  # [n, D]
        ph = r @ atlas.matrix(layer, ["tox", "dec"]).numpy().T.astype(np.float64)
        pt = r @ atlas.matrix(layer, ["help", "code"]).numpy().T.astype(np.float64)
        ph -= ph.mean(0)
        pt -= pt.mean(0)
        c = pt.T @ ph / r.shape[0]
        expected += float((c**2).sum())
    assert pen.item() == pytest.approx(0.5 * expected, rel=1e-4)
    pen.backward()
    assert any(
        p.grad is not None and float(p.grad.abs().sum()) > 0
        for n, p in model.named_parameters()
        if "lora_" in n
    )
    # Layers listed as a band: proj/<c> at the best layer plus one value per layer.
    log = guard.log()
    assert {"proj/tox", "proj/tox@0", "proj/tox@1", "penalty"} <= set(log)
    assert log["proj/tox"] == log["proj/tox@1"]
