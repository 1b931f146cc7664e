"""Helpers for benchmarks, pilots and evaluation: run or time a few training steps, measure
held-out loss."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Sequence

import torch
from torch import nn

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.logodds import response_logps
from geomsafe.evaluate.probes import _batches
from geomsafe.formatting import Encoded, Example
from geomsafe.guard import Guard, GuardConfig, MonitorGuard
from geomsafe.guard.resolve import GuardSpec, resolve_guards
from geomsafe.models import LoadedModel, pad_token_id
from geomsafe.train.config import TrainConfig
from geomsafe.train.data import IGNORE_INDEX, TrainData, load_data
from geomsafe.train.lora import make_peft_model, peft_layer_template
from geomsafe.train.trainer import (
    GeometryCallback,
    GuardedTrainer,
    PadCollator,
    quiet,
    training_arguments,
)


def train_steps(
    lm: LoadedModel,
    examples: TrainData | Sequence[Example | tuple[str, str]],
    guards: GuardSpec = None,
    config: TrainConfig | None = None,
    n_steps: int = 10,
    *,
    atlas: FeatureAtlas | None = None,
    guard_concepts: Sequence[str] | None = None,
    guard_config: GuardConfig | None = None,
    monitor: bool = False,
) -> list[float]:
    """Run ``n_steps`` optimiser steps of LoRA training on a private copy of ``lm`` and return
    the wall time of each step (forward, penalty, backward, optimiser step, ``after_step``).

    ``guards``: Guard objects and/or guard kinds (built against ``atlas``). Same ``config.seed``
    -> same LoRA init and the same batches, so calls with different guards are comparable;
    for a benchmark, interleave calls and drop each call's first step (warm-up)."""
    config = config or TrainConfig()
    from transformers import set_seed

    set_seed(config.seed)
    data = train_data(lm, examples, config)
    setup = resolve_guards(
        lm,
        guards,
        guard_concepts,
        atlas,
        guard_config,
        layer_template=peft_layer_template(lm),
        extract=False,
    )
    _, geometry = run_steps(
        lm, data.features, config, n_steps, setup.guards, setup.monitor if monitor else None
    )
    return list(geometry.step_times)


def train_data(
    lm: LoadedModel, examples: TrainData | Sequence[Example | tuple[str, str]], config: TrainConfig
) -> TrainData:
    """``examples`` tokenised for training with ``config``'s length rules (as they are when
    already a :class:`TrainData`)."""
    if isinstance(examples, TrainData):
        return examples
    return load_data(
        examples,
        lm.tokenizer,
        max_length=config.max_length,
        truncate=config.truncate,
        add_eos=config.add_eos,
    )


def run_steps(
    lm: LoadedModel,
    features: Sequence[dict[str, list[int]]],
    config: TrainConfig,
    n_steps: int,
    guards: Sequence[Guard] = (),
    monitor: MonitorGuard | None = None,
) -> tuple[nn.Module, GeometryCallback]:
    """``n_steps`` optimiser steps of LoRA training (``config`` otherwise, nothing saved) on a
    private copy of ``lm``'s model: the trained peft model and the callback holding the
    geometry log (``rows``) and the step times."""
    config = dataclasses.replace(config, max_steps=n_steps).validate()
    from transformers import set_seed

    set_seed(config.seed)
    local = dataclasses.replace(lm, model=copy.deepcopy(lm.model))
    peft_model = make_peft_model(local.model, config)
    geometry = GeometryCallback()
    pad = pad_token_id(lm.tokenizer)
    with tempfile.TemporaryDirectory(prefix="geomsafe-steps-") as tmp:
        trainer = GuardedTrainer(
            model=peft_model,
            args=training_arguments(config, tmp, save=False),
            train_dataset=list(features),
            data_collator=PadCollator(pad),
            callbacks=[geometry],
            guards=guards,
            monitor=monitor,
        )
        geometry.trainer = trainer
        quiet(trainer)
        trainer.train()
    return peft_model, geometry


@torch.no_grad()
def heldout_loss(
    lm: LoadedModel, data: TrainData | Sequence[dict[str, list[int]]], batch_size: int = 8
) -> float:
    """Mean token cross-entropy on the response tokens (labels != -100) of ``data``: minus their
    summed log-likelihood (:func:`geomsafe.evaluate.logodds.response_logps`, the one response
    log-likelihood; logits at the labelled positions only) over their number. The model is
    scored in eval mode (its mode is restored after)."""
    features = data.features if isinstance(data, TrainData) else list(data)
    encoded = [_labelled(f) for f in features]
    model = lm.model
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for idx in _batches([e.input_ids for e in encoded], batch_size):
            total -= float(response_logps(lm, [encoded[i] for i in idx], torch.float64).sum())
    finally:
        model.train(was_training)
    count = sum(e.length - e.prompt_len for e in encoded)
    return total / max(count, 1)


def _labelled(feature: dict[str, list[int]]) -> Encoded:
    """A training feature as an encoded example whose response is its labelled tokens (the
    labels are ``-100`` on the prompt, then the token ids, as :mod:`geomsafe.train.data` makes
    them)."""
    ids, labels = list(feature["input_ids"]), list(feature["labels"])
    p = next((t for t, v in enumerate(labels) if v != IGNORE_INDEX), len(labels))
    if p == len(ids) or labels[p:] != ids[p:] or len(labels) != len(ids):
        raise GeomsafeError(
            "held-out features need labels -100 on the prompt, then the token ids "
            "(geomsafe.train.load_data makes them)"
        )
    return Encoded(tuple(ids), p)
