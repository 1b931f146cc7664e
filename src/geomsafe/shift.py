"""Measured shift: how far fine-tuning moved the residual stream along harmful directions.

Projection of concept ``c`` for a prompt set: the mean, over the prompts, of the residual
stream (output of decoder layer ``l``) at the last prompt token (``tokens="last"``, the
position that produces the first reply token) dotted with the concept's unit direction at
``l`` (its best layer in the atlas unless given). Measured shift = projection with the tuned
model minus projection with the base model, on the same prompts.

A peft model is measured as it is; its base is the same model under ``disable_adapter()``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

from torch import Tensor, nn

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import capture
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.layers import get_layers
from geomsafe.models import LoadedModel

Prompts = Sequence[str | Example]


def _is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "base_model")


def view(lm: LoadedModel, model: nn.Module | None = None) -> LoadedModel:
    """``lm`` with ``model`` swapped in (e.g. a peft model wrapping ``lm.model``), with a layer
    template that names the decoder layers inside it."""
    model = lm.model if model is None else model
    template = lm.layer_template
    if _is_peft(model) and not template.startswith("base_model.model."):
        template = "base_model.model." + template
    get_layers(model, template)  # validates
    return dataclasses.replace(lm, model=model, layer_template=template)


def _layers(
    atlas: FeatureAtlas, names: Sequence[str], layers: int | Mapping[str, int] | None
) -> dict[str, int]:
    out = {}
    for name in names:
        if name not in atlas.directions:
            raise GeomsafeError(f"atlas has no direction for {name!r}")
        if layers is None:
            out[name] = atlas.best_layer(name)
        elif isinstance(layers, int):
            out[name] = layers
        else:
            out[name] = layers[name] if name in layers else atlas.best_layer(name)
        if out[name] not in atlas.layers:
            raise GeomsafeError(f"layer {out[name]} is not in the atlas (layers {atlas.layers})")
    return out


def projections(
    lm: LoadedModel,
    prompts: Prompts,
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    layers: int | Mapping[str, int] | None = None,
    *,
    batch_size: int = 8,
    max_length: int = 512,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Per prompt (``[N]`` per concept): the projection at the last prompt token on each
    concept's direction at its layer (best atlas layer unless ``layers`` says otherwise)."""
    names = list(names) if names is not None else list(atlas.harmful)
    if not names:
        raise GeomsafeError("no concepts to measure")
    if not prompts:
        raise GeomsafeError("no prompts to measure")
    where = _layers(atlas, names, layers)
    lm = view(lm)
    examples = [p if isinstance(p, Example) else Example(p) for p in prompts]
    # the prompt only, so that the last token is the last prompt token
    examples = [Example(e.prompt) for e in examples]
    was_training = lm.model.training
    lm.model.eval()
    try:
        acts = capture(
            lm,
            examples,
            layers=sorted(set(where.values())),
            tokens="last",
            batch_size=batch_size,
            max_length=max_length,
            progress=progress,
            desc="projection",
        )
    finally:
        lm.model.train(was_training)
    return {
        name: acts.layer(layer).float() @ atlas.direction(name, layer).float().cpu()
        for name, layer in where.items()
    }


def measure_projection(
    lm: LoadedModel,
    prompts: Prompts,
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    layers: int | Mapping[str, int] | None = None,
    **kwargs,
) -> dict[str, float]:
    """Mean over ``prompts`` of :func:`projections` (see the module docstring)."""
    per_prompt = projections(lm, prompts, atlas, names, layers, **kwargs)
    return {name: float(v.mean()) for name, v in per_prompt.items()}


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    if _is_peft(model):
        with model.disable_adapter():
            yield
    else:
        yield


def measured_shift(
    tuned: LoadedModel,
    prompts: Prompts,
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    layers: int | Mapping[str, int] | None = None,
    *,
    base: LoadedModel | None = None,
    **kwargs,
) -> dict[str, float]:
    """Projection(tuned) - projection(base) per concept. Without ``base`` the tuned model must
    be a peft model; its base is measured with the adapter disabled."""
    if base is None and not _is_peft(tuned.model):
        raise GeomsafeError("measured_shift needs a base model or a peft (adapter) model")
    after = measure_projection(tuned, prompts, atlas, names, layers, **kwargs)
    if base is None:
        with adapter_disabled(tuned.model):
            before = measure_projection(tuned, prompts, atlas, names, layers, **kwargs)
    else:
        before = measure_projection(base, prompts, atlas, names, layers, **kwargs)
    return {k: after[k] - before[k] for k in after}
