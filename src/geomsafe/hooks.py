"""The one place where geomsafe installs PyTorch hooks, always as context managers.

The hook site geomsafe reads and writes is the output of a decoder block: the residual stream
after block ``l`` (Hugging Face's ``hidden_states[l + 1]`` for every block but the last).
:func:`on_layers` hooks it on a plain causal LM or a peft model wrapping one
(:func:`geomsafe.layers.decoder_blocks`), like TransformerLens' ``hooks()`` or
steering-vectors' ``record_activations``::

    with hooks.on_layers(model, {3: fn, 5: fn}):
        model(**batch)

A layer callback ``fn(hidden)`` gets the block's residual stream ``[B, T, D]`` (the tensor
of its output, or the first item of its output tuple: :func:`geomsafe.layers.hidden_of`) and
returns None to leave the output as it is, or a tensor that replaces the residual stream (the
rest of an output tuple is kept: :func:`geomsafe.layers.with_hidden`).

:func:`on_modules` installs raw forward and pre-forward hooks (:class:`Hook`) on any modules,
for sites other than the residual stream: the model that owns the LM head (the firewall),
the input of an attention output projection (per-head outputs), a training loop's whole model.

Every handle is removed when the ``with`` block ends, also when it raises. No other module
of geomsafe calls ``register_forward_hook`` or ``register_forward_pre_hook`` (a test checks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from geomsafe.errors import GeomsafeError
from geomsafe.layers import decoder_blocks, hidden_of, with_hidden

LayerFn = Callable[[Tensor], Tensor | None]


@dataclass(frozen=True)
class Hook:
    """One raw PyTorch hook: ``fn`` on ``module``, after its forward (``pre=False``, called as
    ``fn(module, args, output)``) or before it (``pre=True``, ``fn(module, args)``); with
    ``with_kwargs`` the keyword arguments come too (``fn(module, args, kwargs[, output])``).
    ``prepend`` puts it before the module's hooks of the same kind installed earlier."""

    module: nn.Module
    fn: Callable[..., Any]
    pre: bool = False
    with_kwargs: bool = False
    prepend: bool = False


@contextlib.contextmanager
def on_modules(hooks: Iterable[Hook]) -> Iterator[None]:
    """Install ``hooks`` (in order) for the duration of the block; every handle is removed in
    ``finally``, also those installed before one that failed."""
    handles = []
    try:
        for hook in hooks:
            if hook.pre:
                register = hook.module.register_forward_pre_hook
            else:
                register = hook.module.register_forward_hook
            handles.append(register(hook.fn, prepend=hook.prepend, with_kwargs=hook.with_kwargs))
        yield
    finally:
        for handle in reversed(handles):
            handle.remove()


def _at_output(fn: LayerFn) -> Callable[[nn.Module, tuple, Any], Any]:
    """A forward hook that hands ``fn`` the block's residual stream and puts back what it
    returns (see the module docstring)."""

    def hook(_module: nn.Module, _args: tuple, output: Any) -> Any:
        new = fn(hidden_of(output))
        return None if new is None else with_hidden(output, new)

    return hook


def layer_hooks(
    model: nn.Module,
    fns: Mapping[int, LayerFn],
    *,
    layer_template: str | None = None,
    prepend: bool = False,
) -> list[Hook]:
    """The :class:`Hook` per layer that :func:`on_layers` installs (layers in increasing
    order), for callers that install them together with other hooks."""
    blocks = decoder_blocks(model, layer_template)
    for layer in fns:
        if not 0 <= layer < len(blocks):
            raise GeomsafeError(f"layer {layer} out of range: the model has {len(blocks)} layers")
    return [Hook(blocks[layer], _at_output(fns[layer]), prepend=prepend) for layer in sorted(fns)]


@contextlib.contextmanager
def on_layers(
    model: nn.Module,
    fns: Mapping[int, LayerFn],
    *,
    layer_template: str | None = None,
    prepend: bool = False,
) -> Iterator[None]:
    """Call ``fns[layer](hidden)`` at the output of decoder block ``layer`` of ``model`` (a
    plain causal LM or a peft model) during every forward pass inside the block; a callback's
    tensor result replaces the residual stream. One hook per layer, appended after the
    block's hooks (``prepend=True``: before them); all removed on exit, also on an error.
    ``layer_template`` as in :func:`geomsafe.layers.decoder_blocks`."""
    with on_modules(
        layer_hooks(model, fns, layer_template=layer_template, prepend=prepend)
    ):
        yield
