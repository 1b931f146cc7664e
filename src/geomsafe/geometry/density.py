"""Superposition density per layer: how crowded the feature directions are.

``density`` = mean squared cosine among distinct feature directions at the layer.
``baseline`` = the same for as many random directions drawn from N(0, Σ_l), Σ_l the layer's
own activation covariance (sampled as ``X_cᵀ w / sqrt(N)`` from the centred activations, so
no eigendecomposition), averaged over draws. ``ratio`` = density / baseline: above 1 the
features are more crowded than the layer's anisotropy alone explains. ``isotropic`` = 1/D,
the expectation for uniformly random directions. ``effective_rank`` = exp(entropy) of the
normalised covariance spectrum (Roy & Vetterli 2007).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from geomsafe.directions import unit


@dataclass
class DensityResult:
    layer: int
    n_features: int
    density: float
    baseline: float
    baseline_sd: float
    ratio: float
    isotropic: float
    effective_rank: float

    def to_dict(self) -> dict:
        return asdict(self)


def mean_sq_cos(directions: Tensor) -> float:
    """Mean squared cosine over distinct pairs of the rows of ``directions`` ``[F, D]``."""
    return float(_mean_sq_cos(directions))


def _mean_sq_cos(directions: Tensor) -> Tensor:
    """:func:`mean_sq_cos` of every ``[F, D]`` matrix in ``directions`` ``[..., F, D]``."""
    u = unit(directions)
    g = u @ u.mT
    f = g.shape[-1]
    return ((g**2).sum((-2, -1)) - f) / (f * (f - 1))


def effective_rank(acts: Tensor) -> float:
    """exp(entropy) of the eigenvalue distribution of the covariance of ``acts`` ``[N, D]``.

    The eigenvalues are those of the ``[D, D]`` scatter matrix ``X_cᵀ X_c`` (in float64), the
    squared singular values of the centred activations ``X_c`` without an SVD of ``X_c``."""
    centred = (acts - acts.mean(0)).double()
    s = torch.linalg.eigvalsh(centred.T @ centred).clamp_min(0)
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def superposition_density(
    directions: Tensor, acts: Tensor, layer: int, n_draws: int = 50, seed: int = 0
) -> DensityResult:
    """``directions`` ``[F, D]`` of distinct features; ``acts`` ``[N, D]`` at the same layer.
    The ``n_draws`` random direction sets are drawn and scored in one batch."""
    f, d = directions.shape
    if f < 2:
        raise ValueError("density needs at least two features")
    gen = torch.Generator().manual_seed(seed)
    centred = acts - acts.mean(0)
    # One draw at a time: the generator's stream then does not depend on n_draws * N * F.
    w = torch.stack([torch.randn(acts.shape[0], f, generator=gen) for _ in range(n_draws)])
    base = _mean_sq_cos((centred.T @ w).mT)  # [n_draws]
    dens = mean_sq_cos(directions)
    return DensityResult(
        layer=layer,
        n_features=f,
        density=dens,
        baseline=float(base.mean()),
        baseline_sd=float(base.std()),
        ratio=dens / float(base.mean()),
        isotropic=1.0 / d,
        effective_rank=effective_rank(acts),
    )
