"""Bootstrap confidence intervals, general enough for any module.

The resampling unit is the first axis of ``values``: a prompt with all its samples, a probe
statement, a question. ``values`` is either an array whose first axis is the unit (``[N]`` or
``[N, S]``), or a sequence of per-unit arrays of different lengths (ragged; the resample is
then concatenated before ``stat`` is applied, so the default mean pools every sample).

Percentile interval: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of ``stat``
over ``n_boot`` resamples drawn with ``numpy.random.default_rng(seed)``; the point estimate is
``stat`` on the data as given. With ``paired`` (a second sample aligned unit by unit with
``values``), the estimand is ``stat(paired) - stat(values)`` and both are resampled with the
same indices (a paired bootstrap): pass ``values=before, paired=after`` for a change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from geomsafe.errors import GeomsafeError

Stat = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class CI:
    """A point estimate with its bootstrap percentile interval."""

    value: float
    low: float
    high: float
    n: int  # resampling units
    n_boot: int
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def scaled(self, factor: float) -> CI:
        """The same interval in other units (e.g. ``100`` for percent / percentage points)."""
        return CI(
            self.value * factor,
            self.low * factor,
            self.high * factor,
            self.n,
            self.n_boot,
            self.level,
        )

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _units(values: np.ndarray | Sequence[Any]) -> np.ndarray | list[np.ndarray]:
    """A dense array when every unit has the same shape, else a list of 1-D arrays."""
    if isinstance(values, np.ndarray):
        return values
    parts = [np.asarray(v, dtype=float) for v in values]
    if parts and all(p.shape == parts[0].shape for p in parts):
        return np.stack(parts) if parts[0].ndim else np.asarray(parts, dtype=float)
    return [p.reshape(-1) for p in parts]


def _apply(units: np.ndarray | list[np.ndarray], idx: np.ndarray, stat: Stat) -> float:
    if isinstance(units, np.ndarray):
        return float(stat(units[idx]))
    return float(stat(np.concatenate([units[i] for i in idx])))


def _fast_means(units: np.ndarray | list[np.ndarray], draws: np.ndarray) -> np.ndarray:
    """Pooled means of every resample at once (the default statistic, vectorised)."""
    if isinstance(units, np.ndarray):
        per_unit = units.reshape(len(units), -1)
        return per_unit.sum(1)[draws].sum(1) / (per_unit.shape[1] * draws.shape[1])
    sums = np.array([u.sum() for u in units])
    counts = np.array([u.size for u in units], dtype=float)
    return sums[draws].sum(1) / counts[draws].sum(1)


def bootstrap_ci(
    values: np.ndarray | Sequence[Any],
    stat: Stat | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    paired: np.ndarray | Sequence[Any] | None = None,
) -> CI:
    """Percentile bootstrap CI of ``stat`` (default: the pooled mean) over the units of
    ``values``; with ``paired``, of ``stat(paired) - stat(values)`` (see the module docstring)."""
    if n_boot < 1:
        raise GeomsafeError(f"n_boot must be at least 1, not {n_boot}")
    if not 0 < level < 1:
        raise GeomsafeError(f"level must be between 0 and 1, not {level}")
    units = _units(values)
    n = len(units)
    if n == 0:
        raise GeomsafeError("bootstrap_ci needs at least one value")
    other = _units(paired) if paired is not None else None
    if other is not None and len(other) != n:
        raise GeomsafeError(f"paired samples differ in length ({n} vs {len(other)})")
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    full = np.arange(n)
    if stat is None:
        point = float(_fast_means(units, full[None])[0])
        boot = _fast_means(units, draws)
        if other is not None:
            point = float(_fast_means(other, full[None])[0]) - point
            boot = _fast_means(other, draws) - boot
    else:
        point = _apply(units, full, stat)
        boot = np.array([_apply(units, d, stat) for d in draws])
        if other is not None:
            point = _apply(other, full, stat) - point
            boot = np.array([_apply(other, d, stat) for d in draws]) - boot
    alpha = (1.0 - level) / 2
    finite = boot[np.isfinite(boot)]
    if finite.size == 0:
        low = high = float("nan")
    else:
        low, high = (float(q) for q in np.quantile(finite, [alpha, 1 - alpha]))
    return CI(point, low, high, n, n_boot, level)


def change_ci(
    before: np.ndarray | Sequence[Any],
    after: np.ndarray | Sequence[Any],
    stat: Stat | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> CI:
    """``stat(after) - stat(before)`` with a paired bootstrap CI (same resample for both)."""
    return bootstrap_ci(before, stat, n_boot, seed, level, paired=after)


def difference_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> CI:
    """``mean(a) - mean(b)`` for two independent samples whose units are not paired (they may
    differ in number and in kind, e.g. two sets of response pairs), with a percentile bootstrap
    CI: each sample is resampled on its own (``a``'s draws first, then ``b``'s, both from
    ``numpy.random.default_rng(seed)``) and the interval is taken over the ``n_boot``
    differences of the resampled means. ``a`` and ``b`` hold one value per unit (a per-unit
    paired change when the estimand is a difference of changes); ``n`` of the result is
    ``len(a) + len(b)``."""
    if n_boot < 1:
        raise GeomsafeError(f"n_boot must be at least 1, not {n_boot}")
    if not 0 < level < 1:
        raise GeomsafeError(f"level must be between 0 and 1, not {level}")
    x, y = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if x.size == 0 or y.size == 0:
        raise GeomsafeError("difference_ci needs at least one value on each side")
    rng = np.random.default_rng(seed)
    draws_x = rng.integers(0, x.size, size=(n_boot, x.size))
    draws_y = rng.integers(0, y.size, size=(n_boot, y.size))
    boot = x[draws_x].mean(1) - y[draws_y].mean(1)
    alpha = (1.0 - level) / 2
    low, high = (float(q) for q in np.quantile(boot, [alpha, 1 - alpha]))
    return CI(float(x.mean() - y.mean()), low, high, int(x.size + y.size), n_boot, level)


__all__ = ["CI", "bootstrap_ci", "change_ci", "difference_ci"]
