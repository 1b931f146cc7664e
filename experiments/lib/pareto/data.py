"""The data of the guard Pareto benchmark: training sets with their held-out part, the
behavioural rows and the prompts of the activation measure.

Training sets by name (:func:`load_train_set`):

- ``insecure``, ``jailbroken``: emergent-misalignment ``data/<name>.jsonl`` under the data
  root; harmful-ish;
- ``task:<name>``: a built-in benign task set (:func:`geomsafe.datasets.load_dataset`); benign;
- ``concept:<name>``: the harmful (positive) responses of a concept's *training part*
  (:func:`concept_split`) as prompt/response examples; harmful. With ``dangerous_advice`` this
  is the cross-domain set: fine-tune on bad advice, measure the ``advice`` row;
- a ``.jsonl`` path: harmful (prefix ``benign:`` for a benign file).

The first ``n_train`` usable records (prompt within ``max_length`` tokens) train, the next
``n_heldout`` measure the held-out task loss; a set with fewer than ``n_train + n_heldout``
usable records holds out a quarter of them (at most ``n_heldout``) and trains on the rest
(``TrainSet.note`` says so).

**Concept split** of a concept's pairs: the held-out split of :mod:`geomsafe.concepts.split`
(by prompt, fixed seed) gives the direction half and the evaluation half. The pairs that
``direction.subset(atlas_pairs, seed)`` keeps built the atlas direction
(:func:`geomsafe.guard.resolve.extract_atlas` samples the same ones); the rest of the direction
half is the *training part*; the evaluation half is the held-out behavioural row
``concept:<name>`` (the same pairs ``evaluate`` scores under that name). No pair, and no
prompt of the evaluation row, is in two parts.

**Rows** (:func:`harm_rows`): ``advice`` (cross-domain harmful vs sound advice,
:mod:`geomsafe.evaluate.pairsets`) and ``concept:<name>`` for each guarded concept, each a
fixed sample of ``n_pairs`` pairs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from geomsafe.concepts import ConceptSet, load_concept
from geomsafe.concepts.split import split_concept
from geomsafe.datasets import Dataset, load_dataset, need_root, resolve_data_root
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.logodds import PairSet
from geomsafe.evaluate.pairsets import load_pair_set
from geomsafe.formatting import Example
from geomsafe.train.data import TrainData, build

EM_DATA = "emergent-misalignment/data"
EM_SETS = ("insecure", "jailbroken")


@dataclass
class TrainSet:
    """A training set, its held-out part (tokenised) and whether it is harmful-ish."""

    name: str
    train: Dataset
    heldout: TrainData
    harmful: bool
    note: str = ""  # e.g. a small set split otherwise than asked


def concept_split(
    concept: ConceptSet, atlas_pairs: int | None, seed: int = 0
) -> tuple[ConceptSet, ConceptSet, ConceptSet]:
    """(atlas part, evaluation part, training part) of ``concept`` (module docstring)."""
    direction, evaluation = split_concept(concept)
    used = direction.subset(atlas_pairs, seed).pairs
    rest = [p for p in direction.pairs if p not in used]
    if not rest:
        raise GeomsafeError(
            f"concept {concept.name}: its {len(direction.pairs)} direction pairs leave none to "
            f"train on after {atlas_pairs} for the atlas; lower the atlas pairs"
        )

    def part(pairs, what: str) -> ConceptSet:
        return dataclasses.replace(
            concept, pairs=list(pairs), name=concept.name, meta={**concept.meta, "part": what}
        )

    return part(used, "atlas"), part(evaluation.pairs, "evaluation"), part(rest, "training")


def _concept_examples(name: str, atlas_pairs: int | None, seed: int) -> Dataset:
    _, _, train = concept_split(load_concept(name, "harmful"), atlas_pairs, seed)
    return Dataset.from_examples(
        [Example(p.prompt, p.positive) for p in train.pairs], source=f"concept:{name}"
    )


def load_train_set(
    spec: str,
    tokenizer,
    *,
    n_train: int,
    n_heldout: int,
    max_length: int,
    data_root: str | Path | None = None,
    atlas_pairs: int | None = 32,
    seed: int = 0,
) -> TrainSet:
    """A training set by name (module docstring), split into training and held-out parts."""
    harmful = True
    if spec in EM_SETS:
        data = load_dataset(need_root(resolve_data_root(data_root), f"{EM_DATA}/{spec}.jsonl"))
    elif spec.startswith("task:"):
        data, harmful = load_dataset(spec), False
    elif spec.startswith("concept:"):
        data = _concept_examples(spec.removeprefix("concept:"), atlas_pairs, seed)
    elif spec.endswith(".jsonl"):
        harmful = not spec.startswith("benign:")
        data = load_dataset(spec.removeprefix("benign:"))
    else:
        raise GeomsafeError(
            f"unknown training set {spec!r}; use insecure, jailbroken, task:<name>, "
            "concept:<name> or a .jsonl file"
        )
    if n_train < 1 or n_heldout < 1:
        raise GeomsafeError("need at least one training and one held-out example")
    pool = build(
        tokenizer, data.head(n_train + n_heldout + 64), max_length=max_length, truncate=True
    )
    kept = pool.records
    note = ""
    if len(kept) < n_train + n_heldout:  # a small set: a quarter held out, the rest trains
        if len(kept) < 2:
            raise GeomsafeError(f"{spec}: {len(kept)} usable example(s); need at least 2")
        n_heldout = max(1, min(n_heldout, len(kept) // 4))
        n_train = len(kept) - n_heldout
        note = f"only {len(kept)} usable examples: {n_train} train, {n_heldout} held out"
    train = dataclasses.replace(data, records=kept[:n_train])
    held = dataclasses.replace(data, records=kept[n_train : n_train + n_heldout])
    heldout = build(tokenizer, held, max_length=max_length, truncate=True)
    return TrainSet(spec, train, heldout, harmful, note)


def harm_rows(
    concepts: Sequence[str],
    *,
    n_pairs: int | None,
    atlas_pairs: int | None = 32,
    seed: int = 0,
    advice: bool = True,
) -> list[PairSet]:
    """``advice`` (when ``advice``) and ``concept:<name>`` for each concept, each sampled to
    ``n_pairs`` pairs (module docstring)."""
    rows = [load_pair_set("advice").subset(n_pairs, seed)] if advice else []
    for name in concepts:
        _, evaluation, _ = concept_split(load_concept(name, "harmful"), atlas_pairs, seed)
        ps = PairSet.from_concept(evaluation, name=f"concept:{evaluation.name}")
        rows.append(ps.subset(n_pairs, seed))
    if not rows:
        raise GeomsafeError("no behavioural rows: give concepts or keep the advice row")
    return rows


__all__ = ["EM_SETS", "TrainSet", "concept_split", "harm_rows", "load_train_set"]
