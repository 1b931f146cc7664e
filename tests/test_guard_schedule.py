from __future__ import annotations

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, build_guards
from geomsafe.guard.base import begin_steps, combined, total_penalty
from geomsafe.guard.schedule import strength
from geomsafe.testing import tiny_model
from geomsafe.train import finetune
from guard_helpers import PEFT_TEMPLATE, make_batch, peft_llama, random_atlas, randomise_lora_b
from train_helpers import REPEAT, cfg, lm_atlas

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_values():
    assert [strength("constant", s, 8) for s in range(8)] == [1.0] * 8
    # front: full for ceil(8 / 4) = 2 steps, then the floor
    assert [strength("front", s, 8, floor=0.25) for s in range(4)] == [1.0, 1.0, 0.25, 0.25]
    assert [strength("front", s, 8, steps=3) for s in range(5)] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert [strength("linear_decay", s, 4) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    decay = [strength("linear_decay", s, 10, steps=2, floor=0.2) for s in range(4)]
    assert decay == pytest.approx([1.0, 0.6, 0.2, 0.2])
    with pytest.raises(GeomsafeError, match="guard schedule must be one of"):
        strength("cosine", 0, 4)
    with pytest.raises(GeomsafeError, match="number of optimiser steps or schedule_steps"):
        strength("front", 0, 0)
    assert strength("front", 0, 0, steps=1) == 1.0  # an unknown run length with steps is fine


def test_bad_schedule_config_and_strength():
    atlas = random_atlas()
    for fields, message in [
        ({"schedule": "cosine"}, "guard schedule"),
        ({"schedule_steps": 0}, "schedule_steps"),
        ({"schedule_floor": 1.5}, "schedule_floor"),
    ]:
        with pytest.raises(GeomsafeError, match=message):
            build_guards(["steer"], atlas, GuardConfig(**fields))
    (guard,) = build_guards(["steer"], atlas)
    with pytest.raises(GeomsafeError, match=r"strength must be in \[0, 1\]"):
        guard.set_strength(1.5)


def test_strength_scales_every_guard_knob():
    atlas = random_atlas()
    batch = make_batch()
    config = GuardConfig(concepts=["tox"], steer_scale="unit", steer_coeff=0.5, targets=["help"])
    model = peft_llama()
    randomise_lora_b(model)
    guards = build_guards(["projection", "covariance"], atlas, config, PEFT_TEMPLATE)
    penalties = []
    for s in (1.0, 0.25):
        for guard in guards:
            guard.set_strength(s)
        with combined(guards, model):
            model(**batch)
        penalties.append([float(guard.penalty(model, batch).detach()) for guard in guards])
    assert penalties[1] == pytest.approx([0.25 * p for p in penalties[0]], rel=1e-5)
    (steer,) = build_guards(["steer"], atlas, config, PEFT_TEMPLATE)
    hidden = torch.randn(2, 3, 32)
    steer.set_strength(0.4)
    added = steer.modify(steer.plans[0], hidden) - hidden
    expected = 0.4 * 0.5 * atlas.direction("tox", 1)
    torch.testing.assert_close(added, expected.expand_as(added))
    steer.set_strength(0.0)
    assert steer.modify(steer.plans[0], hidden) is None
    # orthogonal at strength s removes the share s of the writers' harmful component
    (ortho,) = build_guards(["orthogonal"], atlas, config, PEFT_TEMPLATE)
    u = atlas.direction("tox", 1)
    o_proj = model.base_model.model.model.layers[1].self_attn.o_proj.lora_B["default"].weight
    before = float((u @ o_proj).detach().norm())
    ortho.set_strength(0.25)
    ortho.after_step(model)
    assert float((u @ o_proj).detach().norm()) == pytest.approx(0.75 * before, rel=1e-4)
    assert ortho.log()["strength"] == 0.25


def test_begin_steps_follows_the_config_schedule():
    atlas = random_atlas()
    config = GuardConfig(schedule="front", schedule_steps=2, schedule_floor=0.5)
    guards = build_guards(["steer", "ablate"], atlas, config)
    seen = []
    for step in range(4):
        begin_steps(guards, step, 4)
        seen.append([g.strength for g in guards])
    assert seen == [[1.0, 1.0], [1.0, 1.0], [0.5, 0.5], [0.5, 0.5]]
    model = peft_llama()
    batch = make_batch()
    with combined(guards, model):
        model(**batch)
    total_penalty(guards, model, batch)
    for guard in guards:
        guard.after_step(model)
    assert [g.log()["strength"] for g in guards] == [0.5, 0.5]


def test_trainer_sets_and_logs_the_strength_per_step(tmp_path):
    lm = tiny_model("llama")
    res = finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        guard="projection,steer",
        atlas=lm_atlas(lm),
        guard_concepts="toxicity",
        guard_config=GuardConfig(schedule="linear_decay", schedule_floor=0.2),
        config=cfg(max_steps=4),
        progress=False,
    )
    strengths = [row["strength"] for row in res.geometry_log]
    assert strengths == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert [row["steer/strength"] for row in res.geometry_log] == strengths
