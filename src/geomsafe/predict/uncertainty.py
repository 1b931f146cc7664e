"""Confidence intervals of a data set's risk: a bootstrap over its examples.

Every per-example-decomposable estimate is a mean ``(1/n) sum_i v_i`` over the n sampled
examples (the projection estimates: ``v_i`` = the example's shift / scale; the behavioural one:
``v_i = n * contribution_i``, see :mod:`geomsafe.predict.behaviour`). The interval is the
percentile interval of that mean over ``n_boot`` resamples of the examples with replacement
(the project's one bootstrap, :func:`geomsafe.stats.bootstrap_ci`, seeded by
``seed``). For the behavioural alignment this holds the data gradient's norm at the whole
sample's, so the interval reflects which examples were drawn, not the norm's own sampling
noise.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geomsafe.stats import bootstrap_ci


def bootstrap_mean_ci(
    values: Tensor, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """Per column of ``values`` (``[n, H]``): the (low, high) percentile interval of the
    column mean over ``n_boot`` example resamples (:func:`geomsafe.stats.bootstrap_ci`;
    every column sees the same resamples, since each call draws from ``seed``)."""
    cols = values.double().numpy()
    cis = [
        bootstrap_ci(cols[:, k], n_boot=n_boot, seed=seed, level=level)
        for k in range(cols.shape[1])
    ]
    low = torch.tensor([c.low for c in cis], dtype=torch.float64)
    high = torch.tensor([c.high for c in cis], dtype=torch.float64)
    return low, high
