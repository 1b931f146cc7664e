"""``toy()``: every toy experiment, its numbers as ``toy.json`` and its figures (PNG + SVG)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from tqdm.auto import tqdm

from geomsafe.artefacts import TOY_JSON, prepare_out, stamp, write_json
from geomsafe.errors import GeomsafeError
from geomsafe.toy import plots
from geomsafe.toy.entangle import EntangleResult, default_entangle, run_entanglement
from geomsafe.toy.metrics import REPRESENTED, gram
from geomsafe.toy.sweep import (
    PHASES,
    PhaseResult,
    SweepResult,
    default_dimensionality,
    default_phase,
    default_polygons,
    default_wtw,
    run_phase_diagram,
    run_sweep,
)

T = TypeVar("T")
JSON_NAME = TOY_JSON
FIGURES = ("polygons", "wtw", "dimensionality", "phase_diagram", "collateral")


@dataclass
class ToyResult:
    """Everything ``toy()`` computed; ``numbers()`` is ``toy.json`` without its timings."""

    out_dir: Path
    seed: int
    quick: bool
    polygons: SweepResult
    wtw: SweepResult
    dimensionality: SweepResult
    phase: PhaseResult
    entangle: EntangleResult
    files: list[Path] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)

    def numbers(self) -> dict[str, Any]:
        """The JSON payload minus ``timing_s``: identical for the same seed and mode."""
        return stamp(
            _clean(
                {
                    "seed": self.seed,
                    "quick": self.quick,
                    "represented_threshold": REPRESENTED,
                    "polygons": _sweep_numbers(self.polygons, weights=True),
                    "wtw": _sweep_numbers(self.wtw, weights=False, with_gram=True),
                    "dimensionality": _sweep_numbers(self.dimensionality, weights=False),
                    "phase_diagram": _phase_numbers(self.phase),
                    "entanglement": _entangle_numbers(self.entangle),
                    "files": sorted(p.name for p in self.files),
                }
            ),
            "toy",
        )

    def to_json(self) -> dict[str, Any]:
        payload = self.numbers()
        payload["timing_s"] = _clean(self.timing)
        return payload

    def headline(self) -> dict[str, float]:
        """The key numbers (for the CLI table and the benchmark)."""
        s = self.entangle.summary()
        rep = self.polygons.norms > REPRESENTED
        last = len(self.polygons.config.sparsities) - 1
        return {
            "polygons_dense_represented": float(rep[0].sum()),
            "polygons_sparsest_represented": float(rep[last].sum()),
            "polygons_sparsest_mean_D": float(self.polygons.dimensionality[last][rep[last]].mean()),
            "dims_per_feature_dense": float(self.dimensionality.dims_per_feature[0]),
            "dims_per_feature_sparsest": float(self.dimensionality.dims_per_feature[-1]),
            "phase_superposition_share": float((self.phase.phase == 2).float().mean()),
            "collateral_pearson": s["free_pearson_probe"],
            "collateral_spearman": s["free_spearman_probe"],
            "output_collateral_spearman": s["free_spearman_output"],
            "protected_collateral_free": s["free_probe_collateral_protected"],
            "protected_collateral_guarded": s["guarded_probe_collateral_protected"],
            "protected_output_collateral_free": s["free_output_collateral_protected"],
            "protected_output_collateral_guarded": s["guarded_output_collateral_protected"],
            "unprotected_output_collateral_free": s["free_output_collateral_unprotected"],
            "unprotected_output_collateral_guarded": s["guarded_output_collateral_unprotected"],
            "target_gain_free": s["free_target_gain"],
            "target_gain_guarded": s["guarded_target_gain"],
            "target_gain_kept": s["target_gain_kept"],
            "guard_overhead_ratio": self.timing.get("guard_overhead_ratio", float("nan")),
            "total_s": self.timing.get("total_s", float("nan")),
        }


def toy(
    out: str | Path,
    *,
    seed: int = 0,
    quick: bool = False,
    progress: bool = False,
    overwrite: bool = False,
) -> ToyResult:
    """Run the toy experiments and write ``toy.json`` plus ``FIGURES`` (``.png`` and ``.svg``)
    into ``out`` (created if missing; a non-empty one only with ``overwrite``). ``quick``:
    smaller grids and fewer steps (seconds, for tests); ``progress``: tqdm bars on stderr.
    Deterministic: the same ``seed`` and ``quick`` give the same numbers (timings aside)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise GeomsafeError(f"seed must be a non-negative integer, got {seed!r}")
    folder = prepare_out(out, "toy", overwrite=overwrite)
    with folder.writing() as work:
        result = _run(work, seed, quick, progress)
    result.out_dir = folder.out
    result.files = [folder.out / p.name for p in result.files]
    return result


