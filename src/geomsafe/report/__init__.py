"""`report`: one self-contained HTML page for an audit, predict, finetune, evaluate or bench
folder (or a folder holding several). Plots are inline SVG; nothing loads from the network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

import geomsafe
from geomsafe.atlas import atomic_write
from geomsafe.errors import GeomsafeError
from geomsafe.report import firewall, pareto
from geomsafe.report.recommend import recommend
from geomsafe.report.sections import (
    audit_section,
    bench_section,
    evaluation_section,
    log_section,
    risk_section,
    run_section,
)

REPORT = "report.html"
KNOWN = ("audit.json", "risk.json", "eval.json", "run.json", "bench.json", "geometry_log.jsonl")
FIREWALL = ("firewall_run.json", "firewall.json")
PARETO = "pareto.json"  # the guard Pareto benchmark (geomsafe.pareto)


def _read(folder: Path, name: str) -> Any:
    path = folder / name
    if not path.is_file():
        return None
    try:
        if name.endswith(".jsonl"):
            return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GeomsafeError(f"{path} is not valid JSON ({exc.msg})") from exc


def _find(folder: Path, name: str) -> Any:
    """``name`` in the folder or, failing that, in one of its direct sub-folders."""
    found = _read(folder, name)
    if found is None:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            found = _read(sub, name)
            if found is not None:
                break
    return found


def report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Render ``report.html`` for the results found in ``folder``; returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeomsafeError(f"not a folder: {folder}")
    # A bench folder holds many evals and runs of its own: the bench section shows them, so
    # sub-folders are searched only when the folder is not a bench.
    nested = _read(folder, "bench.json") is None
    found = {
        name: (_find(folder, name) if nested else _read(folder, name))
        for name in (*KNOWN, *FIREWALL, PARETO)
    }
    if not any(v is not None for v in found.values()):
        raise GeomsafeError(
            f"no geomsafe results in {folder} (looked for {', '.join((*KNOWN, *FIREWALL, PARETO))})"
        )
    audit, risk, evaluation = found["audit.json"], found["risk.json"], found["eval.json"]
    run, bench, log = found["run.json"], found["bench.json"], found["geometry_log.jsonl"]
    env = Environment(
        loader=PackageLoader("geomsafe.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    env.filters["f3"] = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "–"
    page = env.get_template("report.html.j2").render(
        folder=str(folder),
        version=geomsafe.__version__,
        audit=audit_section(audit) if audit else None,
        audit_raw=audit,
        risk=risk_section(risk) if risk else None,
        evaluation=evaluation_section(evaluation) if evaluation else None,
        run=run_section(run) if run else None,
        log=log_section(log) if log else None,
        bench=bench_section(bench) if bench else None,
        firewall_run=firewall.run_section(found["firewall_run.json"])
        if found["firewall_run.json"]
        else None,
        firewall_cal=firewall.calibration_section(found["firewall.json"])
        if found["firewall.json"]
        else None,
        pareto=pareto.section(found[PARETO]) if found[PARETO] else None,
        recommendations=recommend(audit, risk, evaluation, run, bench),
        provenance=next(
            (
                d.get("provenance")
                for d in (audit, risk, evaluation, run, bench, found["firewall_run.json"])
                if isinstance(d, dict) and d.get("provenance")
            ),
            None,
        ),
    )
    target = Path(out) if out else folder / REPORT
    atomic_write(target, lambda p: Path(p).write_text(page, encoding="utf-8"))
    return target
