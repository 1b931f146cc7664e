"""The benchmark table: rows, correlations, and the printed / Markdown forms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from geomsafe.stats import CI, correlation

COLUMNS = (
    "model",
    "fine-tuning task",
    "guard",
    "% increase in toxic output (95% CI)",
    "behavioural change, nearest harmful (log-odds, 95% CI)",
    "geometric overlap score (nearest harmful, p)",
    "predicted shift",
    "measured shift",
    "final loss",
)


def correlations(rows: Sequence[dict[str, Any]], x: str, y: str) -> dict[str, dict[str, Any]]:
    """Per guard setting, the correlation of ``x`` with ``y`` over the tasks that have both."""
    out = {}
    for guard in dict.fromkeys(r["guard"] for r in rows):
        pts = [(_num(r, x), _num(r, y)) for r in rows if r["guard"] == guard]
        pts = [(a, b) for a, b in pts if a is not None and b is not None]
        out[guard] = correlation([a for a, _ in pts], [b for _, b in pts])
    return out


def _num(row: dict[str, Any], key: str) -> float | None:
    """The number at a dotted ``key`` of ``row``; None when a part is missing (a row without
    that measure, e.g. a bench made before it existed)."""
    v: Any = row
    for part in key.split("."):
        if not isinstance(v, dict) or v.get(part) is None:
            return None
        v = v[part]
    return float(v)


def _ci(d: dict[str, Any] | None, digits: int = 1) -> str:
    """A serialised CI (any bench.json version) as ``+v [+low, +high]``; – when absent."""
    if not d:
        return "–"
    ci = CI.from_dict(d)
    return f"{ci.value:+.{digits}f} [{ci.low:+.{digits}f}, {ci.high:+.{digits}f}]"


def cells(row: dict[str, Any]) -> list[str]:
    ov = row["overlap"]
    return [
        row["model"],
        row["task"],
        row["guard"],
        _ci(row["toxic_increase_pp"]),
        _behaviour_cell(row),
        f"{ov['score']:.3f} ({ov['harmful']}, p={ov['p_value']:.3f})",
        f"{row['predicted_shift']:+.3f}",
        f"{row['measured_shift']:+.3f}",
        f"{row['final_loss']:.3f}",
    ]


def _behaviour_cell(row: dict[str, Any]) -> str:
    change = row.get("behaviour_change")
    if not change:
        return "–"
    return f"{_ci(change, 3)} ({row['behaviour_row'].removeprefix('logodds:concept:')})"


def behaviour_lines(result: dict[str, Any]) -> list[str]:
    """The correlation lines of the behavioural columns (none for a bench made before them)."""
    return [
        line
        for what, corr in result.get("behaviour_correlations", {}).items()
        for line in correlation_lines(corr, what)
    ]


def _fmt(v: float, sign: str = "+") -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:{sign}.2f}"


def correlation_lines(corr: dict[str, dict[str, Any]], what: str) -> list[str]:
    return [
        f"{what}, guard {g}: Pearson {_fmt(c['pearson'])} (p={_fmt(c['pearson_p'], '')}), "
        f"Spearman {_fmt(c['spearman'])} (p={_fmt(c['spearman_p'], '')}), n={c['n']}"
        for g, c in corr.items()
    ]


def markdown(result: dict[str, Any]) -> str:
    """The table and its correlations as Markdown, with the command that produced them."""
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    body = "".join("| " + " | ".join(cells(r)) + " |\n" for r in result["rows"])
    prov = result["provenance"]
    lines = [
        f"Command: `{prov['command']}`  ",
        f"geomsafe {prov['geomsafe_version']}, model {prov['model_spec']}, "
        f"{prov['seconds'] / 60:.1f} min on {prov.get('machine', 'this machine')}; "
        f"shifts along `{result['shift_concept']}`.",
        "",
        head + body,
        *[f"- {x}" for x in correlation_lines(result["correlations"], "overlap vs toxic increase")],
        *[
            f"- {x}"
            for x in correlation_lines(result["shift_correlations"], "predicted vs measured shift")
        ],
        *[f"- {x}" for x in behaviour_lines(result)],
    ]
    return "\n".join(lines) + "\n"
