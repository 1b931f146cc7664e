"""Every metric of one model on an :class:`~geomsafe.evaluate.plan.EvalPlan`.

Metric names (``ModelEval.metrics`` keys and eval.json):

- ``toxic_rate``: fraction of sampled responses with toxicity score > threshold; per prompt
  category as ``toxic_rate[<category>]`` (detail, not printed).
- ``toxicity_score``: mean toxicity score of the sampled responses.
- ``refusal_rate``: fraction of the sampled responses that read as refusals.
- ``response_tokens``: mean length of the sampled responses in tokens (the end-of-turn token
  counted); a model that answers with nothing is neither toxic nor refusing, and shows here.
- ``xstest_refusal``: fraction of greedy responses to XSTest safe prompts that read as
  refusals (over-refusal).
- ``trait:<trait>``: mean trait-matching probability of the persona or EM probes.
- ``projection:<feature>``: mean projection (:mod:`geomsafe.projection`, ``tokens="response"``,
  the rule atlas directions are extracted with) of the sampled responses on a harmful
  feature's direction at its best layer; empty responses are left out.
- ``logodds:<set>``: mean per-pair log-odds (nats/token) of a response-pair set
  (:mod:`.logodds`); the controlled changes ``logodds:<set>-controlled`` are formed from two
  runs' metrics (:func:`geomsafe.evaluate.logodds.controlled_changes`).

Sampled generation (and with it the toxicity, refusal, length and projection rows) is skipped
when the plan has no prompts (``n_prompts=0``): the likelihood rows alone then need no sampling.
Every metric carries the concept it speaks for (:mod:`.concept_map`) where one is known.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from geomsafe.atlas import FeatureAtlas
from geomsafe.evaluate.concept_map import speaks_for
from geomsafe.evaluate.config import EvalConfig
from geomsafe.evaluate.generate import Generations, generate
from geomsafe.evaluate.logodds import pair_logodds
from geomsafe.evaluate.plan import EvalPlan
from geomsafe.evaluate.probes import choice_scores, persona_scores
from geomsafe.evaluate.refusal import is_refusal
from geomsafe.evaluate.result import Metric, ModelEval
from geomsafe.evaluate.toxicity import toxic_flags, toxicity_scores
from geomsafe.formatting import Example
from geomsafe.models import LoadedModel
from geomsafe.projection import concept_layers, project

PROJECTION_TOKENS = "response"  # the token rule of the projection:<feature> metrics


class _Collector:
    """Builds metrics with one bootstrap setting and keeps the ones that have values."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.n_boot, self.seed = cfg.n_boot, cfg.seed
        self.metrics: dict[str, Metric] = {}

    def add(
        self,
        name: str,
        label: str,
        kind: str,
        units: dict[str, list[float]],
        detail: bool = False,
        concept: str | None = None,
    ) -> None:
        concept = concept or speaks_for(name)
        m = Metric.build(
            name,
            label,
            kind,
            units,
            n_boot=self.n_boot,
            seed=self.seed,
            detail=detail,
            concept=concept,
        )
        if m is not None:
            self.metrics[name] = m


def _toxicity(
    out: _Collector, plan: EvalPlan, gens: Generations, cfg: EvalConfig, label: str
) -> list[dict[str, Any]]:
    s = cfg.samples_per_prompt
    flat = toxicity_scores(gens.flat())
    scores = [flat[i * s : (i + 1) * s].tolist() for i in range(len(plan.prompts))]
    flags = [toxic_flags(row, cfg.threshold).tolist() for row in scores]
    refused = [[float(is_refusal(t)) for t in row] for row in gens.texts]
    ids = [p.id for p in plan.prompts]
    out.add("toxic_rate", "toxic-output rate", "rate", dict(zip(ids, flags, strict=True)))
    out.add("toxicity_score", "mean toxicity score", "score", dict(zip(ids, scores, strict=True)))
    out.add(
        "refusal_rate", "refusal rate (eval prompts)", "rate", dict(zip(ids, refused, strict=True))
    )
    lengths = {i: [float(n) for n in row] for i, row in zip(ids, gens.n_tokens, strict=True)}
    out.add("response_tokens", "response length (tokens)", "length", lengths)
    categories = sorted({p.category for p in plan.prompts})
    for cat in categories if len(categories) > 1 else []:
        units = {p.id: f for p, f in zip(plan.prompts, flags, strict=True) if p.category == cat}
        out.add(f"toxic_rate[{cat}]", f"toxic-output rate ({cat})", "rate", units, detail=True)
    return [
        {
            "run": label,
            "set": "prompts",
            "id": p.id,
            "category": p.category,
            "prompt": p.prompt,
            "responses": texts,
            "n_tokens": n_tok,
            "toxicity": sc,
            "toxic": fl,
            "refusal": rf,
        }
        for p, texts, n_tok, sc, fl, rf in zip(
            plan.prompts, gens.texts, gens.n_tokens, scores, flags, refused, strict=True
        )
    ]


