"""``steer``: preventative steering during training.

Inside ``install`` (the training forward passes only) the output of each guarded decoder
layer ``l`` gets ``sum_h coeff * scale_h * u_h`` added for every guarded harmful direction
``u_h`` at that layer (times the scheduled strength ``s``, :mod:`geomsafe.guard.schedule`), so
the training loss already sees the model pushed along ``u_h`` and the optimiser has no reason to
move the weights along it. Outside ``install`` (inference, evaluation) nothing is added. No
extra forward.

The scale (``GuardConfig.steer_scale``):

- ``norm`` (default): the median L2 norm of the layer's token residuals, measured (detached)
  on the first training batch and then kept fixed, so ``steer_coeff=0.1`` adds 10% of a
  typical residual norm whatever the model's scale;
- ``diff``: the concept's raw mean-difference norm at that layer (atlas stats ``diff_norm``),
  i.e. steering by ``coeff`` times the unnormalised persona vector;
- ``unit``: 1, i.e. exactly ``coeff * u_h``.

The guard's ``proj/<concept>`` log is measured on the layer output *before* the addition.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomsafe.errors import GeomsafeError
from geomsafe.guard.atlas_guard import AtlasGuard
from geomsafe.guard.base import register
from geomsafe.guard.layer_plan import LayerPlan


@register
class SteerGuard(AtlasGuard):
    name = "steer"
    modifies = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.norms: dict[int, float] = {}  # layer -> typical residual norm ("norm" scale)
        self._vectors: dict[tuple[int, str], Tensor] = {}
        self._weights = {plan.layer: self._concept_scales(plan) for plan in self.plans}

    def _concept_scales(self, plan: LayerPlan) -> Tensor:
        """``[F]`` per-concept multipliers (before the layer-norm scale)."""
        coeff = float(self.config.steer_coeff)
        if self.config.steer_scale != "diff":
            return torch.full((len(plan.names),), coeff)
        scales = []
        for name in plan.names:
            diff = self.atlas.stats.get(name, {}).get("diff_norm")
            if diff is None:
                raise GeomsafeError(
                    f"steer_scale='diff' needs the atlas stat diff_norm for {name!r}; use "
                    "steer_scale='norm' or 'unit'"
                )
            scales.append(coeff * float(diff[self.atlas.row(plan.layer)]))
        return torch.tensor(scales)

    def vector(self, plan: LayerPlan, hidden: Tensor) -> Tensor:
        """``[D]`` the vector added to the output of layer ``plan.layer``."""
        if self.config.steer_scale == "norm" and plan.layer not in self.norms:
            with torch.no_grad():
                norms = hidden.detach().float().reshape(-1, hidden.shape[-1]).norm(dim=-1)
                self.norms[plan.layer] = float(norms.median())
        key = (plan.layer, str(hidden.device))
        if key not in self._vectors:
            weights = self._weights[plan.layer].clone()
            if self.config.steer_scale == "norm":
                weights = weights * self.norms[plan.layer]
            self._vectors[key] = (weights @ plan.harmful).to(hidden.device)
        return self._vectors[key]

    def modify(self, plan: LayerPlan, hidden: Tensor) -> Tensor | None:
        if self.strength == 0.0:
            return None
        vector = self.vector(plan, hidden)
        if self.strength != 1.0:
            vector = self.strength * vector
        return hidden + vector.to(hidden.dtype)

    def update(self, model) -> None:
        self._extra = {f"norm@{layer}": value for layer, value in self.norms.items()}
