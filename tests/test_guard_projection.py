from __future__ import annotations

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, build_guards
from geomsafe.testing import tiny_model
from guard_helpers import (
    N_LAYERS,
    PEFT_TEMPLATE,
    WIDTH,
    hooks,
    make_batch,
    peft_llama,
    random_atlas,
    randomise_lora_b,
    residuals,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def projection_reference(model, batch, atlas, names, layer):
    """mean over assistant tokens of sum_h (proj_h(adapted) - proj_h(base))², directly."""
    adapted = residuals(model, batch)[layer]
    with torch.no_grad(), model.disable_adapter():
        base = residuals(model, batch)[layer]
    dirs = atlas.matrix(layer, names)
    mask = batch["labels"] != -100
    diff = (adapted - base)[mask] @ dirs.T
    return diff.pow(2).sum(-1).mean()


def test_projection_penalty_zero_at_init_then_positive_with_gradients():
    atlas = random_atlas()
    model = peft_llama()
    batch = make_batch()
    cfg = GuardConfig(concepts=["tox", "dec"], weight=2.0)
    (guard,) = build_guards(["projection"], atlas, cfg, layer_template=PEFT_TEMPLATE)
    n_hooks = hooks(model)
    with guard.install(model):
        model(**batch)
    p0 = guard.penalty(model, batch)
    assert p0 is not None and abs(p0.item()) < 1e-10  # B = 0: adapted == base
    guard.after_step(model)

    randomise_lora_b(model)
    with guard.install(model):
        model(**batch)
    p1 = guard.penalty(model, batch)
    assert hooks(model) == n_hooks  # the base forward's hooks are gone too
    assert p1 is not None and p1.item() > 1e-4
    ref = projection_reference(model, batch, atlas, ["tox", "dec"], 1)
    assert p1.item() == pytest.approx(2.0 * float(ref.detach()), rel=1e-4)
    p1.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n and p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    assert guard.log()["penalty"] == pytest.approx(p1.item())

    # "increase" only counts moves towards the harmful side: never more than "both".
    (inc,) = build_guards(
        ["projection"], atlas, GuardConfig(["tox", "dec"], weight=2.0, projection_mode="increase")
    )
    with inc.install(model):
        model(**batch)
    p_inc = inc.penalty(model, batch).item()
    assert 0 < p_inc < p1.item()


def test_base_projections_stop_after_the_last_guarded_layer():
    atlas = random_atlas()
    model = peft_llama()
    randomise_lora_b(model)
    batch = make_batch()
    (guard,) = build_guards(["projection"], atlas, GuardConfig(["tox"], layers=[0, 1]))
    calls = []
    last = model.base_model.model.model.layers[N_LAYERS - 1]
    handle = last.register_forward_hook(lambda *a: calls.append(1))
    try:
        base = guard.base_projections(model, batch)
    finally:
        handle.remove()
    assert calls == []  # the layer above the last guarded one never ran
    with torch.no_grad(), model.disable_adapter():
        want = residuals(model, batch)
    for layer in (0, 1):
        expected = want[layer] @ atlas.direction("tox", layer)
        torch.testing.assert_close(base[layer][..., 0], expected, atol=1e-5, rtol=0)


def test_projection_needs_recorded_forward_and_peft():
    atlas = random_atlas()
    model = peft_llama()
    (guard,) = build_guards(["projection"], atlas, GuardConfig(["tox"]))
    with pytest.raises(GeomsafeError, match="install"):
        guard.penalty(model, make_batch())
    plain = tiny_model("llama", n_layers=N_LAYERS, width=WIDTH).model
    with guard.install(plain):
        plain(**make_batch())
    with pytest.raises(GeomsafeError, match="disable_adapter"):
        guard.penalty(plain, make_batch())
