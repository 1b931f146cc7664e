"""Run the guard Pareto grid on a model: the base model's measures once, then one cell at a
time (skipping finished ones), then the summary.

Per cell (:mod:`.grid`): LoRA fine-tuning for ``steps`` optimiser steps on the data set's
training part (:func:`geomsafe.train.steps.run_steps`: a private copy of the model, same LoRA
init and batches for every cell), with the cell's guard at its strength; then, on the tuned
model, the per-pair log-odds of every behavioural row (:func:`geomsafe.evaluate.logodds.
pair_logodds`), the projections of the evaluation prompts (:func:`geomsafe.projection.
prompt_projection`) and the held-out task loss (:func:`geomsafe.train.steps.heldout_loss`). A
guarded cell also times guarded and unguarded training steps side by side (``time_rounds`` rounds of
one ``time_steps``-step call each, order alternating, first step of each call dropped):
the cell keeps every step time (``time.ratio`` = median guarded / median unguarded step; the
summary's ``time_ratio`` is the paired ratio of sums, :mod:`.summary`). A cell whose
strength sets ``source="pilot"`` (``ablate@pilot``) first runs the pilot of
:func:`geomsafe.train.pilot.pilot_directions` on its training part and guards the kept
principal shifts (:func:`geomsafe.train.pilot.pilot_guard_config`; none kept stops the grid
with a one-line error); the cell keeps the pilot's components (``pilot``) and its one-off cost
(``time.pilot_s``, and ``time.pilot_share`` = pilot seconds / the cell's training seconds),
which the step-time ratio leaves out. The behaviour and activation measures stay on the
concept directions. The base model's
log-odds and projections are the same for every cell: computed once, kept in ``base.json``.

Files in ``out``: ``base.json``, ``cells/*.json`` (one per cell), ``pareto.json`` (summary,
:mod:`.summary`; ``geomsafe report`` shows it) and ``pareto.md``.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomsafe.adapters import view
from geomsafe.artefacts import PARETO_JSON, atomic_write_text, write_json
from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.logodds import PairSet, pair_logodds
from geomsafe.guard import Guard, GuardConfig, build_guards
from geomsafe.models import LoadedModel
from geomsafe.projection import prompt_projection
from geomsafe.stats import harm_groups
from geomsafe.train.config import TrainConfig
from geomsafe.train.data import TrainData, build
from geomsafe.train.lora import peft_layer_template
from geomsafe.train.pilot import pilot_directions, pilot_guard_config
from geomsafe.train.steps import heldout_loss, run_steps, train_steps
from lib.pareto.data import TrainSet
from lib.pareto.frontier import Goal
from lib.pareto.grid import Cell, CellStore, cells, fingerprint, guard_config
from lib.pareto.summary import HARM_RULES, markdown, summarise

PARETO_MD = "pareto.md"
BASE_JSON = "base.json"


@dataclass
class ParetoConfig:
    """The recipe of every cell (sizes are the caller's: see ``experiments/guard_pareto.py``)."""

    steps: int = 30  # optimiser steps per fine-tune
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 8
    max_length: int = 256
    seed: int = 0
    time_steps: int = 6  # steps per timing call (the first is dropped)
    time_rounds: int = 2  # timing rounds (each: one guarded and one unguarded call)
    n_boot: int = 1000
    rule_rows: list[str] = field(default_factory=lambda: ["advice"])  # "all": every row
    harm_rule: str = "worst"  # how several rule measures make one harm figure (summary.py)
    logodds_batch: int = 16
    goal: Goal = field(default_factory=Goal)

    def validate(self) -> ParetoConfig:
        if self.steps < 1 or self.time_steps < 2 or self.time_rounds < 1:
            raise GeomsafeError("need steps >= 1, time_steps >= 2 and time_rounds >= 1")
        if self.harm_rule not in HARM_RULES:
            raise GeomsafeError(f"harm rule must be one of {', '.join(HARM_RULES)}")
        return self

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            lora_r=self.lora_r,
            lora_alpha=2 * self.lora_r,
            learning_rate=self.learning_rate,
            max_steps=self.steps,
            batch_size=self.batch_size,
            max_length=self.max_length,
            truncate=True,
            seed=self.seed,
            save_steps=10**6,
            logging_steps=10**6,
        ).validate()

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["goal"] = self.goal.to_dict()
        return d


def measure(
    lm: LoadedModel,
    rows: Sequence[PairSet],
    prompts: Sequence[str],
    atlas: FeatureAtlas,
    names: Sequence[str],
    batch_size: int = 16,
) -> dict[str, Any]:
    """Per-pair log-odds of every row and per-prompt projections of every concept."""
    logodds = {ps.name: pair_logodds(lm, ps, batch_size=batch_size, progress=False) for ps in rows}
    proj = prompt_projection(lm, list(prompts), atlas, list(names))
    return {"logodds": logodds, "projection": {n: proj[n].tolist() for n in names}}


