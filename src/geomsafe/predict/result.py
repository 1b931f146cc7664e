"""Value objects of a prediction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

NO_CONCEPT = "none"


@dataclass
class ConceptRisk:
    """One harmful concept's estimates. ``risk`` = clip(the method's value, 0, 1) and
    ``risk_ci`` its bootstrap interval (clipped the same way; None when the method has no
    per-example decomposition). Columns of estimators that did not run are None."""

    concept: str
    risk: float
    method: str
    risk_ci: tuple[float, float] | None = None
    layer: int | None = None
    scale: float | None = None
    prompt_anchored: float | None = None
    projection_difference: float | None = None
    gradient: float | None = None
    gradient_alignment: float | None = None
    behavioural_change: float | None = None
    behavioural_alignment: float | None = None


@dataclass
class PredictResult:
    """``overall_concept`` is the concept of the largest risk when that risk is > 0 and its
    CI excludes 0 (without a CI: when the risk is > 0), else ``"none"``."""

    concepts: list[ConceptRisk]
    overall_risk: float
    overall_concept: str
    overall_ci: tuple[float, float] | None
    method: str
    examples: list[dict[str, Any]]
    n_examples: int
    n_total: int
    example_score: str = ""
    concentration: dict[str, float] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "predict",
            "method": self.method,
            "overall_risk": self.overall_risk,
            "overall_concept": self.overall_concept,
            "overall_ci": list(self.overall_ci) if self.overall_ci else None,
            "concepts": [asdict(c) for c in self.concepts],
            "n_examples": self.n_examples,
            "n_total": self.n_total,
            "example_score": self.example_score,
            "concentration": self.concentration,
            "examples": self.examples,
            "provenance": self.provenance,
        }
