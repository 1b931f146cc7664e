from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GUARDS, Guard, GuardConfig, MonitorGuard, build_guards
from geomsafe.guard.base import combined, guard_kinds, needs_atlas, step_logs, total_penalty
from geomsafe.layers import decoder_blocks
from guard_helpers import (
    PEFT_TEMPLATE,
    custom_guard_kind,
    hooks,
    make_batch,
    peft_llama,
    random_atlas,
    residuals,
)

pytestmark = pytest.mark.usefixtures("one_thread")
BUILT_IN = ["orthogonal", "steer", "ablate", "projection", "covariance", "kl"]


class Fixed(Guard):
    """A guard that is not an atlas guard: a fixed penalty and log, counts its installs."""

    def __init__(self, name: str, value: float | None, log: dict[str, float]) -> None:
        self.name, self.value, self._log, self.installs = name, value, log, 0

    @contextlib.contextmanager
    def _installed(self):
        self.installs += 1
        yield

    def install(self, model):
        return self._installed()

    def penalty(self, model, inputs):
        return None if self.value is None else torch.tensor(self.value)

    def log(self):
        return dict(self._log)


def test_registry_and_bad_input():
    assert list(GUARDS) == BUILT_IN  # cheapest first
    assert all(issubclass(cls, Guard) for cls in GUARDS.values())
    atlas = random_atlas()
    guards = build_guards("orthogonal, STEER,orthogonal", atlas, GuardConfig())
    assert [g.name for g in guards] == ["orthogonal", "steer"]
    assert [p.layer for p in guards[0].plans] == [1]  # both concepts' best layer
    assert guards[0].plans[0].names == ["tox", "dec"]
    assert build_guards([], atlas) == []
    assert guard_kinds(None) == []
    assert guard_kinds(["steer", " projection "]) == ["steer", "projection"]
    bad = [  # a GuardConfig checks itself when made (and build_guards checks it again)
        (["bogus"], {}, "unknown guard 'bogus'; use one of orthogonal, steer"),
        (["steer"], {"concepts": []}, "concepts list is empty"),
        (["steer"], {"layers": []}, "layers list is empty"),
        (["steer"], {"steer_scale": "huge"}, "steer_scale"),
        (["projection"], {"projection_mode": "x"}, "projection_mode"),
        (["projection"], {"weight": -1}, "weight"),
        (["orthogonal"], {"orthogonal_scope": "all"}, "orthogonal_scope"),
    ]
    for names, fields, message in bad:
        with pytest.raises(GeomsafeError, match=message):
            build_guards(names, atlas, GuardConfig(**fields))
    cfg = GuardConfig()
    cfg.weight = -1  # a mutated config is checked again where it is used
    with pytest.raises(GeomsafeError, match="weight"):
        build_guards(["projection"], atlas, cfg)


def test_a_registered_guard_is_a_kind():
    atlas = random_atlas()
    with custom_guard_kind("square") as cls:
        assert list(GUARDS) == [*BUILT_IN, "square"]
        guards = build_guards("square,steer", atlas, GuardConfig(["tox"], weight=2.0))
        assert [type(g) for g in guards[:1]] == [cls] and guards[1].name == "steer"
        model, batch = peft_llama(), make_batch()
        with combined(guards, model):
            model(**batch)
        penalty = total_penalty(guards, model, batch)
        hidden = residuals(model, batch)[1].detach()
        mask = batch["labels"] != -100
        want = 2.0 * float((hidden[mask] @ atlas.direction("tox", 1)).pow(2).mean())
        assert penalty is not None and penalty.item() == pytest.approx(want, rel=1e-5)
    assert "square" not in GUARDS
    with pytest.raises(GeomsafeError, match="unknown guard 'square'"):
        build_guards("square", atlas)


def test_total_penalty_and_step_logs():
    a = Fixed("a", 1.5, {"penalty": 1.5, "x": 1.0})
    b = Fixed("b", None, {"x": 2.0, "y": 3.0})
    c = Fixed("c", 0.25, {})
    assert total_penalty([b], None, {}) is None
    assert float(total_penalty([a, b, c], None, {})) == 1.75
    assert step_logs([a, b]) == {"a/penalty": 1.5, "a/x": 1.0, "b/x": 2.0, "b/y": 3.0}
    bare = step_logs([a, b], bare=True)
    assert list(bare) == ["a/penalty", "penalty", "a/x", "x", "b/x", "b/y", "y"]
    assert bare["x"] == 1.0  # the first guard that logs a key gives its bare value


def test_combined_one_hook_per_guarded_layer_for_all_atlas_guards():
    # toxicity's best layer is 1, deception's 2; the guards watch layers 0 and 1.
    atlas = random_atlas()
    atlas.stats["dec"]["best_layer"] = 2
    config = GuardConfig(["tox", "dec"], targets=["help"], layers=[0, 1])
    guards = build_guards("projection,covariance", atlas, config, PEFT_TEMPLATE)
    monitor = MonitorGuard(atlas, ["tox", "dec"], PEFT_TEMPLATE)
    other = Fixed("other", None, {})
    model, batch = peft_llama(), make_batch()
    before = hooks(model)
    with combined([monitor, *guards, other], model):
        assert hooks(model) == [n + 1 for n in before]  # layers 0, 1 (guards) and 2 (monitor)
        assert other.installs == 1  # a guard of another family installs its own hooks
        model(**batch)
    assert hooks(model) == before
    assert sorted(monitor.recorded) == [1, 2] and sorted(guards[0].recorded) == [0, 1]
    with combined(guards, model):
        assert hooks(model) == [1, 1, 0]


def test_plain_torch_loop_docstring_example():
    atlas = random_atlas()
    model = peft_llama()
    batches = [make_batch(seed=s) for s in range(3)]
    config = GuardConfig(concepts=["tox"], targets=["help"], steer_scale="unit")
    kinds = [k for k in GUARDS if needs_atlas(k)]  # the kl guard: test_guard_kl
    guards = build_guards(kinds, atlas, config, layer_template=PEFT_TEMPLATE)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    n_hooks = hooks(model)
    logs = []
    for batch in batches:
        with combined(guards, model):
            loss = model(**batch).loss
        penalty = total_penalty(guards, model, batch)
        assert penalty is not None
        loss = loss + penalty
        loss.backward()
        opt.step()
        opt.zero_grad()
        for guard in guards:
            guard.after_step(model)
        logs.append(step_logs(guards))
    assert hooks(model) == n_hooks
    for name in kinds:
        assert f"{name}/penalty" in logs[-1]
        assert np.isfinite(logs[-1][f"{name}/proj/tox"])
    assert logs[-1]["orthogonal/penalty"] == 0.0 and logs[-1]["steer/penalty"] == 0.0
    assert logs[-1]["projection/penalty"] > 0
    u = atlas.direction("tox", 1)
    block = decoder_blocks(model)[1]
    for module in (block.self_attn.o_proj, block.mlp.down_proj):
        b = module.lora_B["default"].weight
        assert b.abs().max() > 1e-4 and (u @ b).abs().max() < 1e-5
