"""`report`: one self-contained HTML page for an audit, predict, finetune, evaluate or bench
folder (or a folder holding several). Plots are inline SVG; nothing loads from the network."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

import geomsafe
from geomsafe.atlas import atomic_write
from geomsafe.errors import GeomsafeError
from geomsafe.report import plots
from geomsafe.report.recommend import recommend

REPORT = "report.html"
KNOWN = ("audit.json", "risk.json", "eval.json", "run.json", "bench.json", "geometry_log.jsonl")


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


def audit_section(audit: dict) -> dict:
    rows = audit["targets"]
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


def report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Render ``report.html`` for the results found in ``folder``; returns its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeomsafeError(f"not a folder: {folder}")
    found = {name: _find(folder, name) for name in KNOWN}
    if not any(v is not None for v in found.values()):
        raise GeomsafeError(f"no geomsafe results in {folder} (looked for {', '.join(KNOWN)})")
    audit, risk, evaluation = found["audit.json"], found["risk.json"], found["eval.json"]
    run, bench, log = found["run.json"], found["bench.json"], found["geometry_log.jsonl"]
    env = Environment(
        loader=PackageLoader("geomsafe.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    env.filters["f3"] = lambda v: "–" if v is None else f"{v:.3f}"
    page = env.get_template("report.html.j2").render(
        folder=str(folder),
        version=geomsafe.__version__,
        audit=audit_section(audit) if audit else None,
        audit_raw=audit,
        risk=risk_section(risk) if risk else None,
        evaluation=evaluation,
        evaluation_json=html.escape(json.dumps(evaluation, indent=1)) if evaluation else None,
        run=run,
        log=log_section(log) if log else None,
        bench=bench,
        recommendations=recommend(audit, risk, evaluation, run),
        provenance=next(
            (
                d.get("provenance")
                for d in (audit, risk, evaluation, run, bench)
                if isinstance(d, dict) and d.get("provenance")
            ),
            None,
        ),
    )
    target = Path(out) if out else folder / REPORT
    atomic_write(target, lambda p: Path(p).write_text(page, encoding="utf-8"))
    return target
