"""``ablate``: concept ablation during fine-tuning (CAFT-style).

Inside ``install`` (the training forward passes only) the output ``h`` of each guarded
decoder layer ``l`` is projected off the guarded harmful directions there:

    h ← h - s (h U) Uᵀ        U: [D, k] orthonormal basis (QR) of the directions at layer l

computed in float32 (also under autocast) and cast back to the residual stream's dtype, so
in float32 the layer output has no component along any guarded direction (to rounding; a
bf16 stream keeps a residue of the order of its rounding). ``s`` is the scheduled strength
(:mod:`geomsafe.guard.schedule`): the share of the component that is ablated. The training
loss then cannot use the harmful directions at the guarded layers, and gradients through
them are projected the same way, so the optimiser has no reason to build them up. Outside
``install`` (inference, evaluation) nothing changes. No extra forward; the cost is two
``[B·T, D] x [D, k]`` products per guarded layer.

Which directions: ``GuardConfig.concepts`` (the ablation subset; with ``source="pilot"`` the
kept principal shifts of a pilot run, :mod:`geomsafe.guard.pilot`), orthogonalised against
``GuardConfig.allow`` (:mod:`geomsafe.guard.allow`). Which layers: ``GuardConfig.layers``
(None: each concept at its best atlas layer; a list or band: every concept at each). At
several consecutive layers each one ablates its own output: a block that writes the
direction back is ablated again at its own output, which is the point of guarding a band.

The logged ``proj/<concept>`` is measured on the layer output *before* the ablation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomsafe.guard.atlas_guard import AtlasGuard
from geomsafe.guard.base import register
from geomsafe.guard.basis import orthonormal_basis
from geomsafe.guard.layer_plan import LayerPlan


@register
class AblateGuard(AtlasGuard):
    name = "ablate"
    modifies = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bases = {plan.layer: orthonormal_basis(plan.harmful) for plan in self.plans}
        self._moved: dict[tuple[int, str], Tensor] = {}

    def basis(self, layer: int, device: torch.device) -> Tensor:
        """``[D, k]`` float32 orthonormal basis of the ablated directions at ``layer``."""
        key = (layer, str(device))
        if key not in self._moved:
            self._moved[key] = self.bases[layer].to(device)
        return self._moved[key]

    def modify(self, plan: LayerPlan, hidden: Tensor) -> Tensor | None:
        if self.strength == 0.0:
            return None
        u = self.basis(plan.layer, hidden.device)
        with torch.autocast(hidden.device.type, enabled=False):
            h = hidden.float()
            removed = (h @ u) @ u.T
            if self.strength != 1.0:
                removed = self.strength * removed
            return (h - removed).to(hidden.dtype)
