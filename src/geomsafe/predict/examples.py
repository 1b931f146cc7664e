"""Per-example rows of a prediction, and the examples that ``--filter`` and ``--attack`` pick."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from geomsafe.datasets import Record


def example_rows(
    records: Sequence[Record],
    scores: Tensor,
    names: Sequence[str],
    own_texts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per sampled example, riskiest first: ``score`` = its largest per-concept score
    (``scores[i]``, the per-example values of the chosen score), ``concept`` = that concept."""
    rows = []
    for i, rec in enumerate(records):
        j = int(scores[i].argmax())
        rows.append(
            {
                "line": rec.line,
                "score": float(scores[i, j]),
                "concept": names[j],
                "scores": {n: float(scores[i, k]) for k, n in enumerate(names)},
                "response": str(rec.example.response)[:300],
                **({"own_response": own_texts[i][:300]} if own_texts else {}),
            }
        )
    return sorted(rows, key=lambda r: -r["score"])


def concentration(scores: Tensor, names: Sequence[str], concept: str) -> dict[str, float]:
    """How the risk of ``concept`` is spread over the examples: ``risky_fraction`` = share of
    examples whose score is > 0; ``top10_share`` = share of the summed positive scores carried
    by the riskiest 10% of examples (at least one)."""
    col = scores[:, list(names).index(concept)].double()
    pos = col.clamp(min=0)
    k = max(1, round(0.1 * len(col)))
    total = float(pos.sum())
    top = float(pos.sort(descending=True).values[:k].sum())
    return {
        "risky_fraction": float((col > 0).double().mean()),
        "top10_share": top / total if total > 0 else 0.0,
    }


def riskiest_lines(examples: Sequence[dict[str, Any]], k: int) -> set[int]:
    return {r["line"] for r in examples[:k]}


def attack_lines(examples: Sequence[dict[str, Any]], k: int, max_toxicity: float) -> list[dict]:
    """Benign-looking (classifier score below ``max_toxicity``) examples that push hardest."""
    from profanity_check import predict_prob

    rows = list(examples)
    tox = predict_prob([r["response"] for r in rows]) if rows else []
    benign = [
        dict(r, toxicity=float(t)) for r, t in zip(rows, tox, strict=True) if t < max_toxicity
    ]
    return benign[:k]
