"""``covariance``: penalise the cross-covariance between target and harmful projections.

For each guarded layer, with ``R`` the ``[n, D]`` residuals of the batch's assistant tokens,
``P_t = R @ U_tᵀ`` and ``P_h = R @ U_hᵀ`` their projections on the target and the guarded harmful
unit directions (recorded, with their graph, by the hook inside ``install``), centred over the
``n`` tokens:

    C = P_tᵀ P_h / n        penalty = s * weight * sum over layers of ||C||_F²

(``s``: the scheduled strength, :mod:`geomsafe.guard.schedule`). A fine-tuning run that moves
the target features should not move the harmful ones with them; driving their covariance in
the batch to zero decouples them. No eigendecomposition and no extra forward:
``[n, F] x [n, T]`` products only. Note that the penalty is on the covariance itself, not its
change from the base model, so it is non-zero at initialisation.
"""

from __future__ import annotations

from torch import Tensor, nn

from geomsafe.guard.atlas_guard import AtlasGuard
from geomsafe.guard.base import register


def cross_covariance(p_target: Tensor, p_harmful: Tensor) -> Tensor:
    """``[T, F]`` cross-covariance of ``[n, T]`` and ``[n, F]`` samples (divided by ``n``)."""
    n = p_target.shape[0]
    pt = p_target - p_target.mean(0, keepdim=True)
    ph = p_harmful - p_harmful.mean(0, keepdim=True)
    return pt.T @ ph / n


@register
class CovarianceGuard(AtlasGuard):
    name = "covariance"
    keep_graph = True
    with_targets = True

    def compute_penalty(self, model: nn.Module, inputs: dict[str, Tensor], mask: Tensor) -> Tensor:
        total: Tensor | None = None
        for plan in self.plans:
            proj = self.recorded[plan.layer][mask]  # [n, F + T]
            f = len(plan.names)
            if proj.shape[0] < 2:
                term = proj.sum() * 0.0  # no covariance from fewer than two tokens
            else:
                term = cross_covariance(proj[:, f:], proj[:, :f]).pow(2).sum()
            total = term if total is None else total + term
        assert total is not None
        return self.strength * self.config.weight * total
