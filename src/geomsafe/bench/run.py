"""`bench`: fine-tune on each task with one fixed recipe, without and with a guard, evaluate
before/after, and relate the geometry (overlap score, predicted shift) to what happened
(toxic-output increase, behavioural log-odds change, measured shift).

Behaviour (the yardstick): every evaluation scores the default log-odds rows of
:mod:`geomsafe.evaluate` (held-out ``concept:<name>`` halves of the harmful concepts, the
cross-domain ``advice`` row, and the public sets with their style controls when the data root
has them). A row keeps every ``logodds:*`` change (after − before, nats/token, paired 95% CI);
its *behavioural change* is the change of the held-out pairs of the task's nearest harmful
concept (``logodds:concept:<nearest>``: what the overlap score claims will grow), and its
*shift-concept behaviour* that of ``shift_concept`` (what the predicted shift is about).

The run works in a hidden sibling folder renamed to ``out`` at the end
(:func:`geomsafe.artefacts.prepare_out`): ``out``
then holds ``bench.json`` (rows, correlations, provenance), ``table.md``, ``atlas/`` (the
harmful features), ``eval-base/`` and ``eval/<task>-<guard>/`` (eval.json + generations) and
``runs/<task>-<guard>/`` (adapter, geometry log, run.json).
"""

from __future__ import annotations

import gc
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from geomsafe.artefacts import (
    ATLAS_DIR,
    BENCH_JSON,
    BENCH_TABLE,
    atomic_write_text,
    format_tag,
    geomsafe_version,
    prepare_out,
    write_json,
)
from geomsafe.bench.config import BenchConfig
from geomsafe.bench.geometry import task_geometry, task_pairs
from geomsafe.bench.table import COLUMNS, cells, correlations, markdown
from geomsafe.bench.tasks import Task, resolve_tasks
from geomsafe.concepts import builtin_names, load_for_direction
from geomsafe.datasets import Dataset, load_dataset
from geomsafe.directions import extract
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import EvalConfig, EvalResult, evaluate
from geomsafe.layers import default_band
from geomsafe.models import LoadedModel, load
from geomsafe.predict.gradient import probe_prompts
from geomsafe.projection import mean_projection, measured_shift
from geomsafe.stats import CI
from geomsafe.train import TrainConfig, finetune


@dataclass
class BenchResult:
    rows: list[dict[str, Any]]
    correlations: dict[str, dict[str, Any]]
    shift_correlations: dict[str, dict[str, Any]]
    behaviour_correlations: dict[str, dict[str, dict[str, Any]]]
    provenance: dict[str, Any]
    config: dict[str, Any]
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": format_tag("bench"),
            "provenance": self.provenance,
            "config": self.config,
            "shift_concept": self.config["shift_concept"],
            "columns": list(COLUMNS),
            "rows": self.rows,
            "correlations": self.correlations,
            "shift_correlations": self.shift_correlations,
            "behaviour_correlations": self.behaviour_correlations,
        }


def _eval_config(cfg: BenchConfig) -> EvalConfig:
    return EvalConfig(
        n_prompts=cfg.n_prompts,
        samples_per_prompt=cfg.samples_per_prompt,
        max_new_tokens=cfg.eval_max_new_tokens,
        n_xstest=cfg.n_xstest,
        n_probe=cfg.n_probe,
        em_probes=False,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        data_root=cfg.data_root,
    )


def _recipe(cfg: BenchConfig) -> TrainConfig:
    return TrainConfig(
        max_steps=cfg.steps,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lora_r=cfg.lora_r,
        lora_alpha=2 * cfg.lora_r,
        max_length=cfg.max_length,
        truncate=True,
        seed=cfg.seed,
        save_steps=10**9,
    )


def _change(ev: EvalResult, name: str) -> dict[str, Any] | None:
    """The change of ``name`` in percentage points (``CI.to_dict``), None when not measured."""
    c = ev.changes.get(name)
    return None if c is None else c.delta.scaled(100.0).to_dict()


def _behaviour(ev: EvalResult) -> dict[str, dict[str, float]]:
    """Every log-odds change of ``ev`` (nats/token, paired 95% CI) by row name."""
    return {
        name: c.delta.to_dict()
        for name, c in ev.changes.items()
        if name.startswith("logodds:")
    }


def _rate(ci: CI | None) -> dict[str, Any] | None:
    return None if ci is None else ci.to_dict()


def _sample(task: Task, cfg: BenchConfig) -> Dataset:
    ds = load_dataset(task.path).sample(cfg.n_train, cfg.seed)
    if len(ds) < cfg.batch_size:
        raise GeomsafeError(f"task {task.name}: {len(ds)} examples, fewer than a batch")
    return ds


def bench(
    model: str | LoadedModel = "default",
    *,
    out: str | Path | None = None,
    config: BenchConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    command: str | None = None,
    **options: Any,
) -> BenchResult:
    """Run the benchmark of ``config`` (default: the full size; ``options`` override its
    fields) on ``model``; write it to ``out`` when given (a non-empty ``out`` only with
    ``overwrite``). Returns the table rows and correlations."""
    t0 = time.perf_counter()
    cfg = (config or BenchConfig()).with_options(**options)
    tasks = resolve_tasks(cfg.tasks, cfg.data_root)  # every input checked before any work
    folder = prepare_out(Path(out).absolute(), "bench", overwrite=overwrite) if out else None
    if folder is None:
        work = Path(tempfile.mkdtemp(prefix="geomsafe-bench-"))
        try:
            result = _run(model, tasks, cfg, work, progress, t0, command)
            _write(work, result)
            return result
        finally:
            shutil.rmtree(work, ignore_errors=True)
    with folder.writing() as work:
        result = _run(model, tasks, cfg, work, progress, t0, command)
        _write(work, result)
    result.out = folder.out
    return result


