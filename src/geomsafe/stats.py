"""Statistics of geomsafe, in one place: the confidence interval (:class:`CI`, its one
serialised layout), the bootstrap it comes from, behavioural change over log-odds rows, and
correlations.

**Bootstrap.** One primitive, :func:`stratified_draws`: for strata of ``n_1, n_2, ...`` units,
each stratum's ``[n_boot, n_i]`` resample indices, drawn with replacement one stratum after the
other (in the order given) from ``numpy.random.default_rng(seed)``. Everything else is built on
it and reports a percentile interval: the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
of the statistic over the ``n_boot`` resamples (non-finite resamples dropped); the point
estimate is the statistic on the data as given.

- :func:`bootstrap_ci` (one stratum): the resampling unit is the first axis of ``values``: a
  prompt with all its samples, a probe statement, a question. ``values`` is either an array
  whose first axis is the unit (``[N]`` or ``[N, S]``), or a sequence of per-unit arrays of
  different lengths (ragged; the resample is then concatenated before ``stat`` is applied, so
  the default mean pools every sample). With ``paired`` (a second sample aligned unit by unit
  with ``values``), the estimand is ``stat(paired) - stat(values)`` and both are resampled with
  the same indices (the *paired* bootstrap; :func:`change_ci`).
- :func:`stratified_means` (several strata): ``sum over strata of mean(stratum)`` for one or
  more samples aligned within each stratum (resampled with the same indices, paired).
  :func:`difference_ci` (two independent samples, the second negated),
  :func:`sum_change_ci` and :func:`ratio_ci` (rows of per-pair changes, rows in sorted order)
  are this with different strata.

**Behavioural change** over a set of log-odds rows (:func:`behaviour_change`, the one
definition; :func:`mean_change_ci` is the same estimator divided by the number of rows): per
pair ``lo_tuned - lo_base`` (nats/token); a measure's change is the *sum* over its rows of the
mean per-pair change, a subtracted (control) row entering negated; its CI is the stratified
bootstrap over the rows' pairs, each row one stratum (a control that two rows subtract is one
stratum of weight -2: the same pairs, resampled once). The harm measures of a set of rows
(:func:`harm_groups`): each row on its own; for a row ``H`` with a style control ``C``
(``PairSet.style_control``; both rows measured) the *controlled* measure ``H-controlled`` =
change(H) - change(C); and ``all``, the sum of the harm measures: the controlled measure of a
row that has a control, the row itself otherwise, control rows left out.

**Harm ratio** of a guarded run over a set of rows ``R`` (:func:`ratio_ci`):

    ratio = sum_{r in R} mean_pairs(d_guarded[r]) / sum_{r in R} mean_pairs(d_unguarded[r])

(each row weighted equally; one row: the ratio of the mean changes), with a paired,
stratified bootstrap CI: within each row the pairs are resampled with replacement, the same
indices for the guarded and the unguarded changes (same pairs), rows independently. A resample
whose denominator is 0 is dropped. 0 = the guard removed the whole harm change, 1 = no effect,
< 0 = the guarded run moved the other way.

**Correlation** (:func:`correlation`): Pearson and Spearman with their two-sided p-values
(scipy), NaN for fewer than 3 points or a constant side.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from geomsafe.errors import GeomsafeError

Stat = Callable[[np.ndarray], float]

#: The layouts of a CI in files written before :meth:`CI.to_dict` was the only one (value,
#: low, high keys), read by :meth:`CI.from_dict`: an eval metric and a bench cell, an eval
#: change, a behaviour-run row, an audit overlap row.
LEGACY_LAYOUTS: tuple[tuple[str, str, str], ...] = (
    ("value", "ci_low", "ci_high"),
    ("delta", "delta_ci_low", "delta_ci_high"),
    ("change", "ci_low", "ci_high"),
    ("score", "ci_low", "ci_high"),
)
_COUNT_KEYS = ("n", "n_units", "n_paired")


@dataclass(frozen=True)
class CI:
    """A point estimate with its percentile interval; ``n`` resampling units (0: unknown, a
    legacy file), ``n_boot`` resamples (0: unknown), ``level`` the coverage."""

    value: float
    low: float
    high: float
    n: int = 0
    n_boot: int = 0
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        """The one serialised layout: ``{value, low, high, n, n_boot, level}``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CI:
        """A CI from :meth:`to_dict`'s layout or one of :data:`LEGACY_LAYOUTS` (older files);
        a one-line error for anything else."""
        if not isinstance(d, Mapping):
            raise GeomsafeError(f"not a confidence interval: {type(d).__name__}")
        for keys in (("value", "low", "high"), *LEGACY_LAYOUTS):
            if all(k in d for k in keys):
                value, low, high = (float(d[k]) for k in keys)
                n = next((d[k] for k in _COUNT_KEYS if d.get(k) is not None), 0)
                n_boot = d.get("n_boot") or 0
                level = d.get("level") or 0.95
                return cls(value, low, high, int(n), int(n_boot), float(level))
        raise GeomsafeError(f"not a confidence interval (keys {', '.join(sorted(d))})")

    @classmethod
    def at(cls, d: Mapping[str, Any], key: str) -> CI:
        """The CI serialised at ``d[key]``; in a file from before the one layout, where the
        interval's keys sit in ``d`` itself (``d[key]`` a number or absent), read from ``d``."""
        return cls.from_dict(d[key] if isinstance(d.get(key), Mapping) else d)

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

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise GeomsafeError(f"n_boot must be at least 1, not {n_boot}")
    if not 0 < level < 1:
        raise GeomsafeError(f"level must be between 0 and 1, not {level}")


