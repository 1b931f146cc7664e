"""Which response pairs stand for a harmful concept in predict's behavioural estimate."""

from __future__ import annotations

from geomsafe.concepts import load_builtin
from geomsafe.evaluate.logodds import PairSet


def concept_pairs_for_direction(concept: str) -> PairSet:
    """The pairs of built-in concept ``concept`` that predict may use (positive = harmful).

    Today: all of the concept's built-in pairs. Once the concepts are split by prompt into a
    direction half and an evaluation half, this returns the direction half, so the evaluation
    half stays held out from predict as well as from the directions."""
    return PairSet.from_concept(load_builtin(concept))
