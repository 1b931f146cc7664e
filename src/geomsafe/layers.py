"""Find the decoder layers of any Hugging Face causal LM.

A *layer template* is a module path with a ``{num}`` placeholder, e.g. ``model.layers.{num}``
(Llama, Qwen2, Gemma, Mistral) or ``transformer.h.{num}`` (GPT-2). It is guessed from
``named_modules()``: the longest ``nn.ModuleList`` whose children all share one class.
An explicit template always wins.

The module also knows what sits inside a block: the residual stream in a block's output
(:func:`hidden_of`, :func:`with_hidden`) and the modules that write into it
(:data:`RESIDUAL_WRITERS`).
"""

from __future__ import annotations

from torch import Tensor, nn

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


def default_band(n_layers: int) -> list[int]:
    """The middle third of ``n_layers`` layers (at least one layer), where concept directions
    are usually cleanest: ``range(n // 3, max(n // 3 + 1, 2n // 3))``."""
    lo, hi = n_layers // 3, max(n_layers // 3 + 1, (2 * n_layers) // 3)
    return list(range(lo, hi))


def decoder_blocks(model: nn.Module, layer_template: str | None = None) -> list[nn.Module]:
    """The decoder blocks of ``model``, a plain causal LM or a peft model wrapping one.

    ``layer_template`` may be relative to ``model`` (for a peft model:
    ``base_model.model.model.layers.{num}``) or to the model a peft model wraps
    (``model.layers.{num}``); without one it is guessed on the wrapped model.
    """
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    if layer_template is None:
        return get_layers(base, None)
    try:
        return get_layers(model, layer_template)
    except GeomsafeError:
        if base is model:
            raise
        return get_layers(base, layer_template)


def hidden_of(output: object) -> Tensor:
    """The residual stream in a decoder layer's output (a tensor, or a tuple led by one)."""
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def with_hidden(output: object, hidden: Tensor) -> object:
    """``output`` (a decoder layer's) with ``hidden`` as its residual stream."""
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


# The modules of a decoder block (paths relative to the block) that write into the residual
# stream, per HF family: Llama/Qwen2/Gemma/Mistral, GPT-2, GPT-NeoX, Falcon/Bloom, Phi, OPT.
ATTENTION_OUT: tuple[str, ...] = (
    "self_attn.o_proj",
    "attn.c_proj",
    "attention.dense",
    "self_attention.dense",
    "self_attn.dense",
    "self_attn.out_proj",
)
MLP_OUT: tuple[str, ...] = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc2", "fc2")
RESIDUAL_WRITERS: tuple[str, ...] = ATTENTION_OUT + MLP_OUT


def submodule(root: nn.Module, path: str) -> nn.Module | None:
    """The module at dotted ``path`` below ``root`` (``"mlp.down_proj"``), or None."""
    module: object = root
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module if isinstance(module, nn.Module) else None


def first_submodule(block: nn.Module, paths: tuple[str, ...]) -> nn.Module | None:
    """The first of ``paths`` that names a module of ``block``, or None."""
    return next((m for m in (submodule(block, p) for p in paths) if m is not None), None)


def attention_out_proj(block: nn.Module) -> nn.Module:
    """The attention output projection of a decoder block (its input is the per-head outputs)."""
    module = first_submodule(block, ATTENTION_OUT)
    if module is None:
        raise GeomsafeError(f"no attention output projection found in {type(block).__name__}")
    return module


def mlp_out_proj(block: nn.Module) -> nn.Module | None:
    """The MLP output (down) projection of a decoder block, or None when it has none."""
    return first_submodule(block, MLP_OUT)
