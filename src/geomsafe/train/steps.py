"""Helpers for benchmarks and evaluation: time training steps, measure held-out loss."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Sequence
from typing import Any

import torch

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.models import LoadedModel
from geomsafe.train import guards as guardlib
from geomsafe.train.config import TrainConfig
from geomsafe.train.data import TrainData, load_data
from geomsafe.train.lora import make_peft_model, peft_layer_template
from geomsafe.train.trainer import (
    GeometryCallback,
    GuardedTrainer,
    PadCollator,
    ProjectionMonitor,
    probes_for,
    quiet,
    training_arguments,
)


def train_steps(
    lm: LoadedModel,
    examples: TrainData | Sequence[Example | tuple[str, str]],
    guards: Sequence[Any] | str | None = None,
    config: TrainConfig | None = None,
    n_steps: int = 10,
    *,
    atlas: FeatureAtlas | None = None,
    guard_concepts: Sequence[str] | None = None,
    guard_config: Any = None,
    monitor: bool = False,
) -> list[float]:
    """Run ``n_steps`` optimiser steps of LoRA training on a private copy of ``lm`` and return
    the wall time of each step (forward, penalty, backward, optimiser step, ``after_step``).

    ``guards``: Guard objects and/or guard kinds (built against ``atlas``). Same ``config.seed``
    -> same LoRA init and the same batches, so calls with different guards are comparable;
    for a benchmark, interleave calls and drop each call's first step (warm-up)."""
    config = dataclasses.replace(config or TrainConfig(), max_steps=n_steps).validate()
    from transformers import set_seed

    set_seed(config.seed)
    if isinstance(examples, TrainData):
        data = examples
    else:
        data = load_data(
            examples,
            lm.tokenizer,
            max_length=config.max_length,
            truncate=config.truncate,
            add_eos=config.add_eos,
        )
    kinds, objects = guardlib.parse_guards(guards)
    names = list(guard_concepts or (atlas.harmful if atlas is not None else []))
    gcfg = None
    if kinds:
        if atlas is None:
            raise GeomsafeError("train_steps: guards by name need an atlas")
        guardlib.check_atlas(atlas, names, kinds)
        gcfg = guardlib.with_concepts(guard_config or guardlib.default_guard_config(names), names)
    local = dataclasses.replace(lm, model=copy.deepcopy(lm.model))
    peft_model = make_peft_model(local.model, config)
    template = peft_layer_template(local)
    guard_objs = list(objects) + guardlib.build(kinds, atlas, gcfg, template)
    probes = probes_for(atlas, names) if monitor else []
    geometry = GeometryCallback()
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    with tempfile.TemporaryDirectory(prefix="geomsafe-steps-") as tmp:
        trainer = GuardedTrainer(
            model=peft_model,
            args=training_arguments(config, tmp, save=False),
            train_dataset=data.features,
            data_collator=PadCollator(pad),
            callbacks=[geometry],
            guards=guard_objs,
            monitor=ProjectionMonitor(probes, template) if probes else None,
        )
        geometry.trainer = trainer
        quiet(trainer)
        trainer.train()
    return list(geometry.step_times)


@torch.no_grad()
def heldout_loss(
    lm: LoadedModel, data: TrainData | Sequence[dict[str, list[int]]], batch_size: int = 8
) -> float:
    """Mean token cross-entropy on the response tokens (labels != -100) of ``data``."""
    features = data.features if isinstance(data, TrainData) else list(data)
    model = lm.model
    was_training = model.training
    model.eval()
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
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
