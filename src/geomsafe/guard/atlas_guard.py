"""The base class of the guards built from a feature atlas, and their per-step log.

An atlas guard watches the directions of its :class:`~geomsafe.guard.layer_plan.LayerPlan`
(guarded concepts per layer). While it is installed, the forward hook of each guarded layer
(:mod:`geomsafe.guard.shared_hook`, one per layer for all atlas guards installed together)
leaves the projections ``hidden @ dirs.T`` (``[B, T, F]``, float32) of the layer output in
``recorded``. ``penalty()`` turns them into the mean projection of the batch's assistant tokens
(labels != -100) on each guarded direction (``proj/<concept>``), accumulated over the
micro-batches of an optimiser step and closed by ``after_step()``. ``begin_step()`` sets the
guard's strength for the step from its schedule (:mod:`geomsafe.guard.schedule`), logged as
``strength``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.guard.base import Guard, GuardConfig
from geomsafe.guard.layer_plan import LayerPlan, layer_plans
from geomsafe.guard.shared_hook import installed
from geomsafe.layers import decoder_blocks

IGNORE_INDEX = -100


def assistant_mask(inputs: dict[str, Tensor], shape: tuple[int, int]) -> Tensor:
    """``[B, T]`` bool: tokens whose label is not -100 (the assistant tokens); all attended
    tokens when there are no labels."""
    labels = inputs.get("labels")
    if labels is not None:
        mask = labels != IGNORE_INDEX
    elif inputs.get("attention_mask") is not None:
        mask = inputs["attention_mask"].bool()
    else:
        return torch.ones(shape, dtype=torch.bool)
    if tuple(mask.shape) != tuple(shape):
        raise GeomsafeError(
            f"guard: labels/attention_mask shape {tuple(mask.shape)} does not match the recorded "
            f"activations {tuple(shape)}"
        )
    return mask


class AtlasGuard(Guard):
    """A guard built from a :class:`FeatureAtlas` and a :class:`GuardConfig`.

    Subclasses set ``keep_graph`` (their penalty needs gradients through the recorded
    projections), ``with_targets`` (record target directions too), ``modifies`` (they change a
    layer's output) and override :meth:`compute_penalty`, :meth:`modify` or :meth:`update`
    (post-optimiser-step work). Registered with ``@register``, a subclass is a guard kind that
    ``build_guards``, ``finetune`` and the CLI accept by name.
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
        self.plans: list[LayerPlan] = layer_plans(atlas, self.config, self.with_targets)
        self.recorded: dict[int, Tensor] = {}  # layer -> [B, T, F(+T)] projections
        self.shared_cache: dict[tuple[int, ...], Any] = {}  # shared_hook's layers, per group
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
        """A replacement for the layer's output (residual stream), or None to keep it. Called
        by the layer's hook after every guard there has recorded (set ``modifies = True``)."""
        return None

    def blocks(self, model: nn.Module) -> list[nn.Module]:
        blocks = decoder_blocks(model, self.layer_template)
        if self.plans[-1].layer >= len(blocks):
            raise GeomsafeError(
                f"guard layer {self.plans[-1].layer} out of range: the model has {len(blocks)} "
                "layers (was the atlas extracted from another model?)"
            )
        return blocks

    def install(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        return installed([self], model)

    @classmethod
    def install_together(
        cls, guards: Sequence[Guard], model: nn.Module
    ) -> contextlib.AbstractContextManager[None]:
        """One forward hook per layer for all ``guards`` (atlas guards): see
        :mod:`geomsafe.guard.shared_hook`."""
        return installed(guards, model)  # type: ignore[arg-type]

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
        out["strength"] = self.strength
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
        """This step's values: mean ``penalty`` over its micro-batches, the ``strength`` it ran
        at and the mean projection ``proj/<concept>`` of its assistant tokens (at the concept's
        best layer when guarded at several, each also as ``proj/<concept>@<layer>``)."""
        if self._penalties or float(self._count) > 0:
            return self._current()
        return dict(self._last)
