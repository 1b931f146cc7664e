"""`evaluate`: behavioural evaluation of a model before and after fine-tuning.

What is measured on one model (:mod:`.measure`):

- **toxic-output rate**: sampled responses (``samples_per_prompt`` per prompt, KV cache, fixed
  seeds; :mod:`.generate`) to a prompt set (built-in by default; :mod:`.prompts`), scored by an
  offline classifier (:mod:`.toxicity`); rate = fraction of responses scoring above 0.5. Also
  the mean score, the rate per prompt category (in eval.json) and the refusal rate on the same
  prompts.
- **over-refusal**: refusal rate (:mod:`.refusal`) of greedy responses to XSTest's safe prompts.
- **trait probes** (:mod:`.probes`): trait-matching probability on Anthropic persona statements
  (yes/no) and on the emergent-misalignment pivotal-token probes.
- **projection** (with an atlas): mean projection of the responses' residual stream on each
  harmful direction at its best layer (:mod:`geomsafe.projection`).

Every number comes with a 95% percentile bootstrap CI over its units (prompts with all their
samples, statements, questions; :mod:`.stats`). With an adapter, the base model (adapter
disabled, same process, same seeds) is *before* and the adapted model *after*; with a baseline
``eval.json``, that file's model is *before*. Changes are ``after - before`` with a paired
bootstrap CI over the units both share, in percentage points for rates and probabilities.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from geomsafe.adapters import adapter_sha256, attach_adapter, is_peft, view
from geomsafe.artefacts import geomsafe_version, prepare_out, write_json, write_jsonl
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import HOOK_SITE
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.config import NUMBER_KEYS, EvalConfig
from geomsafe.evaluate.logodds import controlled_changes, refuse_overlap
from geomsafe.evaluate.measure import PROJECTION_TOKENS, evaluate_model
from geomsafe.evaluate.plan import EvalPlan, make_plan
from geomsafe.evaluate.refusal import REFUSAL_PHRASES, REFUSAL_PREFIXES
from geomsafe.evaluate.result import (
    EVAL_JSON,
    GENERATIONS_JSONL,
    Change,
    EvalResult,
    ModelEval,
    compare,
    load_eval,
)
from geomsafe.evaluate.toxicity import CLASSIFIER, classifier_version
from geomsafe.models import LoadedModel, load
from geomsafe.projection import concept_layers


def _check_baseline(cfg: dict[str, Any], base_cfg: dict[str, Any]) -> list[str]:
    return [
        f"baseline {key}={base_cfg[key]!r} differs from this run's {cfg[key]!r}"
        for key in NUMBER_KEYS
        if key in base_cfg and base_cfg[key] != cfg[key]
    ]


def _changes(
    before: ModelEval, after: ModelEval, cfg: EvalConfig, plan: EvalPlan
) -> tuple[dict[str, Change], list[str]]:
    changes, notes = {}, []
    for name, m in after.metrics.items():
        if name not in before.metrics:
            continue
        c = compare(before.metrics[name], m, n_boot=cfg.n_boot, seed=cfg.seed)
        if c is None:
            notes.append(f"{name}: before and after share no units; no change reported")
            continue
        changes[name] = c
        if c.n_paired < max(m.ci.n, before.metrics[name].ci.n):
            notes.append(f"{name}: change over the {c.n_paired} units both runs share")
    controlled, more = controlled_changes(
        before, after, plan.logodds, n_boot=cfg.n_boot, seed=cfg.seed
    )
    return changes | controlled, notes + more


def _provenance(
    lm: LoadedModel,
    cfg: EvalConfig,
    plan: EvalPlan,
    adapter: str | Path | None,
    baseline: str | Path | None,
    atlas: FeatureAtlas | None,
    atlas_path: str | None,
) -> dict[str, Any]:
    prov: dict[str, Any] = {
        "geomsafe_version": geomsafe_version(),
        "seed": cfg.seed,
        **lm.provenance(),
        "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
        "adapter_sha256": adapter_sha256(adapter) if adapter is not None else None,
        "baseline": str(Path(baseline).resolve()) if baseline is not None else None,
        "data_sha256": plan.data_sha256,
        "data_hashes": plan.hashes,
        "data_root": plan.data_root,
        "toxicity_classifier": f"{CLASSIFIER} {classifier_version()}",
        "refusal_detector": {"prefixes": list(REFUSAL_PREFIXES), "phrases": list(REFUSAL_PHRASES)},
    }
    if atlas is not None:
        prov["atlas"] = {
            "path": atlas_path,
            "features": concept_layers(atlas, atlas.harmful, lm=lm),
            "hook_site": HOOK_SITE,
            "tokens": PROJECTION_TOKENS,
            "provenance": atlas.provenance,
        }
    return prov


def _write(out: Path, result: EvalResult, runs: list[ModelEval]) -> None:
    """``generations.jsonl`` then ``eval.json`` (stamped ``geomsafe.eval/2``), each atomic."""
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / GENERATIONS_JSONL, (r for run in runs for r in run.generations))
    write_json(out / EVAL_JSON, result.to_dict(), "eval")


def evaluate(
    model: str | LoadedModel = "default",
    *,
    adapter: str | Path | None = None,
    baseline: str | Path | None = None,
    atlas: str | Path | FeatureAtlas | None = None,
    out: str | Path | None = None,
    config: EvalConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> EvalResult:
    """Evaluate ``model`` (with ``adapter`` when given) and compare it with *before*: the base
    model when an adapter is given (same process, adapter disabled, same seeds) unless a
    ``baseline`` eval.json is given, which then is *before*. A ``model`` whose ``.model`` is
    already a peft model is evaluated with and without its adapter likewise. ``options``
    override :class:`EvalConfig` fields (``n_prompts=20``, ...). Writes ``eval.json`` and
    ``generations.jsonl`` to ``out`` when given (a non-empty ``out`` only with ``overwrite``)."""
    t_start = time.perf_counter()
    cfg = (config or EvalConfig()).with_options(**options)
    # check every input before the (slow) model load
    if adapter is not None and not Path(adapter).is_dir():
        raise GeomsafeError(f"adapter folder not found: {adapter}")
    before, base_cfg = (None, {}) if baseline is None else load_eval(baseline)
    atlas_path: str | None = None
    fatlas: FeatureAtlas | None = None
    if isinstance(atlas, FeatureAtlas):
        fatlas = atlas
    elif atlas is not None:
        atlas_path = str(atlas)
        fatlas = FeatureAtlas.load(atlas_path)
    if fatlas is not None and not fatlas.harmful:
        raise GeomsafeError("the atlas has no harmful features to project on")
    folder = prepare_out(out, "eval", overwrite=overwrite) if out is not None else None
    plan = make_plan(cfg)
    if fatlas is not None:
        refuse_overlap(plan.logodds, fatlas.stats)

    lm = model if isinstance(model, LoadedModel) else load(model)
    provenance = _provenance(lm, cfg, plan, adapter, baseline, fatlas, atlas_path)

    def run(m: LoadedModel, label: str) -> ModelEval:
        return evaluate_model(m, plan, cfg, atlas=fatlas, label=label, progress=progress)

    peft_in_memory: Any = lm.model if is_peft(lm.model) else None
    if adapter is not None:
        with attach_adapter(lm, adapter) as peft_model:
            if before is None:
                with peft_model.disable_adapter():
                    before = run(lm, "base")
            after = run(lm, "adapted")
    elif peft_in_memory is not None:  # an in-memory peft model, e.g. straight from training
        inner = view(lm, peft_in_memory.base_model.model)
        if before is None:
            with peft_in_memory.disable_adapter():
                before = run(inner, "base")
        after = run(inner, "adapted")
    else:
        after = run(lm, "model")

    notes = [f"skipped {k}: {v}" for k, v in after.skipped.items()]
    if baseline is not None:
        notes += _check_baseline(cfg.to_dict(), base_cfg)
    changes: dict[str, Change] = {}
    if before is not None:
        changes, more = _changes(before, after, cfg, plan)
        notes += more
    result = EvalResult(
        after,
        before,
        changes,
        cfg.to_dict(),
        provenance,
        time.perf_counter() - t_start,
        notes,
        str(out) if out is not None else None,
    )
    if folder is not None:
        with folder.writing() as work:
            _write(work, result, [r for r in (before, after) if r is not None])
    return result
