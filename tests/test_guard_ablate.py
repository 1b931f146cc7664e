from __future__ import annotations

import pytest
import torch

from geomsafe.guard import GuardConfig, build_guards
from geomsafe.guard.basis import orthonormal_basis
from geomsafe.testing import FAMILIES, tiny_model
from geomsafe.train import finetune
from guard_helpers import (
    PEFT_TEMPLATE,
    check_own_projection_logged,
    hooks,
    layer_outs,
    make_batch,
    peft_llama,
    random_atlas,
)
from train_helpers import REPEAT, cfg, lm_atlas

pytestmark = pytest.mark.usefixtures("one_thread")


def test_layer_output_is_orthogonal_during_install_only():
    atlas = random_atlas()
    model = peft_llama()
    batch = make_batch()
    (guard,) = build_guards(["ablate"], atlas, GuardConfig(["tox", "dec"]), PEFT_TEMPLATE)
    u = orthonormal_basis(torch.stack([atlas.direction(n, 1) for n in ("tox", "dec")]))
    n_hooks = hooks(model)
    before = layer_outs(model, batch, [1])[1]
    with guard.install(model):
        ablated = layer_outs(model, batch, [1])[1]
    after = layer_outs(model, batch, [1])[1]
    scale = float(before.abs().max())
    assert float((before @ u).abs().max()) > 0.1 * scale  # there was something to remove
    assert float((ablated @ u).abs().max()) < 1e-5 * scale
    torch.testing.assert_close(ablated, before - (before @ u) @ u.T, atol=1e-6, rtol=0)
    torch.testing.assert_close(after, before)  # untouched outside install
    assert hooks(model) == n_hooks
    check_own_projection_logged(guard, model, batch, before, atlas)  # before the ablation
    assert guard.log()["strength"] == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_every_guarded_layer_of_a_band_is_ablated(family):
    lm = tiny_model(family)
    atlas = random_atlas(lm.n_layers, lm.d_model)
    batch = make_batch()
    layers = list(range(lm.n_layers))
    config = GuardConfig(["tox"], layers=layers)
    (guard,) = build_guards(["ablate"], atlas, config, lm.layer_template)
    with guard.install(lm.model):
        outs = layer_outs(lm.model, batch, layers, lm.layer_template)
    plain = layer_outs(lm.model, batch, layers, lm.layer_template)
    for layer in layers:
        u = atlas.direction("tox", layer)
        # each layer re-ablates what its block wrote back along the direction
        assert float((outs[layer] @ u).abs().max()) < 1e-5 * float(outs[layer].abs().max())
        assert float((plain[layer] @ u).abs().max()) > 1e-2 * float(plain[layer].abs().max())


def test_strength_is_the_ablated_share_and_dtype_is_kept():
    atlas = random_atlas()
    (guard,) = build_guards(["ablate"], atlas, GuardConfig(["tox"]))
    plan = guard.plans[0]
    u = atlas.direction("tox", 1)
    hidden = torch.randn(2, 5, 32)
    guard.set_strength(0.25)
    out = guard.modify(plan, hidden)
    torch.testing.assert_close(out @ u, 0.75 * (hidden @ u), atol=1e-5, rtol=0)
    guard.set_strength(0.0)
    assert guard.modify(plan, hidden) is None
    guard.set_strength(1.0)
    low = guard.modify(plan, hidden.bfloat16())
    assert low.dtype == torch.bfloat16
    # bf16 keeps a residue of the order of its rounding (8 bits of mantissa)
    assert float((low.float() @ u).abs().max()) < 2e-2 * float(hidden.abs().max())


def test_ablate_trains_and_leaves_no_hooks(tmp_path):
    lm = tiny_model("llama")
    atlas = lm_atlas(lm)
    res = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        guard="ablate",
        atlas=atlas,
        guard_concepts="toxicity,deception",
        guard_config=GuardConfig(layers=[0, 1]),
        config=cfg(max_steps=3),
        progress=False,
    )
    assert res.guards == ["ablate"] and len(res.geometry_log) == 3
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in res.geometry_log)
    assert {"ablate/proj/toxicity@0", "ablate/proj/toxicity@1"} <= set(res.geometry_log[0])
    assert hooks(res.lm.model) == [0] * lm.n_layers  # nothing at inference
    run_cfg = res.provenance["guard_config"]
    assert run_cfg["layers"] == [0, 1] and run_cfg["concepts"] == ["toxicity", "deception"]