def _run(out: Path, seed: int, quick: bool, progress: bool) -> ToyResult:
    timing: dict[str, float] = {}
    start = time.perf_counter()

    def stage(name: str, total: int, fn: Callable[[Callable[[int], object]], T]) -> T:
        t0 = time.perf_counter()
        with tqdm(total=total, desc=name, unit="step", disable=not progress, leave=False) as bar:
            value = fn(bar.update)
        timing[f"{name}_s"] = time.perf_counter() - t0
        return value

    cfg = default_polygons(quick, seed)
    poly = stage("polygons", cfg.steps, lambda update: run_sweep(cfg, update))
    cfg_w = default_wtw(quick, seed)
    wtw = stage("wtw", cfg_w.steps, lambda update: run_sweep(cfg_w, update))
    cfg_d = default_dimensionality(quick, seed)
    dims = stage("dimensionality", cfg_d.steps, lambda update: run_sweep(cfg_d, update))
    cfg_p = default_phase(quick, seed)
    phase = stage("phase_diagram", cfg_p.steps, lambda update: run_phase_diagram(cfg_p, update))
    cfg_e = default_entangle(quick, seed)
    total_e = cfg_e.base_steps + 2 * cfg_e.finetune_steps
    entangle = stage("entanglement", total_e, lambda update: run_entanglement(cfg_e, update))
    timing.update(entangle.timing())

    t0 = time.perf_counter()
    files = [
        *plots.polygons(poly, out),
        *plots.wtw(wtw, out),
        *plots.dimensionality_plot(dims, out),
        *plots.phase_diagram(phase, out),
        *plots.collateral(entangle, out),
    ]
    timing["plots_s"] = time.perf_counter() - t0
    files.append(out / JSON_NAME)
    result = ToyResult(out, seed, quick, poly, wtw, dims, phase, entangle, files, timing)
    timing["total_s"] = time.perf_counter() - start
    write_json(out / JSON_NAME, result.to_json(), "toy")
    return result


def _sweep_numbers(r: SweepResult, weights: bool, with_gram: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "config": asdict(r.config),
        "sparsity": list(r.config.sparsities),
        "norms": r.norms.tolist(),
        "feature_dimensionality": r.dimensionality.tolist(),
        "dims_per_feature": r.dims_per_feature.tolist(),
        "n_represented": r.n_represented.tolist(),
        "loss": r.loss.tolist(),
        "b": r.b.tolist(),
    }
    if weights:
        out["W"] = r.W.tolist()
    if with_gram:
        out["WtW"] = gram(r.W).tolist()
    return out


def _phase_numbers(r: PhaseResult) -> dict[str, Any]:
    return {
        "config": asdict(r.config),
        "phases": list(PHASES),
        "relative_importance": r.relative_importance.tolist(),
        "density": r.density.tolist(),
        "phase": r.phase.tolist(),
        "w": r.W.tolist(),
    }


def _entangle_numbers(r: EntangleResult) -> dict[str, Any]:
    summary = r.summary()
    return {
        "config": asdict(r.config),
        "summary": summary,
        "targets": [list(t) for t in r.targets],
        "pairs": {
            "copy": [p[0] for p in r.pairs],
            "target": [p[1] for p in r.pairs],
            "other": [p[2] for p in r.pairs],
            "cosine": r.cosine,
            "protected": r.protected,
            "free_probe": r.free.probe_collateral,
            "guarded_probe": r.guarded.probe_collateral,
            "free_output": r.free.output_collateral,
            "guarded_output": r.guarded.output_collateral,
        },
        "target_gain": {"free": r.free.target_gain, "guarded": r.guarded.target_gain},
        "loss_history": {"free": r.free.history, "guarded": r.guarded.history},
    }


def _clean(value: Any) -> Any:
    """JSON-safe and stable: floats rounded to 6 decimals, NaN/inf -> null, tuples -> lists."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return _clean(value.tolist())
    raise TypeError(f"cannot serialise {type(value).__name__}")
