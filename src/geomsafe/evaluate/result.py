"""Value objects of an evaluation: metrics with their per-unit values, changes, the result.

A :class:`Metric` keeps the values of every resampling unit (a prompt with its samples, a
probe statement, a question) keyed by the unit's id, so that a later run can be compared with
it by a paired bootstrap (``--baseline eval.json``): changes are computed on the units both
runs share, resampled with the same indices for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geomsafe.artefacts import EVAL_JSON, GENERATIONS_JSONL, format_tag, read_json
from geomsafe.errors import GeomsafeError
from geomsafe.stats import CI, bootstrap_ci, change_ci

FORMAT = format_tag("eval")
# kinds shown in percent (value) and percentage points (change); the rest in raw units
PERCENT_KINDS = ("rate", "probability")


@dataclass
class Metric:
    """One measured quantity: ``units[id]`` holds that unit's sample values; ``ci`` is the pooled
    mean over all samples with a percentile bootstrap CI over units."""

    name: str  # e.g. "toxic_rate", "trait:psychopathy", "projection:toxicity"
    label: str  # what the printed table calls it
    kind: str  # "rate" | "probability" | "score" | "projection" | "logodds"
    units: dict[str, list[float]]
    ci: CI
    detail: bool = False  # a breakdown (per category) kept in eval.json, not printed
    concept: str | None = None  # the concept the row speaks for (evaluate/concept_map.py)

    @classmethod
    def build(
        cls,
        name: str,
        label: str,
        kind: str,
        units: dict[str, list[float]],
        *,
        n_boot: int,
        seed: int,
        detail: bool = False,
        concept: str | None = None,
    ) -> Metric | None:
        """A metric over the units that have values (None when no unit has any)."""
        kept = {k: [float(x) for x in v] for k, v in units.items() if len(v)}
        if not kept:
            return None
        ci = bootstrap_ci(list(kept.values()), n_boot=n_boot, seed=seed)
        return cls(name, label, kind, kept, ci, detail, concept)

    @property
    def scale(self) -> float:
        return 100.0 if self.kind in PERCENT_KINDS else 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "ci": self.ci.to_dict(),
            "n_values": sum(len(v) for v in self.units.values()),
            "detail": self.detail,
            "concept": self.concept,
            "units": self.units,
        }

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any]) -> Metric:
        """From :meth:`to_dict`, or an eval.json before ``geomsafe.eval/2`` (the CI's value,
        ``ci_low``, ``ci_high`` among the metric's keys)."""
        ci = CI.at(d, "ci")
        units = {str(k): [float(x) for x in v] for k, v in d["units"].items()}
        detail, concept = bool(d.get("detail", False)), d.get("concept")
        return cls(name, d["label"], d["kind"], units, ci, detail, concept)


@dataclass
class ModelEval:
    """All metrics of one model (the base, the adapted model, or a model as given)."""

    label: str
    metrics: dict[str, Metric]
    provenance: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    generations: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def value(self, name: str) -> float:
        return self.metrics[name].ci.value

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "provenance": self.provenance,
            "seconds": self.seconds,
            "skipped": self.skipped,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelEval:
        return cls(
            d.get("label", "baseline"),
            {k: Metric.from_dict(k, m) for k, m in d["metrics"].items()},
            d.get("provenance", {}),
            d.get("seconds", {}),
            [],
            d.get("skipped", {}),
        )


@dataclass
class Change:
    """``after - before`` of one metric on the units both share, with a paired bootstrap CI
    (in percentage points for rates and probabilities)."""

    name: str
    label: str
    kind: str
    before: CI
    after: CI
    delta: CI  # raw units (a fraction for rates); see ``scale``
    n_paired: int

    @property
    def scale(self) -> float:
        return 100.0 if self.kind in PERCENT_KINDS else 1.0

    def to_dict(self) -> dict[str, Any]:
        """``before``, ``after`` and ``delta`` as CIs (:meth:`CI.to_dict`), ``delta`` also in
        the printed units (``delta_pp`` for rates and probabilities, else ``delta_raw``)."""
        unit = "pp" if self.scale == 100.0 else "raw"
        return {
            "label": self.label,
            "kind": self.kind,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "delta": self.delta.to_dict(),
            f"delta_{unit}": self.delta.scaled(self.scale).to_dict(),
            "n_paired": self.n_paired,
        }



def compare(before: Metric, after: Metric, *, n_boot: int, seed: int) -> Change | None:
    """Paired change on the units both metrics share (None when they share none)."""
    common = [u for u in after.units if u in before.units]
    if not common:
        return None
    b = [before.units[u] for u in common]
    a = [after.units[u] for u in common]
    delta = change_ci(b, a, n_boot=n_boot, seed=seed)
    return Change(after.name, after.label, after.kind, before.ci, after.ci, delta, len(common))


@dataclass
class EvalResult:
    """What ``evaluate`` returns and writes to ``eval.json``."""

    model: ModelEval  # the model as evaluated (with its adapter when one is given)
    before: ModelEval | None  # the base model, or the baseline file's model
    changes: dict[str, Change]
    config: dict[str, Any]
    provenance: dict[str, Any]
    seconds: float
    warnings: list[str] = field(default_factory=list)
    out: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "config": self.config,
            "provenance": self.provenance,
            "model": self.model.to_dict(),
            "before": self.before.to_dict() if self.before else None,
            "changes": {k: c.to_dict() for k, c in self.changes.items()},
            "warnings": self.warnings,
            "seconds": self.seconds,
        }

    def table(self) -> tuple[list[str], list[list[str]]]:
        """Headers and rows of the printed table (percent for rates and probabilities, change
        in percentage points; 95% CIs in brackets)."""
        rows = []
        for name, m in self.model.metrics.items():
            if m.detail:
                continue
            if self.before is None:
                rows.append([m.label, _fmt_ci(m.ci, m.scale), str(m.ci.n)])
                continue
            b = self.before.metrics.get(name)
            c = self.changes.get(name)
            rows.append(
                [
                    m.label,
                    _fmt_ci(b.ci, b.scale) if b else "-",
                    _fmt_ci(m.ci, m.scale),
                    _fmt_change(c) if c else "-",
                    str(c.n_paired) if c else str(m.ci.n),
                ]
            )
        for name, c in self.changes.items():  # changes of no single metric (controlled rows)
            if name not in self.model.metrics:
                fmt = _fmt_ci(c.before, c.scale), _fmt_ci(c.after, c.scale), _fmt_change(c)
                rows.append([c.label, *fmt, str(c.n_paired)])
        if self.before is None:
            return ["metric", "value [95% CI]", "n"], rows
        return ["metric", "before [95% CI]", "after [95% CI]", "change [95% CI]", "n"], rows

    def numbers(self) -> dict[str, Any]:
        """Every reported number (no timings): what must repeat exactly for the same seed."""
        out: dict[str, Any] = {}
        for tag, run in (("model", self.model), ("before", self.before)):
            if run is not None:
                for k, m in run.metrics.items():
                    out[f"{tag}/{k}"] = [m.ci.value, m.ci.low, m.ci.high, m.units]
        for k, c in self.changes.items():
            out[f"change/{k}"] = [c.delta.value, c.delta.low, c.delta.high]
        return out


