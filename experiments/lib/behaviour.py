"""The behaviour runs' one recipe (``experiments/behaviour_runs.py``), shared with
``predict_validation.py``: the fixed unguarded LoRA recipe, the likelihood-only evaluation of
the log-odds rows, the cached base-model evaluation, and the per-row and per-pair changes a run
writes to its ``behaviour.json``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geomsafe.evaluate import EvalConfig, evaluate
from geomsafe.evaluate.plan import make_plan
from geomsafe.models import LoadedModel
from geomsafe.train import TrainConfig

BASE_DIR = "_base"


def recipe(steps: int, lr: float, rank: int, batch: int, seed: int) -> TrainConfig:
    """The one fixed fine-tuning recipe of every run (unguarded LoRA)."""
    return TrainConfig(
        max_steps=steps,
        batch_size=batch,
        learning_rate=lr,
        lora_r=rank,
        max_length=256,
        truncate=True,
        seed=seed,
        save_steps=10_000,
    )


def eval_config(rows: Sequence[str], pairs: int | None, seed: int, data_root: str | None):
    """Likelihood-only evaluation of the log-odds ``rows`` (style controls join them)."""
    return EvalConfig(
        n_prompts=0,
        n_xstest=0,
        n_probe=0,
        em_probes=False,
        logodds=tuple(rows),
        logodds_pairs=pairs,
        seed=seed,
        data_root=data_root,
    )


def base_eval(lm: LoadedModel, cfg: EvalConfig, out: Path, progress: bool) -> Path:
    """The cached base-model ``eval.json`` for ``cfg`` (computed when missing)."""
    plan = make_plan(cfg)
    conf = {k: v for k, v in cfg.to_dict().items() if k != "data_root"}
    key_src = json.dumps([lm.provenance(), conf, plan.hashes], sort_keys=True, default=str)
    folder = out / BASE_DIR / hashlib.sha256(key_src.encode()).hexdigest()[:16]
    if not (folder / "eval.json").is_file():
        t0 = time.process_time()
        evaluate(lm, out=folder, config=cfg, progress=progress)
        print(f"base model evaluated ({time.process_time() - t0:.0f} CPU-s) -> {folder}")
    return folder / "eval.json"


def row_payload(result) -> dict[str, dict[str, Any]]:
    """Per changed row: change, 95% CI, before, after, pairs, the concept it speaks for and
    each pair's change (``pair_changes``, log-odds rows; the level CIs of predict validation)."""
    rows, pairs = {}, pair_changes(result)
    for name, c in result.changes.items():
        m = result.model.metrics.get(name)
        rows[name] = {
            "change": c.delta.value,
            "ci_low": c.delta.low,
            "ci_high": c.delta.high,
            "excludes_zero": bool(c.delta.low > 0 or c.delta.high < 0),
            "before": c.before.value,
            "after": c.after.value,
            "n_paired": c.n_paired,
            "label": c.label,
            "concept": m.concept if m is not None else None,
            "pair_changes": pairs.get(name),
        }
    return rows


def pair_changes(result) -> dict[str, dict[str, float]]:
    """Per log-odds row: each pair's change (after - before, nats/token) by pair id."""
    out: dict[str, dict[str, float]] = {}
    if result.before is None:
        return out
    for name, m in result.model.metrics.items():
        b = result.before.metrics.get(name)
        if m.kind != "logodds" or b is None:
            continue
        out[name] = {
            u: float(np.mean(v) - np.mean(b.units[u])) for u, v in m.units.items() if u in b.units
        }
    return out
