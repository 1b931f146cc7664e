"""Find the decoder layers of any Hugging Face causal LM.

A *layer template* is a module path with a ``{num}`` placeholder, e.g. ``model.layers.{num}``
(Llama, Qwen2, Gemma, Mistral) or ``transformer.h.{num}`` (GPT-2). It is guessed from
``named_modules()``: the longest ``nn.ModuleList`` whose children all share one class.
An explicit template always wins.
"""

from __future__ import annotations

from torch import nn

from geomsafe.errors import GeomsafeError

# Paths seen in the main HF families, tried first so that the guess is stable.
_KNOWN = (
    "model.layers.{num}",
    "model.language_model.layers.{num}",
    "transformer.h.{num}",
    "gpt_neox.layers.{num}",
    "model.decoder.layers.{num}",
    "transformer.blocks.{num}",
)


def guess_layer_template(model: nn.Module) -> str:
    """Return the template of the decoder layers of ``model``.

    Raises GeomsafeError when no list of repeated blocks is found.
    """
    modules = dict(model.named_modules())
    for template in _KNOWN:
        path = template.removesuffix(".{num}")
        if isinstance(modules.get(path), nn.ModuleList) and len(modules[path]) > 0:
            return template
    best: tuple[int, str] | None = None
    for name, module in modules.items():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        kinds = {type(child) for child in module}
        if len(kinds) == 1 and (best is None or len(module) > best[0]):
            best = (len(module), name)
    if best is None:
        raise GeomsafeError(
            f"could not find decoder layers in {type(model).__name__}; pass layer_template="
            "'path.to.layers.{num}'"
        )
    return f"{best[1]}.{{num}}" if best[1] else "{num}"


def get_layers(model: nn.Module, template: str | None = None) -> list[nn.Module]:
    """The decoder layers of ``model`` in order, from ``template`` or the guessed one."""
    template = template or guess_layer_template(model)
    if "{num}" not in template:
        raise GeomsafeError(f"layer template {template!r} has no '{{num}}' placeholder")
    path = template.split("{num}")[0].rstrip(".")
    modules = dict(model.named_modules())
    container = modules.get(path)
    if not isinstance(container, nn.ModuleList):
        raise GeomsafeError(f"layer template {template!r} does not name a list of modules")
    return list(container)


def resolve_layers(n_layers: int, layers: list[int] | None) -> list[int]:
    """Normalise a layer selection: None means all; negative indices count from the end."""
    if layers is None:
        return list(range(n_layers))
    out: list[int] = []
    for layer in layers:
        idx = layer + n_layers if layer < 0 else layer
        if not 0 <= idx < n_layers:
            raise GeomsafeError(f"layer {layer} out of range: the model has {n_layers} layers")
        if idx not in out:
            out.append(idx)
    return sorted(out)
