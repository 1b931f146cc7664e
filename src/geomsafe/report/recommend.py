"""A plain-language recommendation from whatever results a folder holds."""

from __future__ import annotations

from typing import Any


def recommend(
    audit: dict | None, risk: dict | None, evaluation: dict | None, run: dict | None
) -> list[str]:
    out: list[str] = []
    if audit:
        flagged = [
            r
            for r in audit["targets"]
            if r["target"] != "random_labels" and r["p_value"] < 0.05 and r["score"] > r["null_q95"]
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
        ctrl = next((r for r in audit["targets"] if r["target"] == "random_labels"), None)
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
                f"Toxic-output rate rose by {change[0]:+.1f} points (CI excludes 0): do "
                "not ship this adapter without a guard."
            )
    if run and run.get("guards"):
        out.append(
            f"This run used the guards {', '.join(run['guards'])}; compare its measured "
            "shift with an unguarded run before trusting it."
        )
    return out


def _toxic_change(evaluation: dict[str, Any]) -> tuple[float, float] | None:
    """(change in points, CI low) of the toxic-output rate, when the file has a before/after."""
    ch = evaluation.get("change", {}).get("toxic_rate") if isinstance(evaluation, dict) else None
    if not isinstance(ch, dict) or "value" not in ch:
        return None
    return float(ch["value"]) * (100 if abs(ch["value"]) <= 1 else 1), float(ch.get("ci_low", 0))
