"""peft adapters seen from geomsafe: detection, the decoder-layer template inside a peft
wrapper, and the base model (adapter disabled).

A peft model (``PeftModel``) wraps a causal LM as ``base_model.model``, so a layer template
``model.layers.{num}`` of the plain model names the same layers as
``base_model.model.model.layers.{num}`` of the wrapper.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from torch import nn

from geomsafe.layers import get_layers
from geomsafe.models import LoadedModel

PEFT_PREFIX = "base_model.model."


def is_peft(model: nn.Module) -> bool:
    """True for a peft model (it can disable its adapter and wraps a base model)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "base_model")


def layer_template_for(model: nn.Module, template: str) -> str:
    """``template`` (relative to a plain model or to a peft wrapper) made relative to
    ``model``: with :data:`PEFT_PREFIX` when ``model`` is a peft model, without otherwise."""
    bare = template.removeprefix(PEFT_PREFIX)
    return PEFT_PREFIX + bare if is_peft(model) else bare


def peft_layer_template(lm: LoadedModel) -> str:
    """The decoder-layer template inside a peft model wrapping ``lm.model``."""
    return PEFT_PREFIX + lm.layer_template.removeprefix(PEFT_PREFIX)


def view(lm: LoadedModel, model: nn.Module | None = None) -> LoadedModel:
    """``lm`` with ``model`` swapped in (e.g. a peft model wrapping ``lm.model``, or the plain
    model inside one), with a layer template that names the decoder layers inside it."""
    model = lm.model if model is None else model
    template = layer_template_for(model, lm.layer_template)
    get_layers(model, template)  # validates
    return dataclasses.replace(lm, model=model, layer_template=template)


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base model inside the block (a no-op for a plain model)."""
    if is_peft(model):
        with model.disable_adapter():
            yield
    else:
        yield


__all__ = [
    "PEFT_PREFIX",
    "adapter_disabled",
    "is_peft",
    "layer_template_for",
    "peft_layer_template",
    "view",
]
