"""The firewall parts of the report: a calibration (``firewall.json``) and a run under the
firewall (``firewall_run.json``): score distributions with threshold lines, flagged examples."""

from __future__ import annotations

from typing import Any

from geomsafe.report import plots


def _plots(checks: list[dict], series_of) -> list[str]:
    out = []
    for c in checks:
        tau = c["threshold"]
        if not isinstance(tau, int | float):
            continue
        where = "last prompt token" if c["tokens"] == "last_prompt" else "max over response"
        out.append(
            plots.threshold_hist(
                series_of(c), tau, f"{c['key']}: score ({where})", "projection h·u"
            )
        )
    return out


def calibration_section(fw: dict[str, Any]) -> dict[str, Any]:
    """Benign calibration statistics per check, with each check's threshold."""
    cal = fw.get("calibration", {})
    stats = cal.get("stats", {})
    return {
        "checks": fw["checks"],
        "fpr": fw.get("fpr"),
        "achieved": cal.get("fpr_achieved"),
        "q": cal.get("q"),
        "n": cal.get("n_sequences"),
        "sources": cal.get("sources", {}),
        "plots": _plots(fw["checks"], lambda c: {"benign calibration": stats.get(c["key"], [])}),
    }


def run_section(run: dict[str, Any]) -> dict[str, Any]:
    """Counts, per-check score distributions (this run vs benign calibration) and the flagged
    examples of a run under the firewall."""
    scores = run["scores"]
    benign = run.get("benign", {})

    def series(c: dict) -> dict[str, list]:
        span = "prompt" if c["tokens"] == "last_prompt" else "response"
        return {"this run": scores[span][c["key"]], "benign calibration": benign.get(c["key"], [])}

    rows = []
    for c in run["checks"]:
        span = "prompt" if c["tokens"] == "last_prompt" else "response"
        vals = [v for v in scores[span][c["key"]] if v is not None]
        tau = c["threshold"]
        above = sum(v > tau for v in vals) if isinstance(tau, int | float) else 0
        rows.append({**c, "n": len(vals), "above": above})
    return {
        "mode": run["mode"],
        "n": run["n_responses"],
        "blocked": run["n_blocked"],
        "flagged": run["n_flagged"],
        "flagged_prompt": run["n_flagged_prompt"],
        "flagged_response": run["n_flagged_response"],
        "clamped": run["n_clamped_responses"],
        "rows": rows,
        "plots": _plots(run["checks"], series),
        "examples": run.get("flagged_examples", []),
    }
