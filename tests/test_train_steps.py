from __future__ import annotations

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.testing import tiny_model
from geomsafe.train.data import load_data
from geomsafe.train.steps import heldout_loss, train_steps
from train_helpers import REPEAT, StandIn, cfg, lm_atlas


def test_train_steps_times_each_step():
    lm = tiny_model("qwen2")
    guard = StandIn()
    times = train_steps(lm, REPEAT, [guard], cfg(), n_steps=3)
    assert len(times) == 3 and all(t > 0 for t in times) and guard.steps == 3


def test_train_steps_builds_guards_by_name_from_the_atlas():
    lm = tiny_model("llama")
    stand_in = StandIn()
    times = train_steps(
        lm,
        REPEAT,
        ["projection", stand_in],
        cfg(),
        n_steps=2,
        atlas=lm_atlas(lm),
        guard_concepts=["toxicity"],
        monitor=True,
    )
    assert len(times) == 2 and stand_in.steps == 2
    with pytest.raises(GeomsafeError, match="guards by name need an atlas"):
        train_steps(lm, REPEAT, "projection", cfg(), n_steps=1)


def test_heldout_loss_keeps_the_mode_and_does_not_depend_on_batch_size():
    lm = tiny_model("llama")
    data = load_data(REPEAT[:3], lm.tokenizer)
    lm.model.train()
    first = heldout_loss(lm, data, batch_size=2)
    assert lm.model.training and first == pytest.approx(heldout_loss(lm, data, batch_size=3))
