from __future__ import annotations

import torch

from geomsafe.guard.basis import orthonormal_basis
from guard_helpers import WIDTH, random_atlas


def test_orthonormal_basis_spans_rows_and_drops_repeats():
    rows = random_atlas().matrix(1, ["tox", "dec"])
    basis = orthonormal_basis(torch.cat([rows, rows[:1]]))  # a repeated row adds nothing
    assert basis.shape == (WIDTH, 2)
    torch.testing.assert_close(basis.T @ basis, torch.eye(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(basis @ (basis.T @ rows.T), rows.T, atol=1e-5, rtol=0)
