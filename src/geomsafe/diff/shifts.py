"""Principal shifts of activation differences: the one computation that the pilot guard
(:mod:`geomsafe.guard.pilot`, pooled differences of a short pilot run) and model diffing
(:mod:`geomsafe.diff.run`, per-token differences of a saved adapter) share.

The principal shifts of differences ``Δ`` (``[N, D]``, one row per example or token) are the
top ``k`` right singular vectors of ``Δ`` *uncentred*, i.e. the top eigenvectors of the second
moment ``ΔᵀΔ``: the mean shift that every row shares counts as well as the spread around it.
``explained`` is each one's share of ``‖Δ‖_F² = trace(ΔᵀΔ)``, and each is oriented so that the
mean shift projects positively on it. :func:`gram_shifts` computes them from ``ΔᵀΔ`` and the
mean alone, so differences can be accumulated batch by batch and never held at once.
"""

from __future__ import annotations

import torch
from torch import Tensor


def gram_shifts(gram: Tensor, mean: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``([k, D] unit rows, [k] explained shares)``: the top ``k`` eigenvectors of the
    uncentred second moment ``gram`` (``ΔᵀΔ``, ``[D, D]``, any positive scale) ordered by
    eigenvalue, each oriented so that ``mean`` (``[D]``) projects positively on it (the
    module docstring). ``k`` is capped at ``D``; an all-zero ``gram`` explains nothing."""
    g = gram.double()
    g = (g + g.T) / 2
    evals, evecs = torch.linalg.eigh(g)  # ascending
    k = min(k, g.shape[0])
    top = evals.flip(0)[:k].clamp(min=0.0)
    pcs = evecs.flip(1)[:, :k].T
    sign = torch.where(pcs @ mean.double() < 0, -1.0, 1.0).to(pcs.dtype)
    total = evals.clamp(min=0.0).sum().clamp(min=1e-300)
    return (pcs * sign[:, None]).float(), (top / total).float()


def principal_shifts(diffs: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """``([k, D] unit rows, [k] explained shares)``: the top ``k`` uncentred principal
    directions of ``diffs`` (``[N, D]``), each oriented along the mean shift (capped at
    ``min(N, D)`` directions: the rank of ``diffs``)."""
    d = diffs.double()
    pcs, explained = gram_shifts(d.T @ d, d.mean(0), min(k, *d.shape))
    return pcs, explained


def common_basis(gram: Tensor, n: int) -> tuple[Tensor, float]:
    """``([n, D] orthonormal rows, share)``: the top ``n`` uncentred principal directions of
    activations whose second moment is ``gram`` (``XᵀX``): the directions that are large in
    every activation (the mean and the outlier dimensions of the residual stream), and the
    share of ``trace(gram)`` they carry. ``n = 0`` gives an empty basis."""
    g = gram.double()
    g = (g + g.T) / 2
    if n <= 0:
        return torch.zeros(0, g.shape[0]), 0.0
    evals, evecs = torch.linalg.eigh(g)
    top = evecs.flip(1)[:, :n].T
    total = float(evals.clamp(min=0.0).sum())
    share = float(evals.flip(0)[:n].clamp(min=0.0).sum()) / total if total > 0 else 0.0
    return top.float(), share


__all__ = ["common_basis", "gram_shifts", "principal_shifts"]
