"""``projection``: penalise the change of the residual stream's projection on the harmful
directions versus the base model.

The adapted model's projections ``proj_h = <r, u_h>`` are recorded (with their graph) by the
hook inside ``install``. ``penalty`` runs a second forward of the same batch with the adapters
disabled (``model.disable_adapter()``, ``torch.no_grad()``, backbone only, stopped after the last
guarded layer) and returns

    s * weight * mean over assistant tokens of sum_(h, l) (proj_h,l(adapted) - proj_h,l(base))²

(``s``: the scheduled strength, :mod:`geomsafe.guard.schedule`), so gradients reach the LoRA
weights only through the adapted projections. With
``GuardConfig.projection_mode="both"`` (default) any change is penalised: a drift towards *less*
of a harmful feature also changes behaviour, and keeping the projection where the base model had
it is the safest reading of "do not touch this feature". ``"increase"`` penalises only moves
towards the harmful side (``relu(diff)²``). The cost is one partial forward without gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geomsafe.capture import backbone, record, run_until_stopped
from geomsafe.errors import GeomsafeError
from geomsafe.guard.atlas_guard import AtlasGuard
from geomsafe.guard.base import register
from geomsafe.guard.shared_hook import project, suspended

_FORWARD_KEYS = ("input_ids", "attention_mask", "position_ids", "inputs_embeds")


@register
class ProjectionGuard(AtlasGuard):
    name = "projection"
    keep_graph = True

    def base_projections(self, model: nn.Module, inputs: dict[str, Tensor]) -> dict[int, Tensor]:
        """``{layer: [B, T, F]}`` projections of the base model (adapters disabled)."""
        disable = getattr(model, "disable_adapter", None)
        if not callable(disable):
            raise GeomsafeError(
                "the projection guard needs a peft model (one with disable_adapter()) to get the "
                "base model's activations"
            )
        get_base = getattr(model, "get_base_model", None)
        net = backbone(get_base() if callable(get_base) else model)
        kwargs = {k: inputs[k] for k in _FORWARD_KEYS if inputs.get(k) is not None}
        layers = [plan.layer for plan in self.plans]
        out: dict[int, Tensor] = {}
        with torch.no_grad(), disable(), suspended():
            with record(model, layers, self.layer_template, stop_after_last=True) as store:
                run_until_stopped(net, **kwargs, use_cache=False)
            for plan in self.plans:
                hidden = store[plan.layer]
                out[plan.layer] = project(hidden, self.directions(plan, hidden.device))
        return out

    def compute_penalty(self, model: nn.Module, inputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        base = self.base_projections(model, inputs)
        weights = mask.float()
        n = weights.sum().clamp(min=1.0)
        total: Tensor | None = None
        for plan in self.plans:
            adapted = self.recorded[plan.layer]
            diff = adapted - base[plan.layer].to(adapted.device)
            if self.config.projection_mode == "increase":
                diff = diff.clamp(min=0)
            term = (diff.pow(2).sum(-1) * weights).sum() / n
            total = term if total is None else total + term
        assert total is not None
        return self.strength * self.config.weight * total
