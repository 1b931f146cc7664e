"""Orthonormal bases of sets of directions (QR), shared by the guards that project."""

from __future__ import annotations

import torch
from torch import Tensor


def orthonormal_basis(rows: Tensor, tol: float = 1e-6) -> Tensor:
    """``[D, k]`` orthonormal basis of the span of ``rows`` (``[F, D]``), via QR; directions
    that add (numerically) nothing to the span are dropped."""
    q, r = torch.linalg.qr(rows.double().T)
    keep = r.diagonal().abs() > tol * max(1.0, float(r.diagonal().abs().max()))
    return q[:, keep].float()