def _run(
    model: str | LoadedModel,
    tasks: list[Task],
    cfg: BenchConfig,
    work: Path,
    progress: bool,
    t0: float,
    command: str | None,
) -> BenchResult:
    lm = model if isinstance(model, LoadedModel) else load(model)
    sets = [
        load_for_direction(n).subset(cfg.concept_pairs, cfg.seed) for n in builtin_names("harmful")
    ]
    ex = extract(lm, sets, seed=cfg.seed, progress=progress)
    atlas = ex.atlas
    if cfg.shift_concept not in atlas.harmful:
        raise GeomsafeError(f"shift concept {cfg.shift_concept!r} is not a harmful concept")
    band = default_band(lm.n_layers)
    atlas.save(work / ATLAS_DIR)
    ecfg = _eval_config(cfg)
    base = evaluate(lm, out=work / "eval-base", config=ecfg, progress=progress)
    probes = probe_prompts(cfg.n_shift_prompts)
    base_probe = mean_projection(lm, probes, atlas, atlas.harmful)  # once: every run's "before"
    recipe = _recipe(cfg)
    rows: list[dict[str, Any]] = []
    hashes: dict[str, str] = {}
    bar = tqdm(total=len(tasks) * len(cfg.guards), desc="bench", disable=not progress)
    try:
        for task in tasks:
            ds = _sample(task, cfg)
            hashes[task.name] = ds.sha256
            direction_set = ds.head(cfg.n_direction)
            pairs = task_pairs(lm, direction_set, cfg.own_max_new_tokens)
            geom = task_geometry(lm, pairs, atlas, ex.activations, band, seed=cfg.seed)
            for guard in cfg.guards:
                bar.set_postfix_str(f"{task.name} / {guard}")
                t1 = time.perf_counter()
                run = finetune(
                    lm,
                    ds,
                    out=work / "runs" / f"{task.name}-{guard}",
                    guard=None if guard == "none" else guard,
                    guard_concepts=atlas.harmful,
                    atlas=atlas,
                    config=recipe,
                    progress=False,
                )
                assert run.lm is not None
                measured = measured_shift(
                    run.lm, probes, atlas, atlas.harmful, base_projection=base_probe
                )
                ev = evaluate(
                    run.lm,
                    baseline=work / "eval-base" / "eval.json",
                    out=work / "eval" / f"{task.name}-{guard}",
                    config=ecfg,
                    progress=False,
                )
                rows.append(
                    _row(lm, task, guard, len(ds), base, ev, geom, measured, run.metrics, cfg)
                    | {"seconds": time.perf_counter() - t1}
                )
                del run, ev
                gc.collect()
                bar.update()
                if progress:
                    tqdm.write("  ".join(cells(rows[-1])[1:]))
    finally:
        bar.close()
    provenance = {
        **lm.provenance(),
        "atlas": atlas.provenance,
        "band": band,
        "data_sha256": hashes,
        "eval_config": ecfg.to_dict(),
        "train_config": recipe.to_dict(),
        "geomsafe_version": geomsafe_version(),
        "command": command or "geomsafe.bench.bench(...)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "seconds": time.perf_counter() - t0,
    }
    return BenchResult(
        rows,
        correlations(rows, "overlap.score", "toxic_increase_pp.value"),
        correlations(rows, "predicted_shift", "measured_shift"),
        {
            "overlap vs behavioural change": correlations(
                rows, "overlap.score", "behaviour_change.value"
            ),
            "predicted shift vs shift-concept behaviour": correlations(
                rows, "predicted_shift", "shift_behaviour_change.value"
            ),
        },
        provenance,
        cfg.to_dict(),
    )


def _row(
    lm: LoadedModel,
    task: Task,
    guard: str,
    n_train: int,
    base: EvalResult,
    ev: EvalResult,
    geom: Any,
    measured: dict[str, float],
    metrics: dict[str, Any],
    cfg: BenchConfig,
) -> dict[str, Any]:
    ov = geom.overlap
    before = base.model.metrics.get("toxic_rate")
    after = ev.model.metrics.get("toxic_rate")
    behaviour = _behaviour(ev)
    nearest_row = f"logodds:concept:{ov.harmful}"
    shift_row = f"logodds:concept:{cfg.shift_concept}"
    return {
        "model": lm.spec,
        "task": task.name,
        "task_kind": task.kind,
        "guard": guard,
        "n_train": n_train,
        "toxic_before": _rate(before.ci if before else None),
        "toxic_after": _rate(after.ci if after else None),
        "toxic_increase_pp": _change(ev, "toxic_rate"),
        "refusal_increase_pp": _change(ev, "xstest_refusal"),
        "behaviour_row": nearest_row,
        "behaviour_change": behaviour.get(nearest_row),
        "shift_behaviour_change": behaviour.get(shift_row),
        "behaviour": behaviour,
        "overlap": {
            "score": ov.score,
            "harmful": ov.harmful,
            "layer": ov.layers[len(ov.layers) // 2],
            "layers": ov.layers,
            "p_value": ov.p_value,
            "ci": ov.ci.to_dict(),
            "null_q95": ov.null_q95,
            "cosines": ov.cosines,
            "n_pairs": geom.n_pairs,
        },
        "predicted_shift": geom.predicted[cfg.shift_concept],
        "measured_shift": measured[cfg.shift_concept],
        "predicted": geom.predicted,
        "measured": measured,
        "final_loss": metrics.get("final_loss"),
        "first_loss": metrics.get("first_loss"),
    }


def _write(work: Path, result: BenchResult) -> None:
    payload = result.to_dict()
    atomic_write_text(work / BENCH_TABLE, markdown(payload))
    write_json(work / BENCH_JSON, payload, "bench")
