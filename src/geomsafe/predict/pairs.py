"""Which response pairs stand for a harmful concept in predict's behavioural estimate."""

from __future__ import annotations

from geomsafe.concepts import load_for_direction
from geomsafe.evaluate.logodds import PairSet


def concept_pairs_for_direction(concept: str) -> PairSet:
    """The pairs of built-in concept ``concept`` that predict may use (positive = harmful):
    the concept's direction half (:func:`geomsafe.concepts.load_for_direction`), so its
    evaluation half stays held out from predict as well as from the directions."""
    return PairSet.from_concept(load_for_direction(concept))
