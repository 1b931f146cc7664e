"""`predict`: how much will fine-tuning on a data set amplify each harmful trait?

Three estimates per harmful concept h (each at h's best layer):

- ``projection_difference`` (persona-vector style): mean projection on h of the data set's
  assistant responses minus that of the model's own (greedy) responses to the same prompts.
  Training on responses that sit further along h than what the model would say pulls it
  along h.
- ``prompt_anchored`` (cheap, no generation): mean projection of the data set's responses
  minus the projection of the last prompt token.
- ``gradient``: first-order change of the probe-prompt projection after one gradient step of
  size ``lr`` on the data set (see :mod:`geomsafe.predict.gradient`).

  Its ``gradient_alignment`` is the cosine between that step and the gradient of the
  projection (scale-free).

Risk (0–1), the ``method`` named in the output:

- ``gradient_alignment`` (when the gradient is computed, the default): clip(alignment, 0, 1).
  In ``bench/predict_validation.py`` on the default model it ranked 8 data sets by their
  measured shift best (pooled Spearman 0.89 vs 0.34 for the projection difference).
- ``projection_difference`` (``gradient=False``): clip(shift / scale, 0, 1), where scale is the
  distance between the concept's positive and negative means along its direction
  (``diff_norm`` in the atlas): 1 means the data's responses sit as far along h, relative to
  the model's own, as the concept's positive examples do relative to its negatives.
- ``prompt_anchored`` (``gradient=False, generate=False``): the same with the last prompt token
  in place of the own responses.

The overall risk is the largest concept risk. Per-example scores (riskiest examples,
``--filter``, ``--attack``) are projection differences (prompt-anchored without generation):
a per-example gradient would cost one backward pass per example.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import geomsafe
from geomsafe.atlas import FeatureAtlas, atomic_write
from geomsafe.concepts import builtin_names, load_builtin
from geomsafe.datasets import Dataset, load_dataset, resolve_data
from geomsafe.directions import extract
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.generate import greedy
from geomsafe.formatting import Example
from geomsafe.models import LoadedModel, load
from geomsafe.predict.gradient import gradient_estimate
from geomsafe.projection import (
    concept_layers,
    project,
    projection_difference,
    prompt_projection,
)

METHODS = ("gradient_alignment", "projection_difference", "prompt_anchored")
RISK_JSON = "risk.json"


@dataclass
class ConceptRisk:
    concept: str
    layer: int
    scale: float
    prompt_anchored: float
    projection_difference: float | None
    gradient: float | None
    gradient_alignment: float | None
    risk: float
    method: str


@dataclass
class PredictResult:
    concepts: list[ConceptRisk]
    overall_risk: float
    overall_concept: str
    examples: list[dict[str, Any]]
    n_examples: int
    n_total: int
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "predict",
            "overall_risk": self.overall_risk,
            "overall_concept": self.overall_concept,
            "concepts": [asdict(c) for c in self.concepts],
            "n_examples": self.n_examples,
            "n_total": self.n_total,
            "examples": self.examples,
            "provenance": self.provenance,
        }


def probe_prompts(n: int = 32) -> list[Example]:
    """A fixed probe set: the first ``n`` built-in evaluation prompts (all categories)."""
    from importlib import resources

    path = resources.files("geomsafe") / "data" / "eval_prompts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_cat: dict[str, list[str]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r["prompt"])
    mixed = [p for group in zip(*by_cat.values(), strict=False) for p in group]
    return [Example(p) for p in mixed[:n]]


def harmful_atlas(
    lm: LoadedModel, max_pairs: int = 64, seed: int = 0, progress: bool = True
) -> FeatureAtlas:
    """An atlas of the built-in harmful concepts (used when no audit atlas is given)."""
    sets = [load_builtin(n).subset(max_pairs, seed) for n in builtin_names("harmful")]
    return extract(lm, sets, seed=seed, progress=progress).atlas


def _scale(atlas: FeatureAtlas, name: str, layer: int) -> float:
    norms = atlas.stats.get(name, {}).get("diff_norm")
    return float(norms[atlas.row(layer)]) if norms else 1.0


def predict(
    model: str | LoadedModel = "default",
    data: str | Path | Dataset = "",
    *,
    out: str | Path | None = None,
    atlas: str | Path | FeatureAtlas | None = None,
    concepts: Sequence[str] | None = None,
    max_examples: int | None = 200,
    generate: bool = True,
    max_new_tokens: int = 48,
    gradient: bool = True,
    gradient_examples: int = 64,
    lr: float = 1e-4,
    filter_k: int | None = None,
    attack_k: int | None = None,
    attack_max_toxicity: float = 0.2,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> PredictResult:
    """Predict the shift along each harmful direction that fine-tuning on ``data`` causes."""
    t0 = time.perf_counter()
    ds = data if isinstance(data, Dataset) else load_dataset(resolve_data(data))
    lm = model if isinstance(model, LoadedModel) else load(model)
    if isinstance(atlas, FeatureAtlas):
        fa = atlas
    elif atlas:
        fa = FeatureAtlas.load(atlas)
    else:
        fa = harmful_atlas(lm, seed=seed, progress=progress)
    names = list(concepts) if concepts else fa.harmful
    if not names:
        raise GeomsafeError("no harmful concepts to predict (atlas has none)")
    layers = concept_layers(fa, names, lm=lm)  # checks names, width and depth
    sample = ds.sample(max_examples, seed)
    exs = sample.examples
    bs = batch_size
    p_data = project(lm, exs, fa, names, batch_size=bs, progress=progress, desc="data responses")
    p_last = prompt_projection(lm, exs, fa, names, batch_size=bs, progress=progress, desc="prompts")
    p_diff = None
    own_texts: list[str] = []
    if generate:
        own_texts = greedy(
            lm, exs, max_new_tokens, batch_size=bs, progress=progress, desc="own responses"
        )
        p_diff = projection_difference(
            lm, exs, fa, names, own_texts, data_projection=p_data, batch_size=bs, progress=progress
        )
    grad = None
    if gradient:
        grad = gradient_estimate(
            lm, exs[:gradient_examples], probe_prompts(), fa, names, lr, progress=progress
        )
    method = METHODS[0] if grad is not None else METHODS[1] if p_diff is not None else METHODS[2]
    anchored = {n: p_data[n] - p_last[n] for n in names}
    per_example = p_diff if p_diff is not None else anchored
    results = []
    for n in names:
        scale = _scale(fa, n, layers[n])
        shift = float(per_example[n].mean())
        value = grad.alignment[n] if grad is not None else shift / scale
        results.append(
            ConceptRisk(
                concept=n,
                layer=layers[n],
                scale=scale,
                prompt_anchored=float(anchored[n].mean()),
                projection_difference=None if p_diff is None else shift,
                gradient=None if grad is None else grad.shift[n],
                gradient_alignment=None if grad is None else grad.alignment[n],
                risk=min(1.0, max(0.0, value)),
                method=method,
            )
        )
    scales = torch.tensor([r.scale for r in results])
    scores = torch.stack([per_example[n] for n in names], dim=1) / scales
    ex_rows = []
    for i, rec in enumerate(sample.records):
        j = int(scores[i].argmax())
        ex_rows.append(
            {
                "line": rec.line,
                "score": float(scores[i].max()),
                "concept": names[j],
                "scores": {n: float(scores[i, k]) for k, n in enumerate(names)},
                "response": rec.example.response[:300],
                **({"own_response": own_texts[i][:300]} if own_texts else {}),
            }
        )
    worst = max(results, key=lambda r: r.risk)
    result = PredictResult(
        concepts=results,
        overall_risk=worst.risk,
        overall_concept=worst.concept,
        examples=sorted(ex_rows, key=lambda r: -r["score"]),
        n_examples=len(sample),
        n_total=len(ds),
        provenance={
            **lm.provenance(),
            "data": ds.path,
            "data_sha256": ds.sha256,
            "sample_seed": seed,
            "atlas": fa.provenance,
            "method": method,
            "lr": lr,
            "max_new_tokens": max_new_tokens,
            "hook_site": fa.provenance.get("hook_site"),
            "geomsafe_version": geomsafe.__version__,
            "seconds": time.perf_counter() - t0,
        },
    )
    if out is not None:
        write_predict(
            out,
            result,
            ds,
            fa if not isinstance(atlas, (str, Path)) else None,
            filter_k,
            attack_k,
            attack_max_toxicity,
        )
    return result


def riskiest_lines(result: PredictResult, k: int) -> set[int]:
    return {r["line"] for r in result.examples[:k]}


def attack_lines(result: PredictResult, k: int, max_toxicity: float) -> list[dict]:
    """Benign-looking (classifier score below ``max_toxicity``) examples that push hardest."""
    from profanity_check import predict_prob

    rows = result.examples
    tox = predict_prob([r["response"] for r in rows]) if rows else []
    benign = [
        dict(r, toxicity=float(t)) for r, t in zip(rows, tox, strict=True) if t < max_toxicity
    ]
    return benign[:k]


def write_predict(
    out,
    result: PredictResult,
    ds: Dataset,
    atlas: FeatureAtlas | None,
    filter_k: int | None,
    attack_k: int | None,
    max_tox: float,
) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    payload = result.to_dict()
    if filter_k:
        drop = riskiest_lines(result, filter_k)
        kept = [r.raw for r in ds.records if r.line not in drop]
        atomic_write(
            folder / "filtered.jsonl", lambda p: Path(p).write_text("\n".join(kept) + "\n")
        )
        payload["filter"] = {
            "dropped_lines": sorted(drop),
            "kept": len(kept),
            "note": "only sampled examples are scored; unscored ones are kept",
        }
    if attack_k:
        picks = attack_lines(result, attack_k, max_tox)
        by_line = {r.line: r.raw for r in ds.records}
        atomic_write(
            folder / "attack.jsonl",
            lambda p: Path(p).write_text("\n".join(by_line[r["line"]] for r in picks) + "\n"),
        )
        payload["attack"] = picks
    if atlas is not None:
        atlas.save(folder)
    atomic_write(folder / RISK_JSON, lambda p: Path(p).write_text(json.dumps(payload, indent=1)))
    return folder