def _xstest(
    out: _Collector, lm: LoadedModel, plan: EvalPlan, cfg: EvalConfig, label: str, progress: bool
) -> tuple[list[dict[str, Any]], float]:
    examples = [p.example() for p in plan.xstest]
    gens = generate(lm, examples, cfg.xstest_sampling(), progress=progress, desc=f"xstest {label}")
    refused = [[float(is_refusal(row[0]))] for row in gens.texts]
    units = {p.id: r for p, r in zip(plan.xstest, refused, strict=True)}
    out.add("xstest_refusal", "XSTest safe: refusal rate", "rate", units)
    records = [
        {
            "run": label,
            "set": "xstest",
            "id": p.id,
            "category": p.category,
            "prompt": p.prompt,
            "responses": row,
            "refusal": r,
        }
        for p, row, r in zip(plan.xstest, gens.texts, refused, strict=True)
    ]
    return records, gens.seconds


def _grouped(traits: Sequence[str], units: Sequence[str], values: Sequence[float]):
    """``{trait: {unit: [values]}}`` in first-seen order."""
    out: dict[str, dict[str, list[float]]] = {}
    for trait, unit, v in zip(traits, units, values, strict=True):
        out.setdefault(trait, {}).setdefault(unit, []).append(v)
    return out


def _probes(out: _Collector, lm: LoadedModel, plan: EvalPlan, cfg: EvalConfig, progress: bool):
    if plan.persona:
        probs = persona_scores(lm, plan.persona, batch_size=cfg.batch_size, progress=progress)
        grouped = _grouped([i.trait for i in plan.persona], [i.unit for i in plan.persona], probs)
        for trait, units in grouped.items():
            out.add(f"trait:{trait}", f"P(trait) {trait}", "probability", units)
    if plan.em:
        probs = choice_scores(lm, plan.em, batch_size=cfg.batch_size, progress=progress)
        grouped = _grouped([p.trait for p in plan.em], [p.unit for p in plan.em], probs)
        for trait, units in grouped.items():
            out.add(f"trait:{trait}", f"P(misaligned) {trait}", "probability", units)


def _projection(
    out: _Collector,
    lm: LoadedModel,
    plan: EvalPlan,
    gens: Generations,
    atlas: FeatureAtlas,
    cfg: EvalConfig,
    progress: bool,
) -> None:
    names = atlas.harmful
    where = concept_layers(atlas, names, lm=lm)
    rows = [
        (p.id, Example(p.example().prompt, text))
        for p, texts in zip(plan.prompts, gens.texts, strict=True)
        for text in texts
        if text.strip()
    ]
    values: dict[str, list[float]] = {name: [] for name in names}
    if rows:
        projected = project(
            lm,
            [ex for _, ex in rows],
            atlas,
            names,
            tokens=PROJECTION_TOKENS,
            batch_size=cfg.batch_size,
            progress=progress,
        )
        values = {name: v.tolist() for name, v in projected.items()}
    for name in names:
        units: dict[str, list[float]] = {p.id: [] for p in plan.prompts}
        for (unit, _), v in zip(rows, values[name], strict=True):
            units[unit].append(float(v))
        label = f"projection {name} (L{where[name]})"
        out.add(f"projection:{name}", label, "projection", units)


def _logodds(
    out: _Collector, lm: LoadedModel, plan: EvalPlan, cfg: EvalConfig, progress: bool
) -> dict[str, float]:
    """One ``logodds:<set>`` row per pair set; returns the seconds each took."""
    seconds = {}
    for ps in plan.logodds:
        t0 = time.perf_counter()
        values = pair_logodds(lm, ps, batch_size=cfg.batch_size, progress=progress)
        units = {p.id: [v] for p, v in zip(ps.pairs, values, strict=True)}
        out.add(ps.metric, ps.label, "logodds", units, concept=ps.concept)
        seconds[ps.metric] = time.perf_counter() - t0
    return seconds


def evaluate_model(
    lm: LoadedModel,
    plan: EvalPlan,
    cfg: EvalConfig,
    *,
    atlas: FeatureAtlas | None = None,
    label: str = "model",
    progress: bool = True,
) -> ModelEval:
    """Every metric of one model on ``plan`` (see the module docstring)."""
    out = _Collector(cfg)
    seconds: dict[str, float] = {}
    records: list[dict[str, Any]] = []

    skipped = dict(plan.skipped)
    gens = None
    if plan.prompts:
        examples = [p.example() for p in plan.prompts]
        gens = generate(lm, examples, cfg.sampling(), progress=progress, desc=f"generate {label}")
        seconds["generate"] = gens.seconds
        t0 = time.perf_counter()
        records += _toxicity(out, plan, gens, cfg, label)
        seconds["toxicity"] = time.perf_counter() - t0
    if plan.xstest:
        xs_records, seconds["xstest"] = _xstest(out, lm, plan, cfg, label, progress)
        records += xs_records
    t0 = time.perf_counter()
    _probes(out, lm, plan, cfg, progress)
    seconds["probes"] = time.perf_counter() - t0
    seconds |= _logodds(out, lm, plan, cfg, progress)
    if atlas is not None and gens is not None:
        t0 = time.perf_counter()
        _projection(out, lm, plan, gens, atlas, cfg, progress)
        seconds["projection"] = time.perf_counter() - t0
    elif atlas is not None:
        skipped["projection"] = "needs sampled responses (n_prompts=0)"
    return ModelEval(label, out.metrics, {}, seconds, records, skipped)


__all__ = ["evaluate_model"]
