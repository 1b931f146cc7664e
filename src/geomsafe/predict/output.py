"""Writing a prediction's folder: ``risk.json`` (+ ``filtered.jsonl``, ``attack.jsonl``, the
atlas when predict extracted one), each file atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geomsafe.atlas import FeatureAtlas, atomic_write
from geomsafe.datasets import Dataset
from geomsafe.predict.config import PredictConfig
from geomsafe.predict.examples import attack_lines, riskiest_lines
from geomsafe.predict.result import PredictResult

RISK_JSON = "risk.json"
FORMAT = "geomsafe.predict/1"


def write_json(path: Path, payload: dict[str, Any], fmt: str) -> Path:
    """``payload`` with ``"format": fmt`` first, written atomically. (Stand-in for the shared
    ``artefacts.write_json``; replace this body when that lands.)"""
    text = json.dumps({"format": fmt, **payload}, indent=1)
    atomic_write(path, lambda p: Path(p).write_text(text))
    return path


def write_predict(
    out: str | Path,
    result: PredictResult,
    ds: Dataset,
    atlas: FeatureAtlas | None,
    config: PredictConfig,
) -> Path:
    """Write the folder (module docstring); ``atlas`` is saved when given (predict passes the
    atlas it extracted itself)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    if config.filter_k:
        drop = riskiest_lines(result.examples, config.filter_k)
        kept = [r.raw for r in ds.records if r.line not in drop]
        atomic_write(
            folder / "filtered.jsonl", lambda p: Path(p).write_text("\n".join(kept) + "\n")
        )
        payload["filter"] = {
            "dropped_lines": sorted(drop),
            "kept": len(kept),
            "score": result.example_score,
            "note": "only sampled examples are scored; unscored ones are kept",
        }
    if config.attack_k:
        picks = attack_lines(result.examples, config.attack_k, config.attack_max_toxicity)
        by_line = {r.line: r.raw for r in ds.records}
        atomic_write(
            folder / "attack.jsonl",
            lambda p: Path(p).write_text("\n".join(by_line[r["line"]] for r in picks) + "\n"),
        )
        payload["attack"] = picks
    if atlas is not None:
        atlas.save(folder)
    write_json(folder / RISK_JSON, payload, FORMAT)
    return folder