def _step_ratio(
    lm: LoadedModel, features: TrainData, make: Callable[[], list[Guard]], cfg: ParetoConfig
) -> dict[str, Any]:
    tc = cfg.train_config()
    guarded: list[float] = []
    plain: list[float] = []
    for r in range(cfg.time_rounds):
        for with_guard in (True, False) if r % 2 == 0 else (False, True):
            t = train_steps(lm, features, make() if with_guard else None, tc, cfg.time_steps)
            (guarded if with_guard else plain).extend(t[1:])
    return {
        "ratio": statistics.median(guarded) / statistics.median(plain),
        "guarded_s": guarded,
        "unguarded_s": plain,
    }


def run_cell(
    lm: LoadedModel,
    cell: Cell,
    data: TrainSet,
    rows: Sequence[PairSet],
    prompts: Sequence[str],
    atlas: FeatureAtlas,
    cfg: ParetoConfig,
    base_guard: GuardConfig,
) -> dict[str, Any]:
    """Train and measure one cell (module docstring); the payload of its file."""
    t0, c0 = time.perf_counter(), time.process_time()
    tc = cfg.train_config()
    features = build(lm.tokenizer, data.train, max_length=cfg.max_length, truncate=True)
    gcfg = None
    make: Callable[[], list[Guard]] = list
    pilot: dict[str, Any] | None = None  # the pilot's components (ablate@pilot)
    pilot_s = 0.0
    if cell.guarded:
        gcfg = guard_config(cell.guard, cell.strength, base_guard, atlas.layers)
        guarded_atlas = atlas
        if gcfg.source == "pilot":
            t_pilot = time.perf_counter()
            found = pilot_directions(lm, features, atlas, gcfg, tc)
            gcfg = pilot_guard_config(gcfg, found)  # none kept: a one-line error, no cell
            assert found.atlas is not None
            guarded_atlas = found.atlas
            pilot = found.to_dict()
            pilot_s = time.perf_counter() - t_pilot
        template = peft_layer_template(lm)

        def make() -> list[Guard]:
            # the tokenizer and seed prepare the guards that need them (kl's reference set)
            return build_guards(
                [cell.guard], guarded_atlas, gcfg, template, tokenizer=lm.tokenizer, seed=tc.seed
            )

    peft_model, geometry = run_steps(lm, features.features, tc, cfg.steps, make())
    inner = peft_model.base_model.model
    inner.eval()
    tuned = view(lm, inner)
    names = base_guard.concepts or atlas.harmful
    payload: dict[str, Any] = {
        "harmful": data.harmful,
        "guard_config": gcfg.to_dict() if gcfg else None,
        **measure(tuned, rows, prompts, atlas, names, cfg.logodds_batch),
        "heldout_loss": heldout_loss(tuned, data.heldout),
        "n_train": len(data.train),
        "n_heldout": len(data.heldout.features),
    }
    steps = list(geometry.step_times)
    train_step = statistics.median(steps[1:] or steps)
    del peft_model, inner, tuned
    if pilot is not None:
        payload["pilot"] = pilot
    if cell.guarded:
        payload["time"] = {**_step_ratio(lm, features, make, cfg), "train_step_s": train_step}
        if pilot is not None:  # a one-off cost the step-time ratio leaves out
            payload["time"]["pilot_s"] = pilot_s
            payload["time"]["pilot_share"] = pilot_s / sum(steps)
    else:
        payload["time"] = {"ratio": 1.0, "train_step_s": train_step}
        payload["base_heldout_loss"] = heldout_loss(lm, data.heldout)
    payload["seconds"] = time.perf_counter() - t0
    payload["cpu_seconds"] = time.process_time() - c0  # all threads of this process
    return payload


def _settings(
    lm: LoadedModel,
    rows: Sequence[PairSet],
    prompts: Sequence[str],
    atlas: FeatureAtlas,
    names: Sequence[str],
    cfg: ParetoConfig,
    base_guard: GuardConfig,
    controls: dict[str, str],
) -> dict[str, Any]:
    """What the base measures and every cell depend on (before the data set)."""
    recipe = cfg.to_dict()
    for key in ("time_steps", "time_rounds", "n_boot", "rule_rows", "harm_rule", "goal"):
        recipe.pop(key)  # these change the summary or the timing, not the trained numbers
    out = {
        "model": [lm.spec, lm.source],
        "recipe": recipe,
        "guard": base_guard.to_dict(),
        "rows": {ps.name: ps.sha256() for ps in rows},
        "prompts": list(prompts),
        "atlas": atlas.sha256(names),
    }
    if controls:  # absent when empty: folders made before controls existed stay valid
        out["controls"] = dict(sorted(controls.items()))
    return out


