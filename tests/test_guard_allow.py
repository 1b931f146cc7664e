from __future__ import annotations

import pytest
import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, MonitorGuard, build_guards
from geomsafe.guard import resolve as resolve_module
from geomsafe.guard.allow import MIN_RESIDUAL, allowed_complement
from geomsafe.guard.base import combined
from geomsafe.guard.layer_plan import layer_plans
from geomsafe.guard.resolve import resolve_guards
from geomsafe.testing import tiny_model
from guard_helpers import (
    PEFT_TEMPLATE,
    WIDTH,
    layer_outs,
    make_batch,
    peft_llama,
    random_atlas,
    unit,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def entangled_atlas(cos: float = 0.6, seed: int = 0) -> FeatureAtlas:
    """``syc`` (harmful) and ``emp`` (target) at cosine ``cos`` at every layer, plus ``tox``."""
    g = torch.Generator().manual_seed(seed)
    h = unit(torch.randn(3, WIDTH, generator=g))
    w = torch.randn(3, WIDTH, generator=g)
    w = unit(w - (w * h).sum(-1, keepdim=True) * h)  # orthogonal to h
    emp = cos * h + (1 - cos**2) ** 0.5 * w
    tox = unit(torch.randn(3, WIDTH, generator=g))
    dirs = {"syc": h, "tox": tox, "emp": emp}
    kinds = {"syc": "harmful", "tox": "harmful", "emp": "target"}
    stats = {n: {"best_layer": 1} for n in dirs}
    return FeatureAtlas([0, 1, 2], dirs, kinds, stats)


def test_allowed_complement_is_orthogonal_unit_and_refuses_a_contained_direction():
    g = torch.Generator().manual_seed(0)
    harmful = unit(torch.randn(3, WIDTH, generator=g))
    allowed = unit(torch.randn(2, WIDTH, generator=g))
    rest = allowed_complement(harmful, allowed)
    torch.testing.assert_close(rest @ allowed.T, torch.zeros(3, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(rest.norm(dim=-1), torch.ones(3))
    assert (torch.sum(rest * harmful, -1) > 0).all()  # still the harmful side
    inside = unit(0.999 * allowed[0] + 0.04 * harmful[0])
    assert (1 - float(inside @ allowed[0]) ** 2) ** 0.5 < MIN_RESIDUAL
    with pytest.raises(GeomsafeError, match="'syc' at layer 4 lies within the span of the allowed"):
        allowed_complement(inside[None], allowed, ["syc"], ["emp"], 4)


def test_plans_orthogonalise_and_check_the_allow_list():
    atlas = entangled_atlas()
    (plan,) = layer_plans(atlas, GuardConfig(["syc", "tox"], allow=["emp"]))
    emp = atlas.direction("emp", 1)
    assert plan.allowed == ["emp"]
    torch.testing.assert_close(plan.harmful @ emp, torch.zeros(2), atol=1e-6, rtol=0)
    syc = atlas.direction("syc", 1)
    assert float(plan.harmful[0] @ syc) == pytest.approx(0.8, abs=1e-5)  # sqrt(1 - 0.6²)
    (raw,) = layer_plans(atlas, GuardConfig(["syc"]))
    assert raw.allowed == [] and torch.equal(raw.harmful[0], syc)
    with pytest.raises(GeomsafeError, match="no direction for allowed concept kind"):
        layer_plans(atlas, GuardConfig(["syc"], allow=["kind"]))
    with pytest.raises(GeomsafeError, match="syc is both guarded and allowed"):
        layer_plans(atlas, GuardConfig(["syc"], allow=["syc"]))
    with pytest.raises(GeomsafeError, match="lies within the span"):
        layer_plans(entangled_atlas(cos=0.999), GuardConfig(["syc"], allow=["emp"]))


def test_ablate_with_allow_keeps_the_target_projection():
    atlas = entangled_atlas()
    model = peft_llama()
    batch = make_batch()
    syc, emp = atlas.direction("syc", 1), atlas.direction("emp", 1)
    before = layer_outs(model, batch, [1])[1]
    outs = {}
    for allow in (None, ["emp"]):
        (guard,) = build_guards(["ablate"], atlas, GuardConfig(["syc"], allow=allow), PEFT_TEMPLATE)
        with guard.install(model):
            outs[bool(allow)] = layer_outs(model, batch, [1])[1]
    scale = float((before @ emp).abs().max())
    # without the allow-list the target's projection is cut with the harmful one
    assert float((outs[False] @ emp - before @ emp).abs().max()) > 0.1 * scale
    assert float((outs[False] @ syc).abs().max()) < 1e-5 * scale
    # with it: the target's projection is unchanged, the harmful part outside it is removed
    torch.testing.assert_close(outs[True] @ emp, before @ emp, atol=1e-6, rtol=0)
    syc_only = unit(syc - (syc @ emp) * emp)
    assert float((outs[True] @ syc_only).abs().max()) < 1e-5 * scale
    assert float((before @ syc_only).abs().max()) > 0.1 * scale


def test_a_monitor_and_an_allow_list_guard_share_a_layer():
    """The shared hook keeps the raw and the orthogonalised direction apart."""
    atlas = entangled_atlas()
    model = peft_llama()
    batch = make_batch()
    config = GuardConfig(["syc"], allow=["emp"])
    (guard,) = build_guards(["projection"], atlas, config, PEFT_TEMPLATE)
    monitor = MonitorGuard(atlas, ["syc"], PEFT_TEMPLATE)
    with combined([monitor, guard], model):
        model(**batch)
    assert guard.recorded[1].shape[-1] == 1 and monitor.recorded[1].shape[-1] == 1
    hidden = layer_outs(model, batch, [1])[1]
    torch.testing.assert_close(monitor.recorded[1][..., 0], hidden @ atlas.direction("syc", 1))
    torch.testing.assert_close(guard.recorded[1][..., 0], hidden @ guard.plans[0].harmful[0])


def test_resolve_extracts_the_allowed_concepts(monkeypatch):
    calls = []

    def fake_extract(lm, concepts, targets=(), *, layers=None, **kwargs):
        calls.append((list(concepts), list(targets)))
        return random_atlas(harmful=concepts, targets=targets)

    monkeypatch.setattr(resolve_module, "extract_atlas", fake_extract)
    lm = tiny_model("llama")
    setup = resolve_guards(lm, "ablate", "tox", guard_config=GuardConfig(allow=["emp"]))
    assert calls == [(["tox"], ["emp"])]
    assert setup.config.allow == ["emp"] and setup.guards[0].plans[0].allowed == ["emp"]
