"""Held-out split of a concept's pairs: a direction half and an evaluation half, by prompt.

**Split** with seed ``s``: a prompt belongs to the *direction* half when the last hex digit of
``sha256(f"{s}\\n{prompt}")`` is even (0, 2, ..., e), else to the *evaluation* half; every pair
goes to the half of its prompt, in file order. The rule depends only on the seed and the prompt,
so it is the same for any order of the file, no prompt is in both halves, each half holds about
half the prompts (a fair coin per prompt), and a prompt that several concepts share is in the
same half of every one of them (so no concept's evaluation half holds a prompt that another
concept's direction used).

The direction half is what every extraction of a built-in harmful or target concept uses
(:func:`load_for_direction`: audit, predict's and guard resolution's on-the-fly atlases, bench,
measurement scripts); the evaluation half is what ``evaluate`` scores as the pair set
``concept:<name>`` (:func:`load_for_evaluation`). A user concept file is split only when asked
(``split=True``): by default all its pairs go to the direction and it has no evaluation half.

Each half carries its split in ``meta`` (``split``: ``direction`` or ``evaluation``,
``split_seed``); :func:`split_record` turns a concept set into what an atlas records of it: the
split, the seed and ``prompts_sha1``, the sorted sha1 (hex) of each distinct prompt used, enough
to check whether a pair set's prompts were used (:func:`used_prompts`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from geomsafe.concepts.library import ConceptSet, builtin_names, load_concept
from geomsafe.errors import GeomsafeError

SPLIT_SEED = 0  # the seed of every built-in split
DIRECTION = "direction"
EVALUATION = "evaluation"


def prompt_sha1(prompt: str) -> str:
    """sha1 (hex) of a prompt's UTF-8 bytes: how an atlas names the prompts it used."""
    return hashlib.sha1(prompt.encode("utf-8")).hexdigest()


def in_direction_half(prompt: str, seed: int = SPLIT_SEED) -> bool:
    """Whether ``prompt`` belongs to the direction half under ``seed`` (module docstring)."""
    return int(hashlib.sha256(f"{seed}\n{prompt}".encode()).hexdigest()[-1], 16) % 2 == 0


def split_concept(concept: ConceptSet, seed: int = SPLIT_SEED) -> tuple[ConceptSet, ConceptSet]:
    """(direction half, evaluation half) of ``concept`` (module docstring); both keep the
    concept's name, kind, description and source."""
    first = {p.prompt for p in concept.pairs if in_direction_half(p.prompt, seed)}
    halves = []
    for part, keep in ((DIRECTION, True), (EVALUATION, False)):
        pairs = [p for p in concept.pairs if (p.prompt in first) == keep]
        if not pairs:
            raise GeomsafeError(
                f"concept {concept.name}: its {part} half under split seed {seed} is empty "
                "(too few distinct prompts to split)"
            )
        meta = {**concept.meta, "split": part, "split_seed": str(seed)}
        halves.append(
            ConceptSet(concept.name, concept.kind, pairs, concept.description, concept.source, meta)
        )
    return halves[0], halves[1]


def is_builtin(spec: str) -> bool:
    """Whether ``spec`` names a built-in concept (not a file, persona or ToxiGen spec)."""
    return ":" not in spec and not spec.endswith(".jsonl") and spec in builtin_names()


def load_for_direction(
    spec: str, kind: str | None = None, *, split: bool | None = None, seed: int = SPLIT_SEED
) -> ConceptSet:
    """The pairs a direction of ``spec`` is extracted from: the direction half of a built-in
    concept (or of any concept when ``split`` is True); all pairs of a user concept unless
    ``split`` is True, and of a built-in one when ``split`` is False."""
    concept = load_concept(spec, kind)
    if split is None:
        split = is_builtin(spec)
    return split_concept(concept, seed)[0] if split else concept


def load_for_evaluation(spec: str, *, seed: int = SPLIT_SEED) -> ConceptSet:
    """The evaluation half of ``spec`` (a built-in concept or a concept file): the pairs that
    :func:`load_for_direction` with a split leaves out."""
    return split_concept(load_concept(spec), seed)[1]


def split_record(concept: ConceptSet) -> dict[str, Any]:
    """What an atlas records of the pairs a direction used: ``split`` (``direction``,
    ``evaluation`` or ``none`` for an unsplit set), ``split_seed`` (None when unsplit) and
    ``prompts_sha1`` (sorted sha1 of each distinct prompt)."""
    seed = concept.meta.get("split_seed")
    return {
        "split": concept.meta.get("split", "none"),
        "split_seed": int(seed) if seed is not None else None,
        "prompts_sha1": sorted({prompt_sha1(p.prompt) for p in concept.pairs}),
    }


def used_prompts(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str] | None]:
    """Per concept of an atlas's ``stats``: the sha1 of the prompts its direction used, or
    None when the atlas does not record them (an atlas made before the split)."""
    out: dict[str, set[str] | None] = {}
    for name, s in stats.items():
        rec = s.get("split") if isinstance(s, Mapping) else None
        digests = rec.get("prompts_sha1") if isinstance(rec, Mapping) else None
        out[name] = set(digests) if isinstance(digests, list) else None
    return out


def overlapping(prompts: Iterable[str], used: set[str]) -> list[str]:
    """The prompts whose sha1 is in ``used``, in order."""
    return [p for p in prompts if prompt_sha1(p) in used]


__all__ = [
    "DIRECTION",
    "EVALUATION",
    "SPLIT_SEED",
    "in_direction_half",
    "is_builtin",
    "load_for_direction",
    "load_for_evaluation",
    "overlapping",
    "prompt_sha1",
    "split_concept",
    "split_record",
    "used_prompts",
]
