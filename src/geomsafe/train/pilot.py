"""The pilot run of ``GuardConfig(source="pilot")``: a short LoRA fine-tune whose principal
activation shifts, where they align with a harmful direction, become the guarded directions.

1. Split the training examples (seeded by ``TrainConfig.seed``): ``pilot.heldout`` of them are
   held out, the rest train a fresh LoRA adapter on a private copy of the model for
   ``pilot.steps`` optimiser steps (the run's own :class:`TrainConfig` otherwise).
2. Capture the held-out examples' residual stream (output of each guarded decoder layer,
   mean over the response tokens) with the pilot adapter and with it disabled (the base).
3. Keep the principal shifts that align with a guarded harmful direction above their null
   band (:func:`geomsafe.guard.pilot.select_shifts`, which defines every quantity).

The guarded layers are those of the guard config on the atlas (``layers``, or each concept's
best layer); at each layer the shifts are compared with the concepts guarded there. The
result's atlas holds the kept shifts (and the allowed concepts); :func:`pilot_guard_config`
is the guard config that guards them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from geomsafe.adapters import adapter_disabled, view
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import capture
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.guard import GuardConfig
from geomsafe.guard.layer_plan import layer_plans
from geomsafe.guard.pilot import PilotDirections, select_shifts
from geomsafe.models import LoadedModel
from geomsafe.train.config import TrainConfig
from geomsafe.train.data import TrainData
from geomsafe.train.steps import run_steps, train_data


def split_heldout(n: int, heldout: int, seed: int) -> tuple[list[int], list[int]]:
    """(held-out indices, pilot-training indices) of ``n`` examples, each sorted."""
    if n < heldout + 1:
        raise GeomsafeError(
            f"pilot: {n} training examples, but {heldout} are held out and at least one must "
            "train the pilot; lower pilot heldout or add examples"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[:heldout]), sorted(order[heldout:])


def pilot_directions(
    lm: LoadedModel,
    data: TrainData | Sequence[Example | tuple[str, str]],
    atlas: FeatureAtlas,
    guard_config: GuardConfig,
    config: TrainConfig | None = None,
    *,
    progress: bool = False,
) -> PilotDirections:
    """Run the pilot (module docstring) and select its harmful-aligned principal shifts."""
    guard_config = guard_config.validate()
    pilot = guard_config.pilot
    config = (config or TrainConfig()).validate()
    data = train_data(lm, data, config)
    held, rest = split_heldout(len(data), pilot.heldout, config.seed)
    plans = layer_plans(atlas, dataclasses.replace(guard_config, allow=None))
    concepts = {plan.layer: list(plan.names) for plan in plans}
    layers = sorted(concepts)
    peft_model, geometry = run_steps(lm, [data.features[i] for i in rest], config, pilot.steps)
    tuned = view(dataclasses.replace(lm, model=peft_model))
    examples = [data.examples[i] for i in held]
    peft_model.eval()
    kwargs = dict(layers=layers, max_length=config.max_length, progress=progress)
    acts_tuned = capture(tuned, examples, desc="pilot (tuned)", **kwargs)
    with adapter_disabled(peft_model):
        acts_base = capture(tuned, examples, desc="pilot (base)", **kwargs)
    result = select_shifts(
        {layer: acts_base.layer(layer) for layer in layers},
        {layer: acts_tuned.layer(layer) for layer in layers},
        atlas,
        concepts,
        pilot,
        allow=guard_config.allow or (),
        seed=config.seed,
    )
    losses = [row["loss"] for row in geometry.rows]
    result.provenance = {
        "layers": layers,
        "concepts": {str(layer): names for layer, names in concepts.items()},
        "heldout_indices": held,
        "n_pilot_examples": len(rest),
        "pilot_steps": len(losses),
        "pilot_first_loss": losses[0] if losses else None,
        "pilot_final_loss": losses[-1] if losses else None,
        "token_rule": "response",
        "seed": config.seed,
    }
    return result


def pilot_guard_config(config: GuardConfig, pilot: PilotDirections) -> GuardConfig:
    """``config`` guarding the pilot's kept shifts, each at its own layer. Raises
    GeomsafeError when none was kept (nothing in the pilot's drift is harmful-aligned)."""
    if not pilot.names:
        raise GeomsafeError(
            "pilot: no principal shift aligns with a guarded harmful direction above its null "
            f"band ({pilot.summary()}); use the atlas source or a longer pilot"
        )
    return dataclasses.replace(config, concepts=pilot.names, layers=None)
