"""Does `predict` rank data sets by how far fine-tuning on them really changes behaviour?

    python experiments/predict_validation.py [--model default] [--datasets NAME,...]
        [--atlas DIR] [--max-examples 64] [--behaviour DIR] [--out DIR]
    python experiments/predict_validation.py --filter-experiment DATASET
        [--filter-score max|CONCEPT] [--filter-fraction 0.1] [--random-seeds 3]
        [--rows SET,...] [--pairs N]

**Validation** (default mode). The data sets and names are those of
``experiments/behaviour_runs.py``, whose results (``--behaviour``, default
``$GEOMSAFE_RESULTS/behaviour_runs``) hold each data set's behavioural change (log-odds rows,
tuned minus base) and its adapter. Per data set with a
``behaviour.json``: :func:`run_predict` on a fixed sample (``--max-examples``, seed 0; every
estimator) and, beside it, the activation shift of the existing figure (the projection at the
last prompt token of the built-in probe prompts, adapter minus base, per concept). Then per
estimator:

- per concept ``c``: Spearman and share of data-set pairs ranked right (:func:`pair_accuracy`)
  of predicted ``c`` against the change of ``logodds:concept:c`` (``c``'s evaluation half; for
  ``dangerous_advice`` also the cross-domain ``logodds:advice``), and against the activation
  shift;
- pooled over (data set, concept) pairs;
- mixture monotonicity (:func:`monotonicity`): Spearman over the mixture levels of each
  ``mix:A:B:F`` group, for the overall risk and for the mean behavioural change over the
  concept rows.

Per data set the predict output is cached in ``<out>/<name>/predict.json`` (resumable);
``<out>/validation.json`` (stamped ``geomsafe.predict_validation/1``, with its provenance:
model, atlas source, provenance and hash, recipe, evaluation config and pair-set hashes;
``geomsafe report <out>`` shows it: dose-response curve, pooled scatter, goals) and
``validation.md`` hold the tables. ``<out>`` defaults to
``$GEOMSAFE_RESULTS/predict_validation``. The atlas is extracted from the concepts' direction
halves (or read from ``--atlas``); an atlas whose directions used evaluation pairs is refused.

**Filter experiment** (``--filter-experiment DATASET``): score every example of the data set's
training sample (``--train-examples``, seeded) with ``predict``'s per-example score
(``--filter-score``: ``max``, the example's largest concept score, or a concept's own score),
remove the riskiest ``--filter-fraction`` (default 10%) and, for each of ``--random-seeds``
seeds, the same number at random; fine-tune each with behaviour_runs' recipe and measure the
log-odds rows. Per row: the change of each variant with its paired CI, and
``filter - mean(random)`` of the per-pair changes with a paired bootstrap CI over pairs; the
filter *beats random* on a row when that CI lies below 0. Results in
``<out>/filter/<name>/filter.json`` (each variant cached in its own folder: resumable).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import random
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geomsafe.adapters import attach_adapter
from geomsafe.artefacts import VALIDATION_JSON, atomic_write
from geomsafe.artefacts import write_json as write_artefact
from geomsafe.atlas import FeatureAtlas
from geomsafe.concepts import builtin_names
from geomsafe.datasets import Dataset
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate import evaluate
from geomsafe.evaluate.logodds import refuse_overlap
from geomsafe.evaluate.pairsets import CONCEPT_SETS, DEFAULT_SETS, load_pair_set
from geomsafe.guard.resolve import extract_atlas
from geomsafe.models import LoadedModel, load
from geomsafe.predict import predict
from geomsafe.predict.gradient import probe_prompts
from geomsafe.projection import mean_projection, measured_shift
from geomsafe.report.validation import DEFAULT_ESTIMATOR, GOALS, level_ci
from geomsafe.stats import change_ci, correlation
from geomsafe.train import finetune
from lib.behaviour import base_eval, eval_config, pair_changes, recipe, row_payload
from lib.common import RESULTS, machine, write_json
from lib.train_sets import (
    BEHAVIOUR_JSON,
    DATASETS,
    build_dataset,
    display_name,
    parse_mix,
    safe_name,
)

ESTIMATORS = ("risk", "projection_difference", "prompt_anchored", "gradient", "gradient_alignment")
CONCEPT_ROW = "logodds:concept:{}"
CROSS_DOMAIN = {"dangerous_advice": "logodds:advice"}
PREDICT_JSON = "predict.json"


# ------------------------------------------------------------------ pure functions


def pair_accuracy(pred: Sequence[float], meas: Sequence[float]) -> float:
    """Share of pairs (i, j) with ``meas[i] != meas[j]`` that ``pred`` orders the same way
    (a tie in ``pred`` counts as wrong); NaN when there is no such pair."""
    pairs = [(i, j) for i, j in itertools.combinations(range(len(pred)), 2) if meas[i] != meas[j]]
    right = sum((pred[i] - pred[j]) * (meas[i] - meas[j]) > 0 for i, j in pairs)
    return right / len(pairs) if pairs else float("nan")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (NaN for fewer than 3 points or a constant side)."""
    return correlation(list(x), list(y))["spearman"]


