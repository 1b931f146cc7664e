"""The machinery the four guards share: one forward hook per guarded layer that records the
projections of the residual stream on the guarded directions, and the per-step log.

The hook computes ``hidden @ dirs.T`` (``[B, T, F]``, float32) at the output of each guarded
decoder layer. Guards with a penalty keep the autograd graph of these projections; the others
keep detached copies, which costs one small matmul per guarded layer. ``penalty()`` turns them
into the mean projection of the batch's assistant tokens (labels != -100) on each guarded
direction (``proj/<concept>``), accumulated over the micro-batches of an optimiser step and
closed by ``after_step()``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.guard.base import Guard, GuardConfig
from geomsafe.guard.plan import LayerPlan, assistant_mask, decoder_blocks, make_plan

_STATE = threading.local()


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Inside this block every guard hook is inert (used for the base-model forward of the
    projection guard, so that steering or recording by other installed guards does not run)."""
    _STATE.depth = getattr(_STATE, "depth", 0) + 1
    try:
        yield
    finally:
        _STATE.depth -= 1


def is_suspended() -> bool:
    return getattr(_STATE, "depth", 0) > 0


def hidden_of(output: object) -> Tensor:
    return output[0] if isinstance(output, tuple) else output  # type: ignore[return-value]


def project(hidden: Tensor, dirs: Tensor) -> Tensor:
    """``[..., F]`` float32 projections of ``hidden`` on the rows of ``dirs``, also under autocast
    (a bf16 projection would round away the small changes the penalties measure)."""
    with torch.autocast(hidden.device.type, enabled=False):
        return hidden.float() @ dirs.float().T


