"""The geometry of a fine-tuning task: the direction it pushes the residual stream, its overlap
with the harmful features (with null and CI), and the predicted shift along each of them.

Task direction at layer l: the mean difference between the activations of the data set's
responses and of the model's own (greedy) responses to the same prompts, over response
tokens, unit-normalised; the same estimator as a concept direction, with the data set's
response as the positive and the model's own as the negative side of each pair. Its overlap
score, permutation null (sign flips of the pairs) and bootstrap CI are those of
:func:`geomsafe.geometry.overlap`. Predicted shift of harmful concept h: the mean over pairs of
:func:`geomsafe.projection.projection_difference` on h at its best layer, the function behind
``predict``'s ``projection_difference`` estimator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from geomsafe.atlas import FeatureAtlas
from geomsafe.concepts import ConceptSet, Pair
from geomsafe.datasets import Dataset
from geomsafe.directions import ConceptActivations, capture_concept, unit
from geomsafe.evaluate.generate import greedy
from geomsafe.formatting import Example
from geomsafe.geometry.overlap import OverlapResult, overlap
from geomsafe.models import LoadedModel
from geomsafe.projection import own_response, projection_difference


@dataclass
class TaskGeometry:
    overlap: OverlapResult
    predicted: dict[str, float]  # projection difference per harmful concept
    n_pairs: int


def task_pairs(
    lm: LoadedModel,
    data: Dataset,
    max_new_tokens: int,
    progress: bool = False,
    *,
    batch_size: int = 8,
) -> ConceptSet:
    """Pairs (prompt, data set's response, model's own greedy response; see
    :func:`geomsafe.projection.own_response`)."""
    exs = data.examples
    texts = greedy(lm, exs, max_new_tokens, batch_size=batch_size, progress=progress)
    pairs = [Pair(e.prompt, e.response, own_response(t)) for e, t in zip(exs, texts, strict=True)]
    return ConceptSet("task", "target", pairs, source=data.path)


def task_geometry(
    lm: LoadedModel,
    pairs: ConceptSet,
    atlas: FeatureAtlas,
    activations: dict[str, ConceptActivations],
    band: Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 8,
    progress: bool = False,
) -> TaskGeometry:
    """Overlap of the task's direction with the atlas's harmful features over ``band``, and the
    predicted shift per harmful concept."""
    name = pairs.name
    acts = capture_concept(lm, pairs, atlas.layers, "response", batch_size, progress, False)
    raw = acts.pos.mean(0) - acts.neg.mean(0)
    with_task = dataclasses.replace(
        atlas,
        directions={**atlas.directions, name: unit(raw)},
        kinds={**atlas.kinds, name: "target"},
    )
    result = overlap(with_task, {**activations, name: acts}, name, band, atlas.harmful, seed=seed)
    difference = projection_difference(
        lm,
        [Example(p.prompt, p.positive) for p in pairs.pairs],
        atlas,
        atlas.harmful,
        [p.negative for p in pairs.pairs],
        batch_size=batch_size,
        progress=progress,
    )
    predicted = {h: float(v.mean()) for h, v in difference.items()}
    return TaskGeometry(result, predicted, len(pairs.pairs))
