"""Confidence intervals of a data set's risk: a bootstrap over its examples.

Every per-example-decomposable estimate is a mean ``(1/n) sum_i v_i`` over the n sampled
examples (the projection estimates: ``v_i`` = the example's shift / scale; the behavioural one:
``v_i = n * contribution_i``, see :mod:`geomsafe.predict.behaviour`). The interval is the
percentile interval of that mean over ``n_boot`` resamples of the examples with replacement
(a :class:`torch.Generator` seeded by ``seed``). For the behavioural alignment this holds the
data gradient's norm at the whole sample's, so the interval reflects which examples were drawn,
not the norm's own sampling noise.
"""

from __future__ import annotations

import torch
from torch import Tensor


def bootstrap_mean_ci(
    values: Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Per column of ``values`` (``[n, H]``): the (low, high) percentile interval of the
    column mean over ``n_boot`` example resamples."""
    v = values.double()
    n = v.shape[0]
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)
    means = v[idx].mean(1)  # [n_boot, H]
    alpha = (1 - level) / 2
    q = torch.tensor([alpha, 1 - alpha], dtype=torch.float64)
    low, high = torch.quantile(means, q, dim=0)
    return low, high
