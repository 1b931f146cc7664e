"""Risk estimators as typed callables, one small factory each, registered in
:data:`ESTIMATORS` (name -> :class:`EstimatorKind`, whose attributes say what the estimator
needs and gives; ``PredictConfig.method`` names one).

An estimator maps the :class:`Inputs` of a prediction to an :class:`Estimate`: per concept, the
value whose clip to [0, 1] is the risk; per example, values whose mean is that value (None when
the estimate does not decompose over examples, and then the risk has no CI); and the
:class:`~geomsafe.predict.result.ConceptRisk` columns it fills.

- ``behavioural``: alignment of the data set's gradient step with each concept's behavioural
  log-odds (:mod:`geomsafe.predict.behaviour`); per example ``n * contribution``.
- ``gradient_alignment``: alignment with the probe prompts' projection on the concept
  direction (:mod:`geomsafe.predict.gradient`); no per-example values.
- ``projection_difference``: mean over examples of (projection of the data's response - that
  of the model's own greedy response) / the concept's scale (``diff_norm`` in the atlas).
- ``prompt_anchored``: the same with the last prompt token in place of the own response.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import Tensor

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.generate import greedy
from geomsafe.formatting import Example
from geomsafe.models import LoadedModel
from geomsafe.predict.behaviour import behavioural_estimate
from geomsafe.predict.gradient import gradient_estimate, probe_prompts
from geomsafe.predict.pairs import concept_pairs_for_direction
from geomsafe.projection import project_with_prompt, projection_difference

if TYPE_CHECKING:
    from geomsafe.predict.config import PredictConfig


@dataclass
class Inputs:
    """What every estimator sees; ``cache`` shares projections and own responses between the
    estimators of one call."""

    lm: LoadedModel
    examples: list[Example]
    names: list[str]
    config: PredictConfig
    atlas: FeatureAtlas | None
    progress: bool = True
    cache: dict[str, Any] = field(default_factory=dict)

    def need_atlas(self, method: str) -> FeatureAtlas:
        if self.atlas is None:
            raise GeomsafeError(f"method {method} needs an atlas")
        return self.atlas


@dataclass
class Estimate:
    method: str
    value: dict[str, float]
    per_example: Tensor | None
    columns: dict[str, dict[str, float]]


Estimator = Callable[[Inputs], Estimate]


def scale(atlas: FeatureAtlas, name: str, layer: int) -> float:
    """Distance between the concept's positive and negative means along its direction."""
    norms = atlas.stats.get(name, {}).get("diff_norm")
    return float(norms[atlas.row(layer)]) if norms else 1.0


def _columns(t: Tensor, names: list[str]) -> dict[str, float]:
    return {n: float(t[:, k].mean()) for k, n in enumerate(names)}


def _data_projection(x: Inputs) -> dict[str, Tensor]:
    """The data responses' projections; with an atlas, the last prompt tokens' come from the
    same passes (``p_last``, :func:`~geomsafe.projection.project_with_prompt`)."""
    if "p_data" not in x.cache:
        x.cache["p_data"], x.cache["p_last"] = project_with_prompt(
            x.lm,
            x.examples,
            x.need_atlas("projection"),
            x.names,
            batch_size=x.config.batch_size,
            progress=x.progress,
            desc="data responses",
        )
    return x.cache["p_data"]


def _scales(x: Inputs) -> Tensor:
    import torch

    fa = x.need_atlas("projection")
    return torch.tensor([scale(fa, n, fa.best_layer(n)) for n in x.names])


def _by_concept(values: dict[str, Tensor], names: list[str]) -> Tensor:
    import torch

    return torch.stack([values[n].double() for n in names], dim=1)


def _scaled(method: str, shifts: dict[str, Tensor], x: Inputs) -> Estimate:
    """A projection estimate: per-example shifts / scale; the column is the raw mean shift."""
    raw = _by_concept(shifts, x.names)
    per = raw / _scales(x)
    return Estimate(method, _columns(per, x.names), per, {method: _columns(raw, x.names)})