def replace_hidden(output: object, hidden: Tensor) -> object:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class AtlasGuard(Guard):
    """A guard built from a :class:`FeatureAtlas` and a :class:`GuardConfig`.

    Subclasses set ``keep_graph`` (their penalty needs gradients through the recorded
    projections), ``with_targets`` (record target directions too) and override
    :meth:`compute_penalty`, :meth:`modify` (change a layer's output) or :meth:`update`
    (post-optimiser-step work).
    """

    keep_graph = False
    with_targets = False
    modifies = False

    def __init__(
        self,
        atlas: FeatureAtlas,
        config: GuardConfig | None = None,
        layer_template: str | None = None,
    ) -> None:
        self.atlas = atlas
        self.config = (config or GuardConfig()).validate()
        self.layer_template = layer_template
        self.plans: list[LayerPlan] = make_plan(atlas, self.config, self.with_targets)
        self.recorded: dict[int, Tensor] = {}  # layer -> [B, T, F(+T)] projections
        self._dirs: dict[tuple[int, str], Tensor] = {}
        self._sums: dict[str, Tensor] = {}
        self._count: Tensor | float = 0.0
        self._penalties: list[Tensor] = []
        self._extra: dict[str, float] = {}
        self._last: dict[str, float] = {}
        layers_of: dict[str, list[int]] = {}
        for plan in self.plans:
            for name in plan.names:
                layers_of.setdefault(name, []).append(plan.layer)
        self._layers_of = layers_of

    def __repr__(self) -> str:
        where = {p.layer: p.names for p in self.plans}
        return f"{type(self).__name__}(name={self.name!r}, layers={where})"

    # ---- hooks -------------------------------------------------------------------------
    def directions(self, plan: LayerPlan, device: torch.device) -> Tensor:
        key = (plan.layer, str(device))
        if key not in self._dirs:
            self._dirs[key] = plan.directions.to(device)
        return self._dirs[key]

    def modify(self, plan: LayerPlan, hidden: Tensor) -> Tensor | None:
        """A replacement for the layer's output (residual stream), or None to keep it."""
        return None

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        blocks = decoder_blocks(model, self.layer_template)
        if self.plans[-1].layer >= len(blocks):
            raise GeomsafeError(
                f"guard layer {self.plans[-1].layer} out of range: the model has {len(blocks)} "
                "layers (was the atlas extracted from another model?)"
            )
        return blocks

    def _hook(self, plan: LayerPlan):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> object:
            if is_suspended():
                return None
            hidden = hidden_of(output)
            dirs = self.directions(plan, hidden.device)
            if hidden.shape[-1] != dirs.shape[-1]:
                raise GeomsafeError(
                    f"{self.name} guard: atlas width {dirs.shape[-1]} != model width "
                    f"{hidden.shape[-1]} at layer {plan.layer} (atlas from another model?)"
                )
            if self.keep_graph and torch.is_grad_enabled():
                self.recorded[plan.layer] = project(hidden, dirs)
            else:
                with torch.no_grad():
                    self.recorded[plan.layer] = project(hidden.detach(), dirs)
            new = self.modify(plan, hidden)
            return None if new is None else replace_hidden(output, new)

        return hook

    def install(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return self._installed(model)

    @contextlib.contextmanager
    def _installed(self, model: nn.Module) -> Iterator[None]:
        blocks = self.blocks(model)
        self.recorded = {}
        handles = []
        try:
            for plan in self.plans:
                # Recorders run before any output-changing hook of the same layer (steering),
                # so every guard logs the model's own residual stream there.
                handles.append(
                    blocks[plan.layer].register_forward_hook(
                        self._hook(plan), prepend=not self.modifies
                    )
                )
            yield
        finally:
            for handle in handles:
                handle.remove()

    # ---- penalty and log ---------------------------------------------------------------
    def compute_penalty(
        self, model: nn.Module, inputs: dict[str, Tensor], mask: Tensor
    ) -> Tensor | None:
        """The weighted penalty of the batch; ``mask`` [B, T] marks the assistant tokens."""
        return None

    def penalty(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor | None:
        missing = [p.layer for p in self.plans if p.layer not in self.recorded]
        if missing:
            raise GeomsafeError(
                f"{self.name} guard: no activations recorded at layers {missing}; run the "
                "training forward pass inside guard.install(model) before penalty()"
            )
        first = self.recorded[self.plans[0].layer]
        mask = assistant_mask(inputs, tuple(first.shape[:2])).to(first.device)
        self._accumulate(mask)
        try:
            value = self.compute_penalty(model, inputs, mask)
        finally:
            self.recorded = {}
        if value is None:
            return None
        if self.keep_graph and torch.is_grad_enabled() and not value.requires_grad:
            raise GeomsafeError(
                f"{self.name} guard: the penalty has no gradient (was the forward run under "
                "no_grad, or with reentrant gradient checkpointing?)"
            )
        self._penalties.append(value.detach())
        return value

    def _accumulate(self, mask: Tensor) -> None:
        weights = mask.unsqueeze(-1).float()
        with torch.no_grad():
            for plan in self.plans:
                proj = self.recorded[plan.layer].detach()[..., : len(plan.names)]
                sums = (proj * weights).sum((0, 1))
                for j, name in enumerate(plan.names):
                    key = f"{name}@{plan.layer}"
                    self._sums[key] = self._sums[key] + sums[j] if key in self._sums else sums[j]
            self._count = self._count + mask.sum()

    def _current(self) -> dict[str, float]:
        out: dict[str, float] = {}
        pens = self._penalties
        out["penalty"] = float(torch.stack(pens).float().mean()) if pens else 0.0
        count = float(self._count)
        if count > 0:
            for name, layers in self._layers_of.items():
                means = {layer: float(self._sums[f"{name}@{layer}"]) / count for layer in layers}
                if len(layers) == 1:
                    out[f"proj/{name}"] = means[layers[0]]
                    continue
                best = self.atlas.best_layer(name)
                out[f"proj/{name}"] = means[best if best in means else layers[0]]
                for layer, value in means.items():
                    out[f"proj/{name}@{layer}"] = value
        out.update(self._extra)
        return out

    def update(self, model: nn.Module) -> None:
        """Work after the optimiser step (the orthogonal projection)."""

    def after_step(self, model: nn.Module) -> None:
        self.update(model)
        self._last = self._current()
        self._sums, self._count, self._penalties = {}, 0.0, []

    def log(self) -> dict[str, float]:
        """This step's values: mean ``penalty`` over its micro-batches and the mean projection
        ``proj/<concept>`` of its assistant tokens (at the concept's best layer when guarded
        at several, each also as ``proj/<concept>@<layer>``)."""
        if self._penalties or float(self._count) > 0:
            return self._current()
        return dict(self._last)
