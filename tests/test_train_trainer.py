from __future__ import annotations

import contextlib

import pytest
import torch

from geomsafe.errors import GeomsafeError
from geomsafe.guard import GUARDS, Guard, GuardConfig
from geomsafe.guard.base import needs_atlas
from geomsafe.layers import decoder_blocks
from geomsafe.testing import tiny_model
from geomsafe.train import GuardedTrainer, finetune
from geomsafe.train.data import load_data
from geomsafe.train.lora import make_peft_model
from geomsafe.train.steps import heldout_loss
from geomsafe.train.trainer import GeometryCallback, PadCollator, quiet, training_arguments
from guard_helpers import hooks, randomise_lora_b
from train_helpers import (
    CHECKPOINTING,
    REPEAT,
    GradCapture,
    StandIn,
    assert_same_step_under_checkpointing,
    cfg,
    checkpoint_around_call,
    checkpointing_args,
    guarded,
    lm_atlas,
)


class Probe(Guard):
    """Not an atlas guard: penalty ``weight * sum(lora_A)`` (so at step 1, where the task loss
    has no gradient on A because B = 0, A moves by the penalty alone), or the number of the
    micro-batch's assistant tokens without ``weight``. Counts the forward hooks on each decoder
    block while installed, beyond those present before (hooks of the guards installed first)."""

    name = "probe"

    def __init__(self, weight: float | None = None) -> None:
        self.weight = weight
        self.extra_hooks: list[int] | None = None
        self._before: list[int] | None = None

    @contextlib.contextmanager
    def _installed(self, model):
        counts = [len(b._forward_hooks) for b in decoder_blocks(model)]
        if self._before is not None:
            self.extra_hooks = [n - b for n, b in zip(counts, self._before, strict=True)]
        yield

    def install(self, model):
        return self._installed(model)

    def penalty(self, model, inputs):
        if self.weight is None:
            return (inputs["labels"] != -100).sum().float()
        return self.weight * sum(p.sum() for n, p in model.named_parameters() if "lora_A" in n)

    def after_step(self, model):
        self._before = [len(b._forward_hooks) for b in decoder_blocks(model)]


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_logged_loss_is_the_mean_response_loss(tmp_path, grad_accum):
    lm = tiny_model("llama")
    data = load_data(REPEAT[:6], lm.tokenizer)
    expected = heldout_loss(lm, data)  # token-mean CE of the base model on the 6 examples
    guard = StandIn(weight=0.0)
    config = cfg(batch_size=6 // grad_accum, grad_accum=grad_accum, max_steps=1)
    res = finetune(
        lm, REPEAT[:6], out=tmp_path / "run", guard=[guard], config=config, progress=False
    )
    assert guard.forwards == grad_accum and guard.steps == 1
    assert res.geometry_log[0]["loss"] == pytest.approx(expected, rel=1e-4)


def test_penalty_weight_does_not_depend_on_grad_accum(tmp_path):
    lm = tiny_model("llama")
    features = load_data(REPEAT[:6], lm.tokenizer).features
    tokens = sum(sum(label != -100 for label in f["labels"]) for f in features)
    first_a = [p for n, p in make_peft_model(lm.model, cfg()).named_parameters() if "lora_A" in n]
    lm = tiny_model("llama")  # make_peft_model wrapped the model in place
    for grad_accum in (1, 2, 3):
        config = cfg(
            batch_size=6 // grad_accum,
            grad_accum=grad_accum,
            max_steps=1,
            max_grad_norm=0.0,  # no clipping
            extra_args=dict(optim="sgd"),
        )
        out = tmp_path / f"a{grad_accum}"
        res = finetune(lm, REPEAT[:6], out=out, guard=[Probe(0.5)], config=config, progress=False)
        a = [p for n, p in res.lm.model.named_parameters() if "lora_A" in n][0]
        move = (first_a[0] - a).detach()  # SGD: lr x weight x 1 per element, whatever the
        torch.testing.assert_close(move, torch.full_like(move, 1e-2 * 0.5), atol=1e-7, rtol=1e-4)
        out = tmp_path / f"b{grad_accum}"  # accumulation
        counted = finetune(lm, REPEAT[:6], out=out, guard=[Probe()], config=config, progress=False)
        # the logged penalty is the mean over the step's micro-batches
        assert counted.geometry_log[0]["penalty"] == pytest.approx(tokens / grad_accum)


def test_one_forward_hook_per_watched_layer_during_training(tmp_path):
    lm = tiny_model("llama")  # 3 layers
    atlas = lm_atlas(lm)
    atlas.stats["deception"]["best_layer"] = 2
    probe = Probe(0.0)
    finetune(
        lm,
        REPEAT,
        out=tmp_path / "run",
        guard=["projection", "covariance", "steer", probe],
        atlas=atlas,
        guard_concepts="toxicity,deception",
        guard_config=GuardConfig(layers=[1]),
        config=cfg(max_steps=2),
        progress=False,
    )
    # guards at layer 1; the monitor at toxicity's and deception's best layers, 1 and 2
    assert probe.extra_hooks == [0, 1, 1]


def test_pad_collator_pads_right():
    batch = PadCollator(0, pad_to_multiple_of=4)(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}]
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def guarded_step(tmp_path, kinds: str, mode: str):
    """One GuardedTrainer step (batch 4) of a tiny peft model (random LoRA B) with ``kinds``
    under activation checkpointing ``mode``: the geometry row, the gradients before the
    optimiser step and the first block's attention calls."""
    lm, model, guards = guarded(kinds=kinds)
    randomise_lora_b(model)
    features = load_data(REPEAT[:4], lm.tokenizer).features
    config = cfg(max_steps=1, max_grad_norm=0.0, extra_args=checkpointing_args(mode))
    args = training_arguments(config, tmp_path / f"{kinds}-{mode}", save=False)
    geometry, capture = GeometryCallback(), GradCapture()
    trainer = GuardedTrainer(
        model=model,
        args=args,
        train_dataset=features,
        data_collator=PadCollator(0),
        callbacks=[geometry, capture],
        guards=guards,
    )
    geometry.trainer = trainer
    quiet(trainer)
    trainer.train()
    assert hooks(model) == [0, 0, 0]
    return geometry.rows[0], capture.grads[0], capture.attention_calls


@pytest.fixture(scope="module")
def unguarded(tmp_path_factory, one_thread):
    """The gradients of :func:`guarded_step` without guards."""
    return guarded_step(tmp_path_factory.mktemp("unguarded"), "", "off")[1]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", [k for k in GUARDS if needs_atlas(k)])  # kl: test_guard_kl
def test_guarded_trainer_gives_the_same_step_with_gradient_checkpointing(tmp_path, kind, unguarded):
    assert_same_step_under_checkpointing(
        lambda mode: guarded_step(tmp_path, kind, mode), kind, unguarded
    )


@pytest.mark.usefixtures("one_thread")
def test_guarded_trainer_refuses_hooks_inside_the_checkpoint(tmp_path, monkeypatch):
    _, model, _ = guarded()
    block_class = type(decoder_blocks(model)[0])
    monkeypatch.setattr(block_class, "__call__", checkpoint_around_call, raising=False)
    for mode in CHECKPOINTING[1:]:
        with pytest.raises(GeomsafeError, match=f"^GuardedTrainer: {mode} activation"):
            guarded_step(tmp_path, "projection", mode)
