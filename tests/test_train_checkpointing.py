from __future__ import annotations

import pytest

from geomsafe.errors import GeomsafeError
from geomsafe.layers import decoder_blocks
from geomsafe.testing import FAMILIES, tiny_model
from geomsafe.train.checkpointing import (
    check_checkpointing,
    checkpointing_mode,
    hooks_outside_checkpoint,
)
from train_helpers import StandIn, checkpoint_around_call, guarded


@pytest.mark.parametrize(
    ("kwargs", "mode"),
    [
        ({"use_reentrant": True}, "reentrant"),
        ({"use_reentrant": False}, "non-reentrant"),
        (None, "non-reentrant"),  # transformers' default
        ({"preserve_rng_state": True}, "reentrant"),  # torch's default without use_reentrant
    ],
)
def test_the_mode_is_read_from_the_checkpointing_function(kwargs, mode):
    lm = tiny_model("llama")
    block = decoder_blocks(lm.model)[1]
    assert checkpointing_mode(block, lm.model) is None
    lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    assert checkpointing_mode(block, lm.model) == mode
    lm.model.gradient_checkpointing_disable()
    assert checkpointing_mode(block, lm.model) is None


@pytest.mark.parametrize("family", FAMILIES)
def test_transformers_blocks_keep_their_hooks_outside_the_checkpoint(family):
    assert hooks_outside_checkpoint(decoder_blocks(tiny_model(family).model)[0])


def test_a_block_that_checkpoints_its_call_is_refused_only_when_checkpointed(monkeypatch):
    _, model, guards = guarded(kinds="steer,covariance")
    block = decoder_blocks(model)[1]
    monkeypatch.setattr(type(block), "__call__", checkpoint_around_call, raising=False)
    assert not hooks_outside_checkpoint(block)
    check_checkpointing(guards, model, "me")  # not checkpointed: served
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    check_checkpointing([StandIn()], model, "me")  # not an atlas guard: its own hooks
    with pytest.raises(GeomsafeError, match="^me: reentrant activation checkpointing of Llama"):
        check_checkpointing(guards, model, "me")
    monkeypatch.undo()
    check_checkpointing(guards, model, "me")  # transformers' own layout: served
