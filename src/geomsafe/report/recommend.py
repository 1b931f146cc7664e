"""A plain-language recommendation from whatever results a folder holds."""

from __future__ import annotations

from typing import Any

import numpy as np

from geomsafe.artefacts import CONTROL


def recommend(
    audit: dict | None,
    risk: dict | None,
    evaluation: dict | None,
    run: dict | None,
    bench: dict | None = None,
) -> list[str]:
    out: list[str] = []
    if audit:
        flagged = [
            r
            for r in audit["targets"]
            if r["target"] != CONTROL and r["p_value"] < 0.05 and r["score"] > r["null_q95"]
        ]
        if flagged:
            worst = max(flagged, key=lambda r: r["score"])
            layers = sorted({r["layer"] for r in flagged})
            out.append(
                f"Fine-tuning for '{worst['target']}' pushes '{worst['harmful']}' too (overlap "
                f"{worst['score']:.2f}, above its null band, p={worst['p_value']:.3f}). Guard "
                f"'{worst['harmful']}' with the 'orthogonal' guard (no extra forward pass) at "
                f"layers {', '.join(map(str, layers))}; add 'projection' if the shift persists."
            )
        else:
            out.append(
                "No target overlaps a harmful feature above its permutation null: the "
                "geometry gives no reason for a guard."
            )
        ctrl = next((r for r in audit["targets"] if r["target"] == CONTROL), None)
        if ctrl is not None and ctrl["p_value"] < 0.05:
            out.append(
                "Warning: the label-shuffled control scores above its null; treat the "
                "overlap p-values of this audit with caution."
            )
    if risk:
        top = sorted(risk["concepts"], key=lambda c: -c["risk"])[0]
        if risk["overall_risk"] >= 0.2:
            k = max(1, round(0.05 * risk["n_examples"]))
            out.append(
                f"The data set is predicted to amplify '{top['concept']}' (risk "
                f"{risk['overall_risk']:.2f}). Drop the {k} riskiest examples "
                f"(geomsafe predict --filter {k}) and fine-tune with --guard orthogonal "
                f"--guard-concepts {top['concept']}."
            )
        else:
            out.append(
                f"The data set's predicted risk is low ({risk['overall_risk']:.2f}, "
                f"highest for '{top['concept']}')."
            )
    if evaluation:
        change = _toxic_change(evaluation)
        if change is not None and change[1] > 0:
            out.append(
                f"Toxic-output rate rose by {change[0]:+.1f} points (95% CI "
                f"[{change[1]:+.1f}, {change[2]:+.1f}], excludes 0): do not ship this adapter "
                "without a guard."
            )
        elif change is not None:
            out.append(
                f"Toxic-output rate changed by {change[0]:+.1f} points (95% CI "
                f"[{change[1]:+.1f}, {change[2]:+.1f}]): no increase this evaluation can "
                "resolve at its size."
            )
    guards = (run or {}).get("provenance", {}).get("guards")
    if guards:
        out.append(
            f"This run used the guards {', '.join(guards)}; compare its measured shift with an "
            "unguarded run before trusting it."
        )
    if bench:
        out.extend(_bench_lines(bench))
    return out


def _bench_lines(bench: dict[str, Any]) -> list[str]:
    rows = [r for r in bench["rows"] if r.get("toxic_increase_pp")]
    up = [r for r in rows if r["guard"] == "none" and r["toxic_increase_pp"]["ci_low"] > 0]
    out = []
    if up:
        out.append(
            "Unguarded fine-tuning raised the toxic-output rate (CI above 0) for: "
            + ", ".join(f"{r['task']} ({r['toxic_increase_pp']['value']:+.1f} pp)" for r in up)
            + "."
        )
    else:
        out.append(
            "No unguarded fine-tune raised the toxic-output rate with a CI above 0 at this "
            "benchmark's size."
        )
    by = {(r["task"], r["guard"]): r for r in bench["rows"]}
    for guard in dict.fromkeys(r["guard"] for r in bench["rows"] if r["guard"] != "none"):
        pairs = [
            (by[(t, "none")], r) for (t, g), r in by.items() if g == guard and (t, "none") in by
        ]
        shift = [
            abs(g["measured_shift"]) / abs(n["measured_shift"])
            for n, g in pairs
            if n["measured_shift"]
        ]
        loss = [g["final_loss"] / n["final_loss"] for n, g in pairs if n.get("final_loss")]
        if shift and loss:
            out.append(
                f"Guard '{guard}': median |measured shift| along "
                f"'{bench.get('shift_concept', 'toxicity')}' {float(np.median(shift)):.2f}× the "
                f"unguarded run's, at {float(np.median(loss)):.2f}× its final training loss "
                f"(median over {len(pairs)} tasks)."
            )
    corr = bench.get("correlations", {}).get("none", {})
    rho = corr.get("spearman")
    if isinstance(rho, float) and rho == rho:
        out.append(
            f"Across tasks, overlap score vs toxic increase: Spearman {rho:+.2f} "
            f"(p={corr['spearman_p']:.2f}, n={corr['n']}); with so few tasks, treat it as a "
            "direction, not a proof."
        )
    return out


def _toxic_change(evaluation: dict[str, Any]) -> tuple[float, float, float] | None:
    """(change, CI low, CI high) of the toxic-output rate in percentage points, when the file
    has a before/after."""
    ch = (evaluation.get("changes") or {}).get("toxic_rate")
    if not isinstance(ch, dict) or "delta" not in ch:
        return None
    return 100 * ch["delta"], 100 * ch["delta_ci_low"], 100 * ch["delta_ci_high"]
