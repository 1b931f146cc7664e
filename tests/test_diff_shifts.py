"""geomsafe.diff.shifts: principal shifts from the second moment, the common basis."""

from __future__ import annotations

import torch

from geomsafe.diff.shifts import common_basis, gram_shifts, principal_shifts


def test_gram_shifts_equal_principal_shifts_of_the_rows():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(40, 12, generator=g) * torch.linspace(0.2, 3.0, 12) + torch.randn(
        12, generator=g
    )
    pcs, explained = principal_shifts(d, 3)
    dd = d.double()
    pcs2, explained2 = gram_shifts(dd.T @ dd * 7.0, dd.mean(0), 3)  # any positive scale
    assert torch.allclose(pcs, pcs2, atol=1e-5) and torch.allclose(explained, explained2)
    assert torch.allclose(pcs @ pcs.T, torch.eye(3), atol=1e-5)
    assert bool((pcs @ d.mean(0) > 0).all())  # oriented along the mean shift
    assert float(explained.sum()) <= 1.0 and bool((explained[:-1] >= explained[1:]).all())


def test_a_shared_shift_is_the_first_component():
    u = torch.zeros(16)
    u[3] = 1.0
    d = 0.01 * torch.randn(100, 16, generator=torch.Generator().manual_seed(1)) - 2.0 * u
    pcs, explained = principal_shifts(d, 2)
    assert float(pcs[0] @ u) < -0.99 and float(explained[0]) > 0.99  # along the mean: -u


def test_principal_shifts_are_capped_at_the_rank():
    pcs, explained = principal_shifts(torch.randn(2, 8), 5)
    assert pcs.shape == (2, 8) and explained.shape == (2,)


def test_common_basis_spans_the_large_directions():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 10, generator=g)
    x[:, 0] += 50.0  # a large common component, in every activation
    basis, share = common_basis(x.T @ x, 1)
    assert basis.shape == (1, 10) and abs(float(basis[0, 0])) > 0.99 and share > 0.9
    empty, none = common_basis(x.T @ x, 0)
    assert empty.shape == (0, 10) and none == 0.0