def percentile(boot: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of the finite resampled statistics ``boot`` (NaN
    when none is finite)."""
    finite = np.asarray(boot, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return (math.nan, math.nan)
    alpha = (1.0 - level) / 2
    low, high = (float(q) for q in np.quantile(finite, [alpha, 1 - alpha]))
    return low, high


def stratified_draws(sizes: Sequence[int], n_boot: int, seed: int) -> list[np.ndarray]:
    """The bootstrap's resample indices (module docstring): per stratum of ``sizes`` an
    ``[n_boot, size]`` array, drawn in order from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(n_boot, n)) for n in sizes]


def stratified_means(
    strata: Sequence[Sequence[np.ndarray]], n_boot: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(point, boot, n)`` of ``sum over strata of mean(sample)`` for each of the ``k``
    samples aligned within every stratum (``strata[i]`` holds ``k`` equally long 1-D arrays):
    ``point`` ``[k]``, ``boot`` ``[k, n_boot]`` (the same indices for a stratum's ``k``
    samples, strata drawn in the order given) and ``n``, the units over all strata."""
    sizes = [len(s[0]) for s in strata]
    k = len(strata[0]) if strata else 0
    point, boot = [0.0] * k, np.zeros((k, n_boot))
    for stratum, idx in zip(strata, stratified_draws(sizes, n_boot, seed), strict=True):
        for j, sample in enumerate(stratum):
            boot[j] += sample[idx].mean(1)
            point[j] += float(sample.mean())
    return np.array(point), boot, int(sum(sizes))


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
    _check(n_boot, level)
    units = _units(values)
    n = len(units)
    if n == 0:
        raise GeomsafeError("bootstrap_ci needs at least one value")
    other = _units(paired) if paired is not None else None
    if other is not None and len(other) != n:
        raise GeomsafeError(f"paired samples differ in length ({n} vs {len(other)})")
    (draws,) = stratified_draws([n], n_boot, seed)
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
    return CI(point, *percentile(boot, level), n, n_boot, level)


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
    CI: :func:`stratified_means` with the strata ``a`` and ``-b`` (``a``'s draws first), each
    resampled on its own. ``a`` and ``b`` hold one value per unit (a per-unit paired change when
    the estimand is a difference of changes); ``n`` of the result is ``len(a) + len(b)``."""
    _check(n_boot, level)
    x, y = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if x.size == 0 or y.size == 0:
        raise GeomsafeError("difference_ci needs at least one value on each side")
    point, boot, n = stratified_means([(x,), (-y,)], n_boot, seed)
    return CI(float(x.mean() - y.mean()), *percentile(boot[0], level), n, n_boot, level)


def _rows(name: str, samples: Sequence[Mapping[str, Sequence[float]]]) -> list[list[np.ndarray]]:
    """The strata of per-row samples (rows in sorted order), checked to be aligned."""
    out = []
    for row in sorted(samples[0]):
        arrays = [np.asarray(s[row], dtype=float) for s in samples]
        if any(a.ndim != 1 or a.size == 0 or a.shape != arrays[0].shape for a in arrays):
            what = "has no pairs" if len(arrays) == 1 else "needs equally many pairs on both sides"
            raise GeomsafeError(f"{name}: row {row!r} {what}")
        out.append(arrays)
    return out


def ratio_ci(
    guarded: Mapping[str, Sequence[float]],
    unguarded: Mapping[str, Sequence[float]],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> CI:
    """The harm ratio over the rows of ``guarded`` with its paired, stratified bootstrap CI
    (module docstring). ``guarded[r]`` and ``unguarded[r]`` are per-pair changes, aligned pair
    by pair; ``n`` of the result is the number of pairs over all rows."""
    if set(guarded) != set(unguarded) or not guarded:
        raise GeomsafeError("ratio_ci: guarded and unguarded need the same, non-empty rows")
    _check(n_boot, level)
    (point_num, point_den), (num, den), total = stratified_means(
        _rows("ratio_ci", [guarded, unguarded]), n_boot, seed
    )
    point = float(point_num) / float(point_den) if point_den != 0 else math.nan
    keep = den != 0
    return CI(point, *percentile(num[keep] / den[keep], level), total, n_boot, level)


def sum_change_ci(
    changes: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> CI:
    """``sum_r mean_pairs(changes[r])`` with a stratified percentile bootstrap CI (pairs
    resampled within each row, rows in sorted order): the behavioural change of a measure
    (:func:`behaviour_change`); the unguarded harm change, whose CI decides whether a data set
    is *resolved*."""
    if not changes:
        raise GeomsafeError("sum_change_ci needs at least one row")
    _check(n_boot, level)
    (point,), (boot,), total = stratified_means(_rows("sum_change_ci", [changes]), n_boot, seed)
    return CI(float(point), *percentile(boot, level), total, n_boot, level)


def mean_change_ci(
    changes: Mapping[str, Sequence[float]], n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> CI:
    """The mean over the rows of ``changes`` of each row's mean per-pair change: the same
    estimator as :func:`sum_change_ci` (same resamples) divided by the number of rows."""
    return sum_change_ci(changes, n_boot, seed, level).scaled(1.0 / len(changes))


def harm_groups(
    rows: Sequence[str], controls: Mapping[str, str] | None = None
) -> dict[str, list[tuple[str, float]]]:
    """The harm measures of ``rows`` (module docstring) as ``{measure: [(row, sign), ...]}``:
    each row, ``<row>-controlled`` for each ``row -> control`` of ``controls`` (both among
    ``rows``), then ``all``."""
    controls = dict(controls or {})
    missing = [f"{r} -> {c}" for r, c in controls.items() if r not in rows or c not in rows]
    if missing:
        raise GeomsafeError(f"harm measures: a row or its control is missing: {missing[0]}")
    groups = {r: [(r, 1.0)] for r in rows}
    groups.update({f"{r}-controlled": [(r, 1.0), (c, -1.0)] for r, c in controls.items()})
    skip = set(controls) | set(controls.values())
    groups["all"] = [m for key, sel in groups.items() if key not in skip for m in sel]
    if not groups["all"]:
        raise GeomsafeError("harm measures: no row is a harm measure (only controls)")
    return groups


def signed_changes(
    changes: Mapping[str, np.ndarray], sel: Sequence[tuple[str, float]]
) -> dict[str, np.ndarray]:
    """The strata of a harm measure's selection ``sel`` (:func:`harm_groups`): each row once,
    its per-pair changes times its summed sign, keyed ``"<first position>:<row>"``. A control
    that two measures subtract (``all`` over two rows with one style control) is one stratum of
    weight -2: the same pairs, resampled once."""
    first: dict[str, int] = {}
    weight: dict[str, float] = {}
    for i, (r, sign) in enumerate(sel):
        first.setdefault(r, i)
        weight[r] = weight.get(r, 0.0) + sign
    return {f"{first[r]}:{r}": w * changes[r] for r, w in weight.items() if w != 0}


def behaviour_change(
    base: Mapping[str, Sequence[float]],
    tuned: Mapping[str, Sequence[float]],
    reference: Mapping[str, Sequence[float]] | None = None,
    *,
    controls: Mapping[str, str] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, dict[str, CI]]:
    """The behavioural change of a tuned model against the base model, per harm measure of the
    rows of ``base`` (:func:`harm_groups` with ``controls``): ``change`` = tuned - base with its
    stratified bootstrap CI (:func:`sum_change_ci`). With ``reference`` (another tuned model
    on the same pairs, e.g. the unguarded run) also ``reference_change`` = reference - base and
    ``ratio`` = change / reference change with its paired CI (:func:`ratio_ci`).

    ``base``, ``tuned`` and ``reference`` map each row to its per-pair log-odds, aligned pair
    by pair (:func:`geomsafe.evaluate.logodds.pair_logodds` on the same pair set)."""
    rows = list(base)
    runs = {"change": tuned, **({"reference_change": reference} if reference is not None else {})}
    deltas: dict[str, dict[str, np.ndarray]] = {}
    for key, values in runs.items():
        if set(values) != set(rows):
            raise GeomsafeError("behaviour_change: a run measures other rows than the base")
        deltas[key] = {}
        for r in rows:
            after, before = np.asarray(values[r], dtype=float), np.asarray(base[r], dtype=float)
            if after.shape != before.shape:
                raise GeomsafeError(f"row {r}: the run and the base hold different pairs")
            deltas[key][r] = after - before
    out: dict[str, dict[str, CI]] = {}
    for measure, sel in harm_groups(rows, controls).items():
        got = {k: sum_change_ci(signed_changes(d, sel), n_boot, seed) for k, d in deltas.items()}
        if reference is not None:
            signed = {k: signed_changes(d, sel) for k, d in deltas.items()}
            got["ratio"] = ratio_ci(signed["change"], signed["reference_change"], n_boot, seed)
        out[measure] = got
    return out


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """``{n, pearson, pearson_p, spearman, spearman_p}``: Pearson's and Spearman's
    correlation with their two-sided p-values; NaN where undefined (fewer than 3 points or a
    constant side)."""
    from scipy.stats import pearsonr, spearmanr

    xs, ys = [float(v) for v in x], [float(v) for v in y]
    if len(xs) != len(ys):
        raise GeomsafeError(f"correlation: {len(xs)} x values but {len(ys)} y values")
    out: dict[str, Any] = {"n": len(xs)}
    ok = len(xs) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1
    for key, fn in (("pearson", pearsonr), ("spearman", spearmanr)):
        if ok:
            res = fn(xs, ys)
            out[key], out[f"{key}_p"] = float(res.statistic), float(res.pvalue)
        else:
            out[key], out[f"{key}_p"] = math.nan, math.nan
    return out


__all__ = [
    "CI",
    "LEGACY_LAYOUTS",
    "behaviour_change",
    "bootstrap_ci",
    "change_ci",
    "correlation",
    "difference_ci",
    "harm_groups",
    "mean_change_ci",
    "percentile",
    "ratio_ci",
    "signed_changes",
    "stratified_draws",
    "stratified_means",
    "sum_change_ci",
]
