"""peft adapters seen from geomsafe: loading, detection, the decoder-layer template inside a peft
wrapper, and the base model (adapter disabled).

A peft model (``PeftModel``) wraps a causal LM as ``base_model.model``, so a layer template
``model.layers.{num}`` of the plain model names the same layers as
``base_model.model.model.layers.{num}`` of the wrapper.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from geomsafe.errors import GeomsafeError
from geomsafe.hashing import file_sha256
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


ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")  # what peft saves


def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """A ``PeftModel`` wrapping ``model`` (in place) with the frozen adapter saved in
    ``folder`` by ``save_pretrained``. A folder without :data:`ADAPTER_CONFIG`, one without
    any of :data:`ADAPTER_WEIGHTS`, or weights peft cannot load (another base model, a
    corrupt or pickled file) are a one-line :class:`GeomsafeError`; the FutureWarning
    transformers prints on every load (a deprecated attribute peft reads) is silenced."""
    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise GeomsafeError(f"{folder} is not a peft adapter folder (no {ADAPTER_CONFIG})")
    if not any((folder / name).is_file() for name in ADAPTER_WEIGHTS):
        raise GeomsafeError(
            f"{folder} has {ADAPTER_CONFIG} but no adapter weights "
            f"({' or '.join(ADAPTER_WEIGHTS)}); was the adapter saved completely?"
        )
    try:
        from peft import PeftModel

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
            return PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as exc:  # wrong base model, corrupt weights, ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GeomsafeError(f"could not load adapter {folder}: {first[:300]}") from exc


def adapter_sha256(folder: str | Path) -> str:
    """sha256 over the adapter's ``adapter_*`` files (config and weights)."""
    files = sorted(p for p in Path(folder).iterdir() if p.name.startswith("adapter_"))
    return hashlib.sha256(
        "".join(file_sha256(p) for p in files if p.is_file()).encode()
    ).hexdigest()


@contextlib.contextmanager
def attach_adapter(lm: LoadedModel, adapter: str | Path) -> Iterator[Any]:
    """Load a peft adapter saved with ``save_pretrained`` onto ``lm.model`` and yield the
    ``PeftModel`` (use its ``disable_adapter()`` for the base model). The LoRA layers are
    injected into ``lm.model`` in place, so ``lm`` (and its layer template) now runs the adapted
    model; they are removed again on exit."""
    if is_peft(lm.model):
        raise GeomsafeError("the model already carries a peft adapter; pass a plain model")
    peft_model: Any = load_adapter(lm.model, adapter)
    peft_model.eval()
    try:
        yield peft_model
    finally:
        peft_model.unload()


__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "PEFT_PREFIX",
    "adapter_sha256",
    "adapter_disabled",
    "attach_adapter",
    "is_peft",
    "load_adapter",
    "layer_template_for",
    "peft_layer_template",
    "view",
]
