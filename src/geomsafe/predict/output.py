"""Writing a prediction's folder: ``risk.json`` (+ ``filtered.jsonl``, ``attack.jsonl``, the
atlas in ``atlas/`` when predict extracted one), each file atomically; :func:`geomsafe.predict.
predict` writes the folder as one set (:func:`geomsafe.artefacts.prepare_out`)."""

from __future__ import annotations

from pathlib import Path

from geomsafe.artefacts import (
    ATLAS_DIR,
    ATTACK_JSONL,
    FILTERED_JSONL,
    RISK_JSON,
    atomic_write_text,
    write_json,
)
from geomsafe.atlas import FeatureAtlas
from geomsafe.datasets import Dataset
from geomsafe.predict.config import PredictConfig
from geomsafe.predict.examples import attack_lines, riskiest_lines
from geomsafe.predict.result import PredictResult


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
        atomic_write_text(folder / FILTERED_JSONL, "\n".join(kept) + "\n")
        payload["filter"] = {
            "dropped_lines": sorted(drop),
            "kept": len(kept),
            "score": result.example_score,
            "note": "only sampled examples are scored; unscored ones are kept",
        }
    if config.attack_k:
        picks = attack_lines(result.examples, config.attack_k, config.attack_max_toxicity)
        by_line = {r.line: r.raw for r in ds.records}
        atomic_write_text(
            folder / ATTACK_JSONL, "\n".join(by_line[r["line"]] for r in picks) + "\n"
        )
        payload["attack"] = picks
    if atlas is not None:
        atlas.save(folder / ATLAS_DIR)
    write_json(folder / RISK_JSON, payload, "predict")
    return folder
