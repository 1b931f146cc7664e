from __future__ import annotations

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GuardConfig, build_guards
from geomsafe.guard.atlas_guard import assistant_mask
from geomsafe.testing import tiny_model
from guard_helpers import make_batch, peft_llama, random_atlas, residuals

pytestmark = pytest.mark.usefixtures("one_thread")


def test_assistant_mask_from_labels_attention_or_nothing():
    batch = make_batch()
    torch.testing.assert_close(assistant_mask(batch, (2, 12)), batch["labels"] != -100)
    no_labels = {"attention_mask": batch["attention_mask"]}
    torch.testing.assert_close(assistant_mask(no_labels, (2, 12)), batch["attention_mask"].bool())
    assert assistant_mask({}, (2, 3)).all()
    with pytest.raises(GeomsafeError, match="does not match the recorded"):
        assistant_mask(batch, (2, 11))


def test_log_is_the_token_mean_over_the_step_micro_batches():
    atlas = random_atlas()
    model = peft_llama()
    (guard,) = build_guards("covariance", atlas, GuardConfig(["tox"], targets=["help"]))
    u = atlas.direction("tox", 1)
    sums, count, pens = 0.0, 0, []
    for seed in (0, 1):  # two micro-batches, one optimiser step
        batch = make_batch(seed=seed, length=12 - 2 * seed)
        with guard.install(model):
            model(**batch)
        pens.append(guard.penalty(model, batch).item())
        mask = batch["labels"] != -100
        sums += float((residuals(model, batch)[1].detach()[mask] @ u).sum())
        count += int(mask.sum())
        assert guard.recorded == {}  # penalty() has used the recording
    guard.after_step(model)
    log = guard.log()
    assert log["proj/tox"] == pytest.approx(sums / count, rel=1e-5)
    assert log["penalty"] == pytest.approx(sum(pens) / 2)
    assert guard.log() == log  # kept until the next step's micro-batches


def test_penalty_needs_the_forward_and_layers_must_exist():
    atlas = random_atlas()
    (guard,) = build_guards("steer", atlas, GuardConfig(["tox"]))
    with pytest.raises(GeomsafeError, match="inside guard.install"):
        guard.penalty(peft_llama(), make_batch())
    shallow = tiny_model("llama", n_layers=1, width=32).model
    with (
        pytest.raises(GeomsafeError, match="guard layer 1 out of range: the model has 1"),
        guard.install(shallow),
    ):
        pass