def run_grid(
    lm: LoadedModel,
    atlas: FeatureAtlas,
    datasets: Sequence[TrainSet],
    rows: Sequence[PairSet],
    prompts: Sequence[str],
    out: str | Path,
    *,
    guards: Sequence[str],
    strengths: Sequence[str],
    config: ParetoConfig | None = None,
    guard_config: GuardConfig | None = None,
    controls: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    extra: dict[str, Any] | None = None,
    run_missing: bool = True,
) -> dict[str, Any]:
    """Every cell of ``datasets x ({none} + guards x strengths)`` not yet in ``out``, then the
    summary (written to ``pareto.json`` and ``pareto.md``; returned). ``controls`` maps a row to
    its style-control row (both in ``rows``; :func:`geomsafe.evaluate.pairsets.
    load_with_controls`): that row's harm measure is its change minus the control's
    (:func:`geomsafe.stats.harm_groups`). With ``run_missing=False`` nothing is run:
    the summary covers the finished cells of the grid (a partial grid; the base measures must
    exist)."""
    cfg = (config or ParetoConfig()).validate()
    base_guard = (guard_config or GuardConfig()).validate()
    names = base_guard.concepts or atlas.harmful
    if not names:
        raise GeomsafeError("the atlas has no harmful concepts to guard")
    if not prompts:
        raise GeomsafeError("no evaluation prompts for the activation measure")
    base_guard = dataclasses.replace(base_guard, concepts=list(names))
    grid = cells([d.name for d in datasets], guards, strengths)
    by_name = {d.name: d for d in datasets}
    out = Path(out)
    controls = dict(controls or {})
    harm_groups([ps.name for ps in rows], controls)  # each row and control is measured
    common = _settings(lm, rows, prompts, atlas, names, cfg, base_guard, controls)
    base_fp = fingerprint(common)
    base_path = out / BASE_JSON
    base = json.loads(base_path.read_text()) if base_path.is_file() else None
    if base is not None and base.get("fingerprint") != base_fp:
        raise GeomsafeError(f"{base_path} was made with other settings; use another --out")
    if base is None and not run_missing:
        raise GeomsafeError(f"{base_path} is missing: nothing has run in {out} with these settings")
    if base is None:
        t0, c0 = time.perf_counter(), time.process_time()
        base = {
            "fingerprint": base_fp,
            "ids": {ps.name: [p.id for p in ps.pairs] for ps in rows},
            **({"controls": controls} if controls else {}),
            **measure(lm, rows, prompts, atlas, names, cfg.logodds_batch),
        }
        base["seconds"] = time.perf_counter() - t0
        base["cpu_seconds"] = time.process_time() - c0
        base_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(base_path, json.dumps(base, indent=1))
        log(f"base model measured ({base['seconds']:.0f} s)")
    store = CellStore(out)
    done = []
    for cell in grid:
        data = by_name[cell.dataset]
        fp = fingerprint(
            {
                **common,
                "data": [data.name, data.train.records_sha256, data.heldout.dataset.records_sha256],
            }
        )
        found = store.load(cell, fp)
        if found is None and not run_missing:
            log(f"{cell.key}: not run, left out of the summary")
            continue
        if found is None:
            t0 = time.perf_counter()
            store.save(cell, fp, run_cell(lm, cell, data, rows, prompts, atlas, cfg, base_guard))
            found = store.load(cell, fp)
            log(f"{cell.key}: done ({time.perf_counter() - t0:.0f} s)")
        else:
            log(f"{cell.key}: already done, skipped")
        done.append(found)
    summary = summarise(
        base, done, cfg.goal, cfg.rule_rows, cfg.n_boot, cfg.seed, harm_rule=cfg.harm_rule
    )
    summary = {
        **summary,
        "config": cfg.to_dict(),
        "guard_config": base_guard.to_dict(),
        "concepts": list(names),
        "datasets": {
            d.name: {
                "harmful": d.harmful,
                "n_train": len(d.train),
                "n_heldout": len(d.heldout.features),
                "note": d.note,
            }
            for d in datasets
        },
        **(extra or {}),
    }
    write_json(out / PARETO_JSON, summary, "pareto")
    md = markdown(summary)
    atomic_write_text(out / PARETO_MD, md)
    return summary


__all__ = [
    "BASE_JSON",
    "PARETO_JSON",
    "PARETO_MD",
    "ParetoConfig",
    "measure",
    "run_cell",
    "run_grid",
]