def monotonicity(levels: Sequence[float], values: Sequence[float]) -> float:
    """Spearman of ``values`` over mixture ``levels`` (1: strictly rising with the level)."""
    return spearman(list(levels), list(values))


def agreement(pred: Sequence[float], meas: Sequence[float]) -> dict[str, float | int]:
    corr = correlation(list(pred), list(meas))
    return {
        "spearman": corr["spearman"],
        "p": corr["spearman_p"],
        "pair_accuracy": pair_accuracy(pred, meas),
        "n": len(pred),
    }


def estimates(pred: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """``{estimator: {concept: value}}`` from a risk.json-shaped predict payload (estimators
    missing from it, or None for a concept, are left out)."""
    out: dict[str, dict[str, float]] = {}
    for c in pred["concepts"]:
        for est in ESTIMATORS:
            v = c.get(est)
            if isinstance(v, (int, float)) and not math.isnan(v):
                out.setdefault(est, {})[c["concept"]] = float(v)
    return out


def behaviour_targets(concepts: Sequence[str]) -> list[tuple[str, str]]:
    """(concept, behavioural row) pairs that validate a concept's prediction."""
    out = [(c, CONCEPT_ROW.format(c)) for c in concepts]
    return out + [(c, CROSS_DOMAIN[c]) for c in concepts if c in CROSS_DOMAIN]


def validate(rows: Sequence[Mapping[str, Any]], concepts: Sequence[str]) -> dict[str, Any]:
    """Agreement of every estimator with behaviour (per concept row and pooled) and with the
    activation shift, over ``rows`` (one per data set: ``predicted``, ``behaviour``,
    ``activation``)."""
    out: dict[str, Any] = {}
    ests = sorted({e for r in rows for e in r["predicted"]}, key=ESTIMATORS.index)
    for est in ests:
        per_row, pooled_p, pooled_m = {}, [], []
        for concept, row in behaviour_targets(concepts):
            keep = [
                r for r in rows if concept in r["predicted"].get(est, {}) and row in r["behaviour"]
            ]
            p = [r["predicted"][est][concept] for r in keep]
            m = [r["behaviour"][row]["change"] for r in keep]
            per_row[f"{concept} vs {row}"] = agreement(p, m)
            if row == CONCEPT_ROW.format(concept):
                pooled_p += p
                pooled_m += m
        act = {}
        for concept in concepts:
            keep = [r for r in rows if concept in r["predicted"].get(est, {})]
            act[concept] = agreement(
                [r["predicted"][est][concept] for r in keep],
                [r["activation"][concept] for r in keep],
            )
        out[est] = {
            "behaviour": per_row,
            "behaviour_pooled": agreement(pooled_p, pooled_m),
            "activation": act,
        }
    return out


def mixture_groups(names: Sequence[str]) -> dict[str, list[tuple[float, str]]]:
    """``mix:A:B:F`` names grouped by ``A:B``, each group sorted by ``F``."""
    groups: dict[str, list[tuple[float, str]]] = {}
    for n in names:
        if n.startswith("mix:"):
            a, b, f = parse_mix(n)
            groups.setdefault(f"{a} into {b}", []).append((f, n))
    return {k: sorted(v) for k, v in groups.items()}


def mixture_monotonicity(rows: Mapping[str, Mapping[str, Any]], concepts: Sequence[str]):
    """Per mixture group: Spearman over the levels of the overall risk and of the mean change
    over the concept rows (and of each concept row); per level the mean change's 95% CI
    (:func:`geomsafe.report.validation.level_ci`, when the rows carry per-pair changes)."""
    out = {}
    for group, levels in mixture_groups(list(rows)).items():
        fs = [f for f, _ in levels]
        risk = [rows[n]["overall_risk"] for _, n in levels]
        concept_rows = [CONCEPT_ROW.format(c) for c in concepts]
        beh = [
            float(np.mean([rows[n]["behaviour"][r]["change"] for r in concept_rows]))
            if all(r in rows[n]["behaviour"] for r in concept_rows)
            else float("nan")
            for _, n in levels
        ]
        with_ci = all(
            rows[n]["behaviour"].get(r, {}).get("pair_changes")
            for _, n in levels
            for r in concept_rows
        )
        out[group] = {
            "levels": fs,
            "datasets": [n for _, n in levels],
            "risk": risk,
            "mean_concept_change": beh,
            **(
                {
                    "mean_concept_ci": [
                        list(level_ci(rows[n]["behaviour"], concept_rows))
                        for _, n in levels
                    ]
                }
                if with_ci
                else {}
            ),
            "risk_spearman": monotonicity(fs, risk),
            "behaviour_spearman": monotonicity(fs, beh),
            "per_row_spearman": {
                r: monotonicity(
                    fs, [rows[n]["behaviour"].get(r, {}).get("change") for _, n in levels]
                )
                for r in sorted({r for _, n in levels for r in rows[n]["behaviour"]})
                if all(r in rows[n]["behaviour"] for _, n in levels)
            },
        }
    return out


def drop_riskiest(scores: Sequence[float], fraction: float) -> list[int]:
    """Indices of the ``round(fraction * n)`` highest scores (ties: the earlier index first)."""
    k = round(fraction * len(scores))
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


def drop_random(n: int, k: int, seed: int) -> list[int]:
    """``k`` of ``range(n)`` drawn with ``Random(f"{seed}:filter-random")``."""
    return sorted(random.Random(f"{seed}:filter-random").sample(range(n), k))


def filter_vs_random(
    filtered: Mapping[str, float],
    randoms: Sequence[Mapping[str, float]],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``mean(filtered) - mean(mean over seeds of random)`` of the per-pair changes, with a
    paired bootstrap CI over the pairs all variants share; ``beats_random`` when the CI lies
    below 0 (the filter leaves less harmful change than random removal). The CI resamples
    pairs, not removals: the spread between the random removals is the null to read it
    against, so ``random_means`` (each random variant's mean change) and ``below_all_random``
    (the filter's mean below every one of them; by chance 1 in ``len(randoms) + 1``) are kept."""
    ids = [u for u in filtered if all(u in r for r in randoms)]
    if not ids:
        raise GeomsafeError("the filter and random variants share no pairs")
    rand = [float(np.mean([r[u] for r in randoms])) for u in ids]
    ci = change_ci(rand, [filtered[u] for u in ids], n_boot=n_boot, seed=seed)
    means = [float(np.mean([r[u] for u in ids])) for r in randoms]
    mine = float(np.mean([filtered[u] for u in ids]))
    return {
        "difference": ci.value,
        "ci_low": ci.low,
        "ci_high": ci.high,
        "n_pairs": len(ids),
        "beats_random": bool(ci.high < 0),
        "filter_mean": mine,
        "random_means": means,
        "below_all_random": bool(mine < min(means)),
    }


# ------------------------------------------------------------------ the predict call


def run_predict(
    lm: LoadedModel, ds: Dataset, atlas: FeatureAtlas, max_examples: int | None, seed: int = 0
) -> dict[str, Any]:
    """The one call of ``predict``: a risk.json-shaped dict (``concepts`` with every
    estimator per concept, ``overall_risk``, ``examples`` with ``line``, ``score`` and
    per-concept ``scores``)."""
    result = predict(
        lm,
        ds,
        atlas=atlas,
        max_examples=max_examples,
        max_new_tokens=32,
        gradient_examples=32,
        seed=seed,
        progress=False,
    )
    return result.to_dict()


def example_scores(pred: Mapping[str, Any], ds: Dataset, score: str) -> list[float]:
    """Per record of ``ds`` (in order): its per-example score (``max`` or a concept's)."""
    lines = [r.line for r in ds.records]
    if len(set(lines)) != len(lines):
        raise GeomsafeError("the filter experiment needs a data set from one file")
    by_line = {e["line"]: e for e in pred["examples"]}
    missing = [ln for ln in lines if ln not in by_line]
    if missing:
        raise GeomsafeError(f"predict scored {len(lines) - len(missing)} of {len(lines)} examples")
    if score == "max":
        return [float(by_line[ln]["score"]) for ln in lines]
    if score not in by_line[lines[0]]["scores"]:
        raise GeomsafeError(f"--filter-score {score!r}: not max or a concept of the atlas")
    return [float(by_line[ln]["scores"][score]) for ln in lines]


# ------------------------------------------------------------------ runs


def has_atlas(path: str | None) -> bool:
    """Whether ``--atlas`` names an atlas folder (else the atlas is extracted)."""
    return bool(path) and any((Path(path) / s / "atlas.json").is_file() for s in (".", "atlas"))


def get_atlas(lm: LoadedModel, path: str | None, concepts: Sequence[str]) -> FeatureAtlas:
    """``--atlas`` or the harmful concepts' direction halves; refused when its directions used
    a concept row's pairs."""
    if has_atlas(path):
        atlas = FeatureAtlas.load(path)
    else:
        atlas = extract_atlas(lm, list(concepts), [], max_pairs=64, seed=0, progress=False)
    refuse_overlap([load_pair_set(s) for s in CONCEPT_SETS], atlas.stats)
    return atlas


def validation_row(name, lm, atlas, args, behaviour: Path, out: Path, base_probe, probes):
    """Predict + activation shift of one data set (cached); None without a behaviour run."""
    folder = behaviour / safe_name(name)
    beh_path = folder / BEHAVIOUR_JSON
    if not beh_path.is_file():
        print(f"{name}: no {beh_path}; run experiments/behaviour_runs.py first, skipped")
        return None
    cache = out / safe_name(name) / PREDICT_JSON
    if cache.is_file():
        cached = json.loads(cache.read_text())
    else:
        ds = build_dataset(name, args.train_examples, args.seed, args.data_root)
        t0 = time.process_time()
        pred = run_predict(lm, ds, atlas, args.max_examples, args.seed)
        cpu = time.process_time() - t0
        with attach_adapter(lm, folder / "adapter"):
            act = measured_shift(lm, probes, atlas, atlas.harmful, base_projection=base_probe)
        cached = {"dataset": name, "predict": pred, "predict_cpu_seconds": cpu, "activation": act}
        write_json(cache, cached)
    pred = cached["predict"]
    return {
        "dataset": display_name(name),
        "predicted": estimates(pred),
        "overall_risk": pred["overall_risk"],
        "overall_concept": pred["overall_concept"],
        "activation": cached["activation"],
        "behaviour": json.loads(beh_path.read_text())["rows"],
    }


def markdown(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
    """Tables: per estimator x (concept, row) Spearman / pair accuracy; mixtures."""
    lines = ["| estimator | target | Spearman (behaviour) | pairs right | Spearman (activation) |"]
    lines.append("|---|---|---|---|---|")
    for est, s in summary["estimators"].items():
        for key, a in s["behaviour"].items():
            concept = key.split(" vs ")[0]
            act = s["activation"].get(concept, {}).get("spearman", float("nan"))
            lines.append(
                f"| {est} | {key} | {a['spearman']:.2f} | {a['pair_accuracy']:.2f} | {act:.2f} |"
            )
        p = s["behaviour_pooled"]
        lines.append(
            f"| {est} | pooled (n={p['n']}) | {p['spearman']:.2f} | {p['pair_accuracy']:.2f} | |"
        )
    lines += ["", "| mixture | levels | risk Spearman | behaviour Spearman |", "|---|---|---|---|"]
    for g, m in summary["mixtures"].items():
        lines.append(
            f"| {g} | {m['levels']} | {m['risk_spearman']:.2f} | {m['behaviour_spearman']:.2f} |"
        )
    lines += ["", f"{len(rows)} data sets: " + ", ".join(r["dataset"] for r in rows)]
    return "\n".join(lines) + "\n"


def summarise(rows: Sequence[Mapping[str, Any]], concepts: Sequence[str]) -> dict[str, Any]:
    """The body of ``validation.json`` for ``rows`` (one per data set, as
    :func:`validation_row` returns): the rows, the agreement of every estimator
    (:func:`validate`), the mixtures (:func:`mixture_monotonicity`), the concepts, the
    default estimator and the goals the report checks."""
    return {
        "rows": list(rows),
        "summary": {
            "estimators": validate(rows, concepts),
            "mixtures": mixture_monotonicity({r["dataset"]: r for r in rows}, concepts),
        },
        "concepts": list(concepts),
        "default_estimator": DEFAULT_ESTIMATOR,
        "goals": dict(GOALS),
    }


def atlas_sha256(atlas: FeatureAtlas, names: Sequence[str]) -> str:
    """sha256 over the names and float32 directions of ``names`` (what the estimators used)."""
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode())
        h.update(atlas.directions[n].float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def provenance(lm: LoadedModel, atlas: FeatureAtlas, args, behaviour: Path, names) -> dict:
    """What the validation was computed from: the model, the atlas (source, its provenance,
    a hash of the harmful directions), the behaviour runs' recipe and evaluation config (one
    value when every data set agrees, else per data set), the concept pair sets' hashes and
    the predict sample."""
    runs = {}
    for n in names:
        path = behaviour / safe_name(n) / BEHAVIOUR_JSON
        if path.is_file():
            runs[display_name(n)] = json.loads(path.read_text())

    def common(key: str) -> Any:
        values = {k: v.get(key) for k, v in runs.items()}
        distinct = {json.dumps(v, sort_keys=True) for v in values.values()}
        return next(iter(values.values())) if len(distinct) == 1 else values

    return {
        **lm.provenance(),
        "atlas": {
            "source": args.atlas
            if has_atlas(args.atlas)
            else "extracted (direction halves, 64 pairs, seed 0)",
            "sha256": atlas_sha256(atlas, atlas.harmful),
            "provenance": atlas.provenance,
        },
        "recipe": common("recipe"),
        "eval_config": common("eval_config"),
        "pairs": {s: load_pair_set(s).sha256() for s in CONCEPT_SETS},
        "behaviour": str(behaviour),
        "max_examples": args.max_examples,
        "train_examples": args.train_examples,
        "seed": args.seed,
    }


def validation(lm: LoadedModel, args) -> dict[str, Any]:
    concepts = builtin_names("harmful")
    atlas = get_atlas(lm, args.atlas, concepts)
    probes = probe_prompts(48)
    base_probe = mean_projection(lm, probes, atlas, atlas.harmful)
    out, behaviour = Path(args.out), Path(args.behaviour)
    names = [s for s in args.datasets.split(",") if s]
    rows = [
        r
        for n in names
        if (r := validation_row(n, lm, atlas, args, behaviour, out, base_probe, probes))
    ]
    payload = {
        **summarise(rows, atlas.harmful),
        "provenance": provenance(lm, atlas, args, behaviour, names),
        "machine": machine(),
        "command": _command(),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_artefact(out / VALIDATION_JSON, payload, "predict_validation")
    text = markdown(rows, payload["summary"])
    atomic_write(out / "validation.md", lambda p: Path(p).write_text(text, encoding="utf-8"))
    print(text)
    return payload


def variant_run(lm, ds: Dataset, folder: Path, args, cfg) -> dict[str, Any]:
    """Fine-tune ``ds`` into ``folder/adapter`` (unless done) and measure: per row the change
    with CI and the per-pair changes (cached in ``folder/behaviour.json``)."""
    path = folder / BEHAVIOUR_JSON
    if path.is_file():
        return json.loads(path.read_text())
    adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        config = recipe(args.steps, args.lr, args.rank, args.batch, args.seed)
        finetune(lm, ds, out=adapter, config=config, progress=False, overwrite=True)
    base = base_eval(lm, cfg, Path(args.behaviour), progress=False)
    result = evaluate(lm, adapter=adapter, baseline=base, config=cfg, progress=False)
    payload = {
        "n_train": len(ds),
        "rows": row_payload(result),
        "pair_changes": pair_changes(result),
    }
    write_json(path, payload)
    return payload


def filter_experiment(lm: LoadedModel, args) -> dict[str, Any]:
    name = args.filter_experiment
    out = Path(args.out) / "filter" / safe_name(name)
    ds = build_dataset(name, args.train_examples, args.seed, args.data_root)
    concepts = builtin_names("harmful")
    atlas = get_atlas(lm, args.atlas, concepts)
    score_path = out / "scores.json"
    if score_path.is_file():
        scores = json.loads(score_path.read_text())["scores"]
    else:
        t0 = time.process_time()
        pred = run_predict(lm, ds, atlas, len(ds), args.seed)
        scores = example_scores(pred, ds, args.filter_score)
        cpu = time.process_time() - t0
        write_json(score_path, {"score": args.filter_score, "scores": scores, "cpu_seconds": cpu})
    drop = drop_riskiest(scores, args.filter_fraction)
    variants = {"filter": drop} | {
        f"random-{s}": drop_random(len(ds), len(drop), s) for s in range(args.random_seeds)
    }
    rows = [r for r in (args.rows or ",".join(DEFAULT_SETS)).split(",") if r]
    cfg = eval_config(rows, args.pairs, args.seed, args.data_root)
    results = {}
    for v, idx in variants.items():
        gone = set(idx)
        kept = dataclasses.replace(
            ds, records=[r for i, r in enumerate(ds.records) if i not in gone]
        )
        results[v] = variant_run(lm, kept, out / v, args, cfg)
        results[v]["dropped"] = idx
    randoms = [results[v] for v in variants if v.startswith("random-")]
    compare = {}
    for row, changes in results["filter"]["pair_changes"].items():
        if all(row in r["pair_changes"] for r in randoms):
            compare[row] = filter_vs_random(
                changes, [r["pair_changes"][row] for r in randoms], seed=args.seed
            )
    payload = {
        "dataset": name,
        "filter_score": args.filter_score,
        "fraction": args.filter_fraction,
        "n_train": len(ds),
        "n_dropped": len(drop),
        "variants": {
            v: {k: r[k] for k in ("rows", "dropped", "n_train")} for v, r in results.items()
        },
        "filter_minus_random": compare,
        "machine": machine(),
        "command": _command(),
    }
    write_json(out / "filter.json", payload)
    for row, c in compare.items():
        verdict = "beats random" if c["beats_random"] else "does not beat random"
        spread = ", ".join(f"{m:+.4f}" for m in c["random_means"])
        below = "below every random" if c["below_all_random"] else "within the random spread"
        print(
            f"{row}: filter - random {c['difference']:+.4f} "
            f"[{c['ci_low']:+.4f}, {c['ci_high']:+.4f}] {verdict}; filter {c['filter_mean']:+.4f}"
            f" vs random {spread}: {below}"
        )
    return payload


def _command() -> str:
    return "python experiments/predict_validation.py " + " ".join(sys.argv[1:])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--atlas", default=None, help="atlas folder (default: extract)")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--max-examples", type=int, default=64)
    ap.add_argument("--train-examples", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--behaviour", default=str(RESULTS / "behaviour_runs"))
    ap.add_argument("--out", default=str(RESULTS / "predict_validation"))
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--filter-experiment", metavar="DATASET")
    ap.add_argument("--filter-score", default="max", help="max or a harmful concept's name")
    ap.add_argument("--filter-fraction", type=float, default=0.1)
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--rows", help="log-odds sets of the filter experiment")
    ap.add_argument("--pairs", type=int, default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None, lm: LoadedModel | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 0 < args.filter_fraction < 1:
        raise GeomsafeError(f"--filter-fraction must be in (0, 1), not {args.filter_fraction}")
    lm = lm if lm is not None else load(args.model)
    if args.filter_experiment:
        return filter_experiment(lm, args)
    return validation(lm, args)


if __name__ == "__main__":
    try:
        main()
    except GeomsafeError as exc:
        raise SystemExit(f"error: {exc}") from None
