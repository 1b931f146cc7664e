"""The predict-validation part of the report (``validation.json``, written by
``experiments/predict_validation.py``): does ``predict``'s risk rank data sets by the
behavioural change that fine-tuning on them really causes?

Three parts: the **dose-response curve** (per mixture group ``mix:A:B:F``: predicted overall
risk and the measured behavioural change, mean over the harmful concepts' log-odds rows with a
95% CI (:func:`level_ci`), against the fraction F, with both monotonicity Spearmans); the
pooled **scatter** of predicted risk against behavioural change (one point per data set x
concept) with the Spearman, its p-value and the share of pairs ranked right per estimator; and
one plain sentence per goal (:data:`GOALS`) that the default estimator misses, computed from
the numbers in the file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from geomsafe.errors import GeomsafeError
from geomsafe.report import plots
from geomsafe.stats import CI, correlation, mean_change_ci

#: The validation goals of issue 14 (predict's default estimator): pooled Spearman of predicted
#: risk against behavioural change, pooled share of data-set pairs ranked right, and the
#: Spearman of risk and of behaviour over the levels of each dose-response mixture.
GOALS: dict[str, float] = {"pooled_spearman": 0.8, "pair_accuracy": 0.9, "mixture_spearman": 0.9}
DEFAULT_ESTIMATOR = "risk"  # predict's headline risk (its default method)
_EPS = 1e-9  # a Spearman of 0.9 computed as 0.8999999999999998 meets a goal of 0.9
CONCEPT_ROW = "logodds:concept:{}"


def pair_changes_of(
    behaviour: Mapping[str, Mapping[str, Any]], rows: Sequence[str]
) -> dict[str, list[float]] | None:
    """The per-pair changes of the log-odds ``rows`` of one data set (each row's
    ``pair_changes``, written by ``experiments/behaviour_runs.py``), for
    :func:`geomsafe.stats.mean_change_ci`; None when ``rows`` is empty or a row is missing or
    has no per-pair changes (a behaviour file written before they were kept)."""
    got = [behaviour.get(r, {}).get("pair_changes") for r in rows]
    if not rows or any(not g for g in got):
        return None
    return {r: [float(v) for v in g.values()] for r, g in zip(rows, got, strict=True)}


def level_ci(
    behaviour: Mapping[str, Mapping[str, Any]], rows: Sequence[str]
) -> tuple[float, float]:
    """The 95% CI of the mean change over the log-odds ``rows`` of one data set:
    :func:`geomsafe.stats.mean_change_ci` (the summed change's stratified bootstrap over the
    rows' pairs, divided by the number of rows; ``n_boot`` 1000, seed 0); NaN without per-pair
    changes (:func:`pair_changes_of`)."""
    changes = pair_changes_of(behaviour, rows)
    if changes is None:
        return (math.nan, math.nan)
    ci = mean_change_ci(changes)
    return (ci.low, ci.high)


def _row_ci(beh: Mapping[str, Any]) -> tuple[float, float]:
    """A behaviour row's change CI (``CI.at(row, "change")``: a ``CI.to_dict`` or the
    ``change``/``ci_low``/``ci_high`` keys); NaN when the row has none."""
    try:
        ci = CI.at(beh, "change")
    except GeomsafeError:
        return (math.nan, math.nan)
    return (ci.low, ci.high)


def _concepts(payload: Mapping[str, Any], est: str) -> list[str]:
    """The harmful concepts: as the file says, else every predicted concept with its row."""
    if payload.get("concepts"):
        return list(payload["concepts"])
    names = {
        c
        for r in payload["rows"]
        for c in r["predicted"].get(est, {})
        if CONCEPT_ROW.format(c) in r["behaviour"]
    }
    return sorted(names)


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) and math.isfinite(v) else "not measurable"


def _level_rows(
    group: str, mix: Mapping[str, Any], by_name: Mapping[str, Mapping[str, Any]]
) -> list[Mapping[str, Any] | None]:
    """The validation row of each level of a mixture group (``datasets`` when the file names
    them, else ``mix:A:B:F`` rebuilt from the group ``A into B``)."""
    if mix.get("datasets"):
        return [by_name.get(n) for n in mix["datasets"]]
    body = "mix:" + group.replace(" into ", ":", 1) + ":"
    found = {}
    for name, row in by_name.items():
        if name.startswith(body):
            try:
                found[float(name[len(body) :])] = row
            except ValueError:
                continue
    return [found.get(float(f)) for f in mix["levels"]]


def dose_response(
    payload: Mapping[str, Any], est: str, concepts: Sequence[str]
) -> list[dict[str, Any]]:
    """Per mixture group: levels, predicted risk, mean concept change with its CI, Spearmans."""
    by_name = {r["dataset"]: r for r in payload["rows"]}
    rows = [CONCEPT_ROW.format(c) for c in concepts]
    out = []
    for group, mix in payload["summary"]["mixtures"].items():
        levels = [float(f) for f in mix["levels"]]
        if mix.get("mean_concept_ci"):
            cis = [(float(lo), float(hi)) for lo, hi in mix["mean_concept_ci"]]
        else:
            cis = [
                level_ci(r["behaviour"], rows) if r is not None else (math.nan, math.nan)
                for r in _level_rows(group, mix, by_name)
            ]
        out.append(
            {
                "group": group,
                "levels": levels,
                "risk": [float(v) for v in mix["risk"]],
                "change": [float(v) for v in mix["mean_concept_change"]],
                "ci": cis,
                "risk_spearman": float(mix["risk_spearman"]),
                "behaviour_spearman": float(mix["behaviour_spearman"]),
            }
        )
    return out


def dose_plot(groups: Sequence[Mapping[str, Any]], est: str) -> str:
    """Two panels over the mixture fraction: predicted overall risk, measured change."""
    risk = {
        f"{g['group']} (ρ={_num(g['risk_spearman'])})": (g["levels"], g["risk"], None)
        for g in groups
    }
    change = {
        f"{g['group']} (ρ={_num(g['behaviour_spearman'])})": (g["levels"], g["change"], g["ci"])
        for g in groups
    }
    return plots.line_panels(
        [
            (f"predicted overall risk ({est})", risk),
            ("behavioural change (nats/token)", change),
        ],
        "mixture fraction (share of the first set)",
        "dose-response (right: mean of the concept rows, 95% CI; ρ: Spearman over the levels)",
    )


def pooled_points(
    rows: Sequence[Mapping[str, Any]], est: str, concepts: Sequence[str]
) -> list[dict[str, Any]]:
    """One point per (data set, concept) with a prediction and a concept row."""
    out = []
    for r in rows:
        for c in concepts:
            pred = r["predicted"].get(est, {}).get(c)
            beh = r["behaviour"].get(CONCEPT_ROW.format(c))
            if pred is None or beh is None:
                continue
            out.append(
                {
                    "dataset": r["dataset"],
                    "concept": c,
                    "predicted": float(pred),
                    "change": float(beh["change"]),
                    "ci": _row_ci(beh),
                }
            )
    return out


def estimator_table(payload: Mapping[str, Any], concepts: Sequence[str]) -> list[dict[str, Any]]:
    """Per estimator: pooled Spearman, its p-value (from the file, else from the points), pair
    accuracy and the number of points."""
    out = []
    for est, s in payload["summary"]["estimators"].items():
        pooled = s["behaviour_pooled"]
        p = pooled.get("p")
        if p is None:
            pts = pooled_points(payload["rows"], est, concepts)
            p = correlation([q["predicted"] for q in pts], [q["change"] for q in pts])["spearman_p"]
        out.append(
            {
                "estimator": est,
                "spearman": float(pooled["spearman"]),
                "p": float(p),
                "pair_accuracy": float(pooled["pair_accuracy"]),
                "n": int(pooled["n"]),
            }
        )
    return out


def goal_lines(
    default: Mapping[str, Any] | None,
    groups: Sequence[Mapping[str, Any]],
    goals: Mapping[str, float],
    est: str,
) -> list[str]:
    """One plain sentence per missed goal (NaN misses: not measurable; a value within 1e-9
    below the goal meets it, for rounding)."""
    out = []
    if default is None:
        return [f"Goals not checked: the file has no {est!r} estimator."]
    checks = [
        ("pooled Spearman", default["spearman"], goals["pooled_spearman"]),
        (
            "pooled share of data-set pairs ranked right",
            default["pair_accuracy"],
            goals["pair_accuracy"],
        ),
    ]
    for what, value, goal in checks:
        if not value >= goal - _EPS:
            out.append(
                f"Goal missed: the {what} of {est} against behavioural change is "
                f"{_num(value)} (goal ≥ {goal:g}, n = {default['n']})."
            )
    if not groups:
        out.append(
            "Dose-response goal not checked: no mixture (mix:A:B:F) data sets in this validation."
        )
    for g in groups:
        for what, key in (
            ("predicted risk", "risk_spearman"),
            ("behavioural change", "behaviour_spearman"),
        ):
            if not g[key] >= goals["mixture_spearman"] - _EPS:
                out.append(
                    f"Goal missed: {what} does not rise with the fraction of {g['group']} "
                    f"(Spearman over the levels {_num(g[key])}, goal ≥ "
                    f"{goals['mixture_spearman']:g})."
                )
    return out


def section(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What the template shows."""
    estimators = payload["summary"]["estimators"]
    est = payload.get("default_estimator", DEFAULT_ESTIMATOR)
    if est not in estimators and estimators:
        est = next(iter(estimators))
    concepts = _concepts(payload, est)
    goals = {**GOALS, **payload.get("goals", {})}
    groups = dose_response(payload, est, concepts)
    table = estimator_table(payload, concepts)
    default = next((t for t in table if t["estimator"] == est), None)
    pts = pooled_points(payload["rows"], est, concepts)
    scatter = None
    if pts:
        title = f"{est} vs behavioural change, pooled over data sets x concepts"
        if default is not None:
            title += (
                f"\nSpearman {_num(default['spearman'])} (p = {default['p']:.2g}), "
                f"pairs right {_num(default['pair_accuracy'])}, n = {default['n']}"
            )
        scatter = plots.scatter(
            [q["predicted"] for q in pts],
            [q["change"] for q in pts],
            [""] * len(pts),
            [q["concept"] for q in pts],
            title,
            f"predicted risk ({est})",
            "behavioural change (log-odds, tuned − base, nats/token)",
            yerr=[q["ci"] for q in pts],
            legend_title="concept",
        )
    return {
        "estimator": est,
        "concepts": concepts,
        "n_datasets": len(payload["rows"]),
        "datasets": [r["dataset"] for r in payload["rows"]],
        "dose_plot": dose_plot(groups, est) if groups else None,
        "mixtures": groups,
        "scatter": scatter,
        "estimators": table,
        "default": default,
        "goals": goals,
        "missed": goal_lines(default, groups, goals, est),
        "command": payload.get("command"),
    }


__all__ = ["DEFAULT_ESTIMATOR", "GOALS", "level_ci", "pair_changes_of", "section"]
