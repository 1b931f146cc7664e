"""Shared pieces of the train tests: data, a fast config, a stand-in guard, a tiny atlas."""

from __future__ import annotations

import contextlib
from functools import partial

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from geomsafe.atlas import FeatureAtlas
from geomsafe.guard import Guard, GuardConfig, build_guards
from geomsafe.layers import decoder_blocks
from geomsafe.models import LoadedModel
from geomsafe.testing import tiny_model
from geomsafe.train import TrainConfig
from geomsafe.train.lora import make_peft_model, peft_layer_template
from guard_helpers import random_atlas, unit

REPEAT = [("say a", "abab abab abab"), ("say b", "bcbc bcbc bcbc"), ("say c", "cdcd cdcd")] * 4
FAST = dict(batch_size=4, learning_rate=1e-2, save_steps=2, logging_steps=1)


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**FAST, **kw})


def lm_atlas(lm: LoadedModel, best: int = 1) -> FeatureAtlas:
    """Random directions of toxicity and deception (harmful) and helpfulness (target)."""
    return random_atlas(
        lm.n_layers, lm.d_model, ("toxicity", "deception"), ("helpfulness",), best, spec=lm.spec
    )


def aligned_atlas(lm: LoadedModel, shift: torch.Tensor, layer: int = 1) -> FeatureAtlas:
    """``toxicity`` along ``shift`` at ``layer`` (best), ``deception`` orthogonal to it."""
    atlas = lm_atlas(lm, best=layer)
    atlas.directions["toxicity"][atlas.row(layer)] = unit(shift)
    dec = atlas.directions["deception"][atlas.row(layer)]
    atlas.directions["deception"][atlas.row(layer)] = unit(dec - (dec @ unit(shift)) * unit(shift))
    return atlas


def learnable(family: str = "llama") -> LoadedModel:
    """A tiny model whose LM head is sharp enough for LoRA to fit the data in a few steps
    (random-init heads give near-uniform logits that no residual change can sharpen)."""
    lm = tiny_model(family)
    with torch.no_grad():
        lm.model.get_output_embeddings().weight.mul_(30)
    return lm


class StandIn(Guard):
    """A guard that is not an atlas guard: penalises the squared norm of the LoRA B weights
    (zero at init), counts its forward calls and its after_step calls."""

    name = "standin"

    def __init__(self, weight=1.0, fail_at_step=None):
        self.weight, self.fail_at_step = weight, fail_at_step
        self.forwards = self.steps = 0
        self.active = False
        self.last = 0.0

    @contextlib.contextmanager
    def _installed(self, model):
        self.active = True
        handle = model.register_forward_hook(
            lambda *a: setattr(self, "forwards", self.forwards + 1)
        )
        try:
            yield
        finally:
            handle.remove()
            self.active = False

    def install(self, model):
        return self._installed(model)

    def penalty(self, model, inputs):
        assert not self.active and "labels" in inputs and "attention_mask" in inputs
        p = sum((p**2).sum() for n, p in model.named_parameters() if "lora_B" in n)
        self.last = float(p.detach())
        return self.weight * p

    def after_step(self, model):
        self.steps += 1
        if self.fail_at_step is not None and self.steps >= self.fail_at_step:
            raise RuntimeError("boom")

    def log(self):
        return {"penalty": self.weight * self.last, "lora_sq": self.last}


CHECKPOINTING = ("off", "reentrant", "non-reentrant")


def checkpointing_args(mode: str) -> dict:
    """TrainingArguments / SFTConfig keywords for activation checkpointing ``mode`` (TRL's
    SFTConfig turns it on by default: "off" says so)."""
    if mode == "off":
        return dict(gradient_checkpointing=False)
    kwargs = {"use_reentrant": mode == "reentrant"}
    return dict(gradient_checkpointing=True, gradient_checkpointing_kwargs=kwargs)


class GradCapture(TrainerCallback):
    """The trainable parameters' gradients before each optimiser step, and how many times the
    first decoder block's attention ran (twice a forward under activation checkpointing: the
    backward pass recomputes it)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.attention_calls = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        attention = decoder_blocks(model)[0].self_attn
        self.handle = attention.register_forward_hook(self._count)

    def _count(self, *_args) -> None:
        self.attention_calls += 1

    def on_train_end(self, args, state, control, **kwargs):
        self.handle.remove()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        named = model.named_parameters()
        self.grads.append({n: p.grad.detach().clone() for n, p in named if p.grad is not None})


KINDS = "orthogonal,ablate,projection"


def lora(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def guarded(weight: float = 50.0, seed: int = 0, kinds: str = KINDS):
    """A fresh tiny peft model and its guards (default: orthogonal, ablate, projection; linear
    decay)."""
    lm = tiny_model("llama", seed=seed)
    config = cfg(seed=seed)
    model = make_peft_model(lm.model, config)
    gcfg = GuardConfig(
        concepts=["toxicity", "deception"], weight=weight, schedule="linear_decay", layers=[1, 2]
    )
    guards = build_guards(kinds, lm_atlas(lm), gcfg, peft_layer_template(lm))
    return lm, model, guards


def checkpoint_around_call(self, *args, **kwargs):
    """A decoder block's ``__call__`` that checkpoints ``nn.Module.__call__`` (its forward hooks
    inside the checkpoint), as transformers 4.5x's ``GradientCheckpointingLayer`` did."""
    if self.gradient_checkpointing and self.training:
        call = partial(nn.Module.__call__, self, **kwargs)
        return self._gradient_checkpointing_func(call, *args)
    return nn.Module.__call__(self, *args, **kwargs)


def assert_same_step_under_checkpointing(step, kind: str, free: dict) -> None:
    """``step(mode) -> (log row, LoRA gradients, first-block forward calls)`` for the guard
    ``kind``: the guard acts (its penalty iff it keeps a graph; its gradients differ from the
    unguarded ``free`` ones iff it modifies the forward or has a penalty), and every
    checkpointing mode gives the same penalty, loss and gradients as none, with the first block
    really recomputed."""
    from geomsafe.guard import GUARDS

    want_row, want, calls = step("off")
    guard = GUARDS[kind]
    assert (want_row["penalty"] > 0) == guard.keep_graph
    moved = any(not torch.allclose(want[n], free[n], atol=1e-4) for n in want)
    assert moved == (guard.modifies or guard.keep_graph)  # the guard's own effect: can fail
    for mode in CHECKPOINTING[1:]:
        row, grads, recomputed = step(mode)
        assert recomputed == calls + 1  # the backward pass re-ran the first block: it is on
        assert row["penalty"] == pytest.approx(want_row["penalty"], rel=1e-5, abs=1e-9)
        assert row["loss"] == pytest.approx(want_row["loss"], rel=1e-5)
        assert grads.keys() == want.keys()
        for name, value in want.items():
            torch.testing.assert_close(grads[name], value, atol=1e-5, rtol=1e-5, msg=name)
