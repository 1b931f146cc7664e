"""Superposition statistics of trained toy models (all take ``W`` as ``[I, m, n]``)."""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-8
REPRESENTED = 0.5
"""A feature counts as represented when ``‖W_i‖ > REPRESENTED`` (trained norms are ~0 or ~1)."""


def norms(W: Tensor) -> Tensor:
    """``[I, n]`` feature norms ``‖W_i‖``."""
    return W.norm(dim=-2)


def unit_columns(W: Tensor) -> Tensor:
    """``Ŵ``: columns scaled to unit norm (zero columns stay ~zero)."""
    return W / (norms(W).unsqueeze(-2) + EPS)


def gram(W: Tensor) -> Tensor:
    """``[I, n, n]`` ``WᵀW``: diagonal = ``‖W_i‖²``, off-diagonal = interference."""
    return W.transpose(-1, -2) @ W


def cosines(W: Tensor) -> Tensor:
    """``[I, n, n]`` cosines ``Ŵ_iᵀŴ_j`` between feature directions."""
    u = unit_columns(W)
    return u.transpose(-1, -2) @ u


def dimensionality(W: Tensor) -> Tensor:
    """``[I, n]`` feature dimensionality ``D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)²``.

    1 for a feature with a dedicated dimension, 1/2 for an antipodal pair, 2/5 for a pentagon in
    a plane, ~0 for a feature that is not represented (set to exactly 0 below ``‖W_i‖ = 1e-4``).
    """
    n2 = norms(W) ** 2
    proj = unit_columns(W).transpose(-1, -2) @ W  # [I, n, n]: (Ŵ_i · W_j)
    denom = (proj**2).sum(-1)
    d = n2 / (denom + EPS)
    return torch.where(n2 > 1e-8, d, torch.zeros_like(d))


def dims_per_feature(W: Tensor) -> Tensor:
    """``[I]`` ``m / ‖W‖_F²``: hidden dimensions per (norm of) embedded feature. 1 when ``m``
    features each get a dedicated dimension; below 1 when features share dimensions."""
    m = W.shape[-2]
    return m / (W**2).sum((-1, -2)).clamp_min(EPS)


def n_represented(W: Tensor, threshold: float = REPRESENTED) -> Tensor:
    """``[I]`` number of features with ``‖W_i‖ > threshold``."""
    return (norms(W) > threshold).sum(-1)


def interference(W: Tensor) -> Tensor:
    """``[I, n]`` ``Σ_{j≠i} (Ŵ_i·W_j)²``: how much other features leak into feature i's read-out
    direction (0 for a feature with a dedicated, orthogonal dimension)."""
    proj = unit_columns(W).transpose(-1, -2) @ W
    eye = torch.eye(W.shape[-1], dtype=torch.bool)
    return (proj**2).masked_fill(eye, 0.0).sum(-1)
