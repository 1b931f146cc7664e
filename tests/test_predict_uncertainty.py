from __future__ import annotations

import torch

from geomsafe.predict.uncertainty import bootstrap_mean_ci


def test_ci_covers_the_mean_is_seeded_and_shrinks_with_n():
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(30, 2, generator=gen) + torch.tensor([0.0, 1.0])
    big = torch.randn(600, 2, generator=gen) + torch.tensor([0.0, 1.0])
    low, high = bootstrap_mean_ci(small, n_boot=500, seed=1)
    mean = small.double().mean(0)
    assert torch.all(low <= mean) and torch.all(mean <= high)
    again = bootstrap_mean_ci(small, n_boot=500, seed=1)
    assert torch.equal(again[0], low) and torch.equal(again[1], high)
    other = bootstrap_mean_ci(small, n_boot=500, seed=2)
    assert not torch.equal(other[0], low)
    b_low, b_high = bootstrap_mean_ci(big, n_boot=500, seed=1)
    assert torch.all(b_high - b_low < high - low)
    assert b_low[1] > 0.8 and b_high[1] < 1.2  # the shifted column is found


def test_ci_level():
    x = torch.arange(100.0).unsqueeze(1)
    lo90, hi90 = bootstrap_mean_ci(x, level=0.9, seed=0)
    lo99, hi99 = bootstrap_mean_ci(x, level=0.99, seed=0)
    assert lo99 < lo90 < hi90 < hi99
