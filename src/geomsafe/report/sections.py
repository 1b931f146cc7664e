"""The sections of the report: each turns one results file into the values and inline-SVG
plots its part of the page shows."""

from __future__ import annotations

from typing import Any

import numpy as np

from geomsafe.bench.table import COLUMNS, behaviour_lines, cells, correlation_lines
from geomsafe.report import plots
from geomsafe.stats import CI


def audit_section(audit: dict) -> dict:
    # the overlap CI as CI.to_dict, also from an audit.json before geomsafe.audit/2
    rows = [{**r, "ci": CI.at(r, "ci").to_dict()} for r in audit["targets"]]
    names = audit["cosines"]["names"]
    band = audit.get("band") or [int(k) for k in audit["cosines"]["by_layer"]]
    mid = str(band[len(band) // 2])
    kinds = [
        (
            "harmful"
            if n in {h["target"] for h in audit["harmful_neighbours"]}
            or any(n == r["harmful"] for r in rows)
            else "target"
        )
        for n in names
    ]
    cos = np.asarray(audit["cosines"]["by_layer"][mid])
    # Directions are unit vectors: their Gram matrix gives a 2-D map without the raw vectors.
    vals, vecs = np.linalg.eigh(cos)
    coords = vecs * np.sqrt(np.clip(vals, 0, None))
    return {
        "rows": rows,
        "neighbours": audit["harmful_neighbours"],
        "overlap_plots": [
            plots.overlap_layers(r["per_layer"], f"{r['target']} vs harmful") for r in rows
        ],
        "heatmap": plots.heatmap(cos, names, f"cosine of feature directions, layer {mid}"),
        "density": plots.density(audit["density"]),
        "pca": plots.pca_map(coords, names, kinds, f"feature directions, layer {mid} (PCA)"),
        "separation": {n: max(v) for n, v in audit["separation"].items()},
        "best_layer": audit["best_layer"],
        "heads": [
            (r["target"], r["harmful"], r["heads"]["shared"]) for r in rows if r.get("heads")
        ],
    }


def risk_section(risk: dict) -> dict:
    cs = sorted(risk["concepts"], key=lambda c: -c["risk"])
    return {
        "concepts": cs,
        "plot": plots.bars(
            [c["concept"] for c in cs],
            [c["risk"] for c in cs],
            "predicted risk per harmful concept",
            "risk (0–1)",
        ),
        "examples": risk["examples"][:10],
        "overall": risk["overall_risk"],
        "overall_concept": risk["overall_concept"],
        "n": risk["n_examples"],
        "n_total": risk["n_total"],
        "method": cs[0]["method"],
    }


def log_section(log: list[dict]) -> dict:
    steps = [r.get("step", i) for i, r in enumerate(log)]
    loss = {"loss": [r.get("loss", float("nan")) for r in log]}
    if any("penalty" in r for r in log):
        loss["guard penalty"] = [r.get("penalty", 0.0) for r in log]
    projs = sorted({k for r in log for k in r if k.startswith("proj/")})
    out = {"loss": plots.curves(steps, loss, "training loss and guard penalty")}
    if projs:
        out["proj"] = plots.curves(
            steps,
            {k[5:]: [r.get(k, float("nan")) for r in log] for k in projs},
            "projection of the batch on guarded harmful directions",
        )
    return out


def evaluation_section(evaluation: dict[str, Any]) -> dict[str, Any]:
    """The headline metrics (per-category breakdowns left out) and, with a before, their paired
    changes: rates in percent / percentage points, scores in raw units."""
    metrics = {k: m for k, m in evaluation["model"]["metrics"].items() if not m.get("detail")}
    changes = evaluation.get("changes") or {}
    before = (evaluation.get("before") or {}).get("metrics", {})
    rows = []
    for name, m in metrics.items():
        scale = 100.0 if m["kind"] in ("rate", "probability") else 1.0
        ch = changes.get(name)
        b = before.get(name)
        # CI.at: the layout of geomsafe.eval/2 and the older ones (ci_low, delta_ci_low, ...)
        after = CI.at(m, "ci")
        rows.append(
            {
                "label": m["label"],
                "unit": "%" if scale == 100.0 else "",
                "before": None if b is None else _ci3(CI.at(b, "ci").to_dict(), scale),
                "after": _ci3(after.to_dict(), scale),
                "change": None if ch is None else _ci3(CI.at(ch, "delta").to_dict(), scale),
                "n": after.n,
            }
        )
    forests = []
    for unit, xlabel in (("%", "change (percentage points)"), ("", "change (score units)")):
        sub = [r for r in rows if r["change"] is not None and r["unit"] == unit]
        if sub:
            forests.append(
                plots.forest(
                    [r["label"] for r in sub],
                    [r["change"][0] for r in sub],
                    [r["change"][1] for r in sub],
                    [r["change"][2] for r in sub],
                    "after − before, 95% paired bootstrap CI",
                    xlabel,
                )
            )
    return {"rows": rows, "forests": forests, "warnings": evaluation.get("warnings", [])}


def run_section(run: dict[str, Any]) -> dict[str, Any]:
    """What a fine-tuning run did: data, guards, loss, step time, projection change."""
    prov = run.get("provenance", {})
    metrics = run.get("metrics", {})
    return {
        "guards": prov.get("guards", []),
        "concepts": prov.get("guard_concepts", []),
        "data": prov.get("data"),
        "data_hash": prov.get("data_hash"),
        "steps": metrics.get("steps"),
        "n_examples": metrics.get("n_examples"),
        "n_truncated": metrics.get("n_truncated"),
        "n_skipped": metrics.get("n_skipped"),
        "first_loss": metrics.get("first_loss"),
        "final_loss": metrics.get("final_loss"),
        "final_penalty": metrics.get("final_penalty"),
        "time_per_step": run.get("time_per_step_s"),
        "projection_change": run.get("projection_change") or {},
    }


def _ci3(d: dict[str, Any] | None, scale: float = 1.0) -> list[float]:
    """``[value, low, high]`` (times ``scale``) of a serialised CI of any version (NaN: none)."""
    if not d:
        return [float("nan")] * 3
    ci = CI.from_dict(d).scaled(scale)
    return [ci.value, ci.low, ci.high]


def bench_section(bench: dict[str, Any]) -> dict[str, Any]:
    """The benchmark table, the overlap-vs-toxicity scatter, guarded-vs-unguarded bars."""
    rows = bench["rows"]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    guards = list(dict.fromkeys(r["guard"] for r in rows))
    by = {(r["task"], r["guard"]): r for r in rows}
    series = {
        g: [_ci3(by[(t, g)]["toxic_increase_pp"]) if (t, g) in by else (np.nan,) * 3 for t in tasks]
        for g in guards
    }
    tox = [_ci3(r["toxic_increase_pp"]) for r in rows]
    beh = [r for r in rows if r.get("behaviour_change")]
    behaviour_scatter = (
        plots.scatter(
            [r["overlap"]["score"] for r in beh],
            [r["behaviour_change"]["value"] for r in beh],
            [r["task"] for r in beh],
            [r["guard"] for r in beh],
            "overlap score vs behavioural change of the nearest harmful concept",
            "geometric overlap score (task direction vs nearest harmful)",
            "log-odds change, held-out pairs (nats/token)",
            yerr=[_ci3(r["behaviour_change"])[1:] for r in beh],
        )
        if beh
        else ""
    )
    return {
        "columns": COLUMNS,
        "cells": [cells(r) for r in rows],
        "correlations": correlation_lines(bench["correlations"], "overlap vs toxic increase")
        + correlation_lines(bench["shift_correlations"], "predicted vs measured shift")
        + behaviour_lines(bench),
        "scatter": plots.scatter(
            [r["overlap"]["score"] for r in rows],
            [t[0] for t in tox],
            [r["task"] for r in rows],
            [r["guard"] for r in rows],
            "overlap score vs measured toxic-output increase",
            "geometric overlap score (task direction vs nearest harmful)",
            "toxic-output increase (pp)",
            yerr=[(t[1], t[2]) for t in tox],
        ),
        "shift_scatter": plots.scatter(
            [r["predicted_shift"] for r in rows],
            [r["measured_shift"] for r in rows],
            [r["task"] for r in rows],
            [r["guard"] for r in rows],
            f"predicted vs measured shift along {bench.get('shift_concept', 'toxicity')}",
            "predicted shift (projection difference)",
            "measured shift (activation projection, after − before)",
        ),
        "behaviour_scatter": behaviour_scatter,
        "bars": plots.grouped_bars(
            tasks, series, "toxic-output increase per task, 95% CI", "percentage points"
        ),
        "provenance": bench.get("provenance", {}),
    }
