"""One forward hook per guarded layer, shared by every atlas guard installed together.

At the output of each guarded decoder layer the hook computes the projections
``hidden @ U.T`` (``[B, T, K]``, float32) once, where ``U`` (``[K, D]``) holds the union of the
unit directions that the guards need there (each concept of each atlas once). Each guard then
gets its own columns, in the order of its :class:`~geomsafe.guard.layer_plan.LayerPlan`
(``plan.directions``), in ``guard.recorded[layer]``: with their autograd graph when its penalty
needs gradients (``keep_graph``), detached otherwise; the graph is kept only when some guard at
the layer needs it. Guards that change the layer's output (``modifies``: steering) change it
afterwards, in order, so every guard records the layer output before steering is added.

The hook is prepended to the block's forward hooks (it sees the block's own output) unless a
guard there changes the output; then it is appended, so that the change lands after any hook
installed before (as a steering hook of its own would).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from geomsafe import hooks
from geomsafe.errors import GeomsafeError
from geomsafe.guard.layer_plan import LayerPlan

if TYPE_CHECKING:
    from geomsafe.guard.atlas_guard import AtlasGuard

_STATE = threading.local()


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Inside this block every guard hook is inert (used for the base-model forward of the
    projection guard, so that steering or recording by installed guards does not run)."""
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def is_suspended() -> bool:
    return getattr(_STATE, "depth", 0) > 0


def project(hidden: Tensor, dirs: Tensor) -> Tensor:
    """``[..., F]`` float32 projections of ``hidden`` on the rows of ``dirs``, also under autocast
    (a bf16 projection would round away the small changes the penalties measure)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return hidden.float() @ dirs.float().T


@dataclass
class Reader:
    """One guard's plan at a shared layer and where its directions sit in the union."""

    guard: AtlasGuard
    plan: LayerPlan
    columns: list[int] | None  # its columns of the union, in plan order; None = all of them
    _index: dict[str, Tensor] = field(default_factory=dict, repr=False)

    def take(self, projections: Tensor) -> Tensor:
        """This guard's ``[..., F (+ T)]`` columns of the union's projections."""
        if self.columns is None:
            return projections
        key = str(projections.device)
        if key not in self._index:
            self._index[key] = torch.tensor(self.columns, device=projections.device)
        return projections.index_select(-1, self._index[key])


@dataclass
class SharedLayer:
    """What the hook of one layer computes and who reads it."""

    layer: int
    rows: Tensor  # [K, D] the union of the readers' unit directions, float32, on the CPU
    readers: list[Reader]
    _rows_on: dict[str, Tensor] = field(default_factory=dict, repr=False)

    @property
    def keep_graph(self) -> bool:
        return any(r.guard.keep_graph for r in self.readers)

    @property
    def modifies(self) -> bool:
        return any(r.guard.modifies for r in self.readers)

    def rows_on(self, device: torch.device) -> Tensor:
        key = str(device)
        if key not in self._rows_on:
            self._rows_on[key] = self.rows.to(device)
        return self._rows_on[key]

    def hook(self, hidden: Tensor) -> Tensor | None:
        """The callback at the layer's output (:func:`geomsafe.hooks.on_layers`): records each
        reader's projections, then returns the steered residual stream (None: unchanged)."""
        if is_suspended():
            return None
        rows = self.rows_on(hidden.device)
        if hidden.shape[-1] != rows.shape[-1]:
            names = ", ".join(dict.fromkeys(r.guard.name for r in self.readers))
            raise GeomsafeError(
                f"{names} guard: atlas width {rows.shape[-1]} != model width "
                f"{hidden.shape[-1]} at layer {self.layer} (atlas from another model?)"
            )
        if self.keep_graph and torch.is_grad_enabled():
            projections = project(hidden, rows)
            for reader in self.readers:
                own = reader.take(projections)
                reader.guard.recorded[self.layer] = own if reader.guard.keep_graph else own.detach()
        else:
            with torch.no_grad():
                projections = project(hidden.detach(), rows)
                for reader in self.readers:
                    reader.guard.recorded[self.layer] = reader.take(projections)
        new = hidden
        for reader in self.readers:
            if reader.guard.modifies:
                changed = reader.guard.modify(reader.plan, new)
                new = new if changed is None else changed
        return None if new is hidden else new


def shared_layers(guards: Sequence[AtlasGuard]) -> tuple[SharedLayer, ...]:
    """The layers that ``guards`` watch, in increasing order, each with the union of their
    directions there."""
    keys: dict[int, list[tuple[int, str, tuple[str, ...]]]] = {}
    rows: dict[int, list[Tensor]] = {}
    readers: dict[int, list[Reader]] = {}
    for guard in guards:
        for plan in guard.plans:
            layer_keys = keys.setdefault(plan.layer, [])
            layer_rows = rows.setdefault(plan.layer, [])
            columns = []
            # a harmful row orthogonalised against an allow-list is another direction
            variants = [tuple(plan.allowed)] * len(plan.names) + [()] * len(plan.target_names)
            names = plan.names + plan.target_names
            for name, variant, row in zip(names, variants, plan.directions, strict=True):
                key = (id(guard.atlas), name, variant)
                if key not in layer_keys:
                    layer_keys.append(key)
                    layer_rows.append(row)
                columns.append(layer_keys.index(key))
            readers.setdefault(plan.layer, []).append(Reader(guard, plan, columns))
    out = []
    for layer in sorted(readers):
        for reader in readers[layer]:
            if reader.columns == list(range(len(keys[layer]))):
                reader.columns = None
        out.append(SharedLayer(layer, torch.stack(rows[layer]), readers[layer]))
    return tuple(out)


@contextlib.contextmanager
def installed(guards: Sequence[AtlasGuard], model: nn.Module) -> Iterator[None]:
    """One forward hook per layer that any of ``guards`` watches, for the duration of the
    block; each guard's ``recorded`` starts empty."""
    if not guards:
        yield
        return
    for guard in guards:
        guard.blocks(model)  # checks the layer range, with the guard's own message
    groups: dict[tuple[str | None, bool], dict[int, hooks.LayerFn]] = {}
    for shared in _cached_layers(guards):
        key = (shared.readers[0].guard.layer_template, not shared.modifies)
        groups.setdefault(key, {})[shared.layer] = shared.hook
    at_layers = [
        hook
        for (template, prepend), fns in groups.items()
        for hook in hooks.layer_hooks(model, fns, layer_template=template, prepend=prepend)
    ]
    for guard in guards:
        guard.recorded = {}
    with hooks.on_modules(at_layers):
        yield


def _cached_layers(guards: Sequence[AtlasGuard]) -> tuple[SharedLayer, ...]:
    """:func:`shared_layers`, kept by the first guard (a training loop installs the same guards
    every step; the union's copy on the device is kept with it)."""
    cache = guards[0].shared_cache
    key = tuple(id(guard) for guard in guards)  # alive while cached: the layers refer to them
    if key not in cache:
        cache[key] = shared_layers(guards)
    return cache[key]
