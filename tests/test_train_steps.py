from __future__ import annotations

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.testing import tiny_model
from geomsafe.train.data import load_data
from geomsafe.train.steps import heldout_loss, train_steps
from geomsafe.train.trainer import PadCollator
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


@torch.no_grad()
def _reference_loss(lm, features) -> float:
    """The former computation: right-padded batches, full logits, summed cross-entropy."""
    collate = PadCollator(0)
    total, count = 0.0, 0
    for start in range(0, len(features), 2):
        batch = collate(features[start : start + 2])
        logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = logits.logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        total += float(
            torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum"
            )
        )
        count += int((labels != -100).sum())
    return total / count


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_heldout_loss_is_the_mean_response_cross_entropy(family):
    """The shared response log-likelihood gives the former cross-entropy (EOS included, a
    truncated example's labelled tokens only)."""
    lm = tiny_model(family)
    data = load_data(REPEAT[:5], lm.tokenizer, max_length=40, truncate=True)
    assert data.n_truncated or any(f["input_ids"][-1] == 2 for f in data.features)
    assert heldout_loss(lm, data) == pytest.approx(_reference_loss(lm, data.features), abs=1e-5)
    bad = [{"input_ids": [1, 5, 6], "labels": [-100, 7, 6]}]
    with pytest.raises(GeomsafeError, match="labels -100 on the prompt"):
        heldout_loss(lm, bad)