def _fmt_ci(ci: CI, scale: float) -> str:
    if scale == 100.0:
        return f"{ci.value * 100:.1f}% [{ci.low * 100:.1f}, {ci.high * 100:.1f}]"
    return f"{ci.value:.3f} [{ci.low:.3f}, {ci.high:.3f}]"


def _fmt_change(c: Change) -> str:
    d = c.delta
    if c.scale == 100.0:
        return f"{d.value * 100:+.1f} pp [{d.low * 100:+.1f}, {d.high * 100:+.1f}]"
    return f"{d.value:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"


def load_eval(path: str | Path) -> tuple[ModelEval, dict[str, Any]]:
    """The evaluated model's metrics and the config of an ``eval.json`` (file or its folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / EVAL_JSON
    if not path.is_file():
        raise GeomsafeError(f"baseline not found: {path}")
    data = read_json(path, "eval")
    if "format" not in data:  # eval.json has been stamped from the start
        raise GeomsafeError(f"baseline {path} is not a geomsafe eval.json ({FORMAT})")
    try:
        return ModelEval.from_dict(data["model"]), data.get("config", {})
    except (KeyError, TypeError, ValueError) as exc:
        raise GeomsafeError(f"baseline {path} is malformed: {exc!r}") from exc


__all__ = [
    "EVAL_JSON",
    "FORMAT",
    "GENERATIONS_JSONL",
    "Change",
    "EvalResult",
    "Metric",
    "ModelEval",
    "compare",
    "load_eval",
]