def prompt_anchored() -> Estimator:
    def estimate(x: Inputs) -> Estimate:
        x.need_atlas("prompt_anchored")
        p_data = _data_projection(x)  # the last prompt tokens read from the same passes
        p_last = x.cache["p_last"]
        return _scaled("prompt_anchored", {n: p_data[n] - p_last[n] for n in x.names}, x)

    return estimate


def projection_difference_estimator() -> Estimator:
    def estimate(x: Inputs) -> Estimate:
        cfg = x.config
        if "own" not in x.cache:
            x.cache["own"] = greedy(
                x.lm,
                x.examples,
                cfg.max_new_tokens,
                batch_size=cfg.batch_size,
                progress=x.progress,
                desc="own responses",
            )
        diff = projection_difference(
            x.lm,
            x.examples,
            x.need_atlas("projection_difference"),
            x.names,
            x.cache["own"],
            data_projection=_data_projection(x),
            batch_size=cfg.batch_size,
            progress=x.progress,
        )
        return _scaled("projection_difference", diff, x)

    return estimate


def gradient_alignment() -> Estimator:
    def estimate(x: Inputs) -> Estimate:
        cfg = x.config
        ge = gradient_estimate(
            x.lm,
            x.examples[: cfg.gradient_examples],
            probe_prompts(),
            x.need_atlas("gradient_alignment"),
            x.names,
            cfg.lr,
            batch_size=cfg.grad_batch_size,
            max_length=cfg.max_length,
            progress=x.progress,
        )
        cols = {"gradient": ge.shift, "gradient_alignment": ge.alignment}
        return Estimate("gradient_alignment", dict(ge.alignment), None, cols)

    return estimate


def behavioural() -> Estimator:
    def estimate(x: Inputs) -> Estimate:
        cfg = x.config
        pairs = {
            n: concept_pairs_for_direction(n).subset(cfg.pairs_per_concept, cfg.seed)
            for n in x.names
        }
        be = behavioural_estimate(
            x.lm,
            x.examples,
            pairs,
            lr=cfg.lr,
            rank=cfg.sketch_rank,
            seed=cfg.seed,
            batch_size=cfg.grad_batch_size,
            max_tokens=cfg.grad_tokens,
            max_length=cfg.max_length,
            progress=x.progress,
        )
        per = be.contributions * len(x.examples)
        cols = {"behavioural_change": be.change, "behavioural_alignment": be.alignment}
        return Estimate("behavioural", dict(be.alignment), per, cols)

    return estimate


@dataclass(frozen=True)
class EstimatorKind:
    """A registered estimator: its factory and what it needs and gives.

    Attributes:
        name: the ``method`` name.
        build: the factory, ``build()(inputs) -> Estimate``.
        needs_atlas: it reads concept directions (an atlas is extracted when none is given).
        per_example: its estimate decomposes over examples (a CI, and a per-example score that
            can rank examples for ``--filter``/``--attack``).
        needs_generate: it needs the model's own responses (``generate=True``).
    """

    name: str
    build: Callable[[], Estimator]
    needs_atlas: bool
    per_example: bool
    needs_generate: bool = False


ESTIMATORS: dict[str, EstimatorKind] = {}


def register(kind: EstimatorKind) -> EstimatorKind:
    """Add an estimator kind to :data:`ESTIMATORS` under ``kind.name``."""
    ESTIMATORS[kind.name] = kind
    return kind


for _kind in (
    EstimatorKind("behavioural", behavioural, needs_atlas=False, per_example=True),
    EstimatorKind("gradient_alignment", gradient_alignment, needs_atlas=True, per_example=False),
    EstimatorKind(
        "projection_difference",
        projection_difference_estimator,
        needs_atlas=True,
        per_example=True,
        needs_generate=True,
    ),
    EstimatorKind("prompt_anchored", prompt_anchored, needs_atlas=True, per_example=True),
):
    register(_kind)


def per_example_scores() -> tuple[str, ...]:
    """The estimators whose values decompose over examples (they can rank examples)."""
    return tuple(name for name, kind in ESTIMATORS.items() if kind.per_example)
