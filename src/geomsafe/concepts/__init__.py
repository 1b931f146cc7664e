"""Concept data: contrastive pairs (same prompt, a positive and a negative response).

Built-in sets live in ``geomsafe/concepts/data/<name>.jsonl``: a header line
``{"concept", "kind", "description", "license"}`` then one ``{"prompt", "positive",
"negative"}`` object per line. Users add their own sets in the same format (the header is
optional there). External sets load through the same :func:`load_concept` entry point:
Anthropic persona statements (``anthropic-evals/persona/*.jsonl``) and ToxiGen demonstration
sentences (a ``toxigen/demonstrations`` folder).

Held-out split (:mod:`geomsafe.concepts.split`): directions of built-in concepts are extracted
from a direction half (:func:`load_for_direction`); ``evaluate`` scores the other half
(:func:`load_for_evaluation`).
"""

from geomsafe.concepts.library import (
    KINDS,
    ConceptSet,
    Pair,
    builtin_names,
    load_builtin,
    load_concept,
    load_jsonl,
    load_persona,
    load_toxigen,
)
from geomsafe.concepts.split import (
    SPLIT_SEED,
    load_for_direction,
    load_for_evaluation,
    split_concept,
    split_record,
)

__all__ = [
    "KINDS",
    "SPLIT_SEED",
    "ConceptSet",
    "Pair",
    "builtin_names",
    "load_builtin",
    "load_concept",
    "load_for_direction",
    "load_for_evaluation",
    "load_jsonl",
    "load_persona",
    "load_toxigen",
    "split_concept",
    "split_record",
]
