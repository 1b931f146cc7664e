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
from geomsafe.formatting import Example
from geomsafe.guard import Guard, GuardConfig, MonitorGuard
from geomsafe.guard.resolve import GuardSpec, resolve_guards
from geomsafe.models import LoadedModel, pad_token_id
from geomsafe.train.config import TrainConfig
from geomsafe.train.data import TrainData, load_data
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
    """Mean token cross-entropy on the response tokens (labels != -100) of ``data``."""
    features = data.features if isinstance(data, TrainData) else list(data)
    model = lm.model
    was_training = model.training
    model.eval()
    pad = pad_token_id(lm.tokenizer)
    collate = PadCollator(pad)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(features[start : start + batch_size])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = (
                model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                )
                .logits[:, :-1]
                .float()
            )
            labels = batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            count += int((labels != -100).sum())
    finally:
        model.train(was_training)
    return total / max(count, 1)
