"""Behavioural gradient estimate: how one step on a data set moves each concept's log-odds.

**Log-odds** of harmful concept h: ``lo_h = mean over h's pairs of logp(harmful)/len -
logp(harmless)/len`` under the chat template (the quantity of
:mod:`geomsafe.evaluate.logodds`; pairs from :func:`geomsafe.predict.pairs.
concept_pairs_for_direction`). **Data loss** ``L_D``: the summed next-token loss of the data
set's response tokens divided by their number, so ``∇L_D = sum_i g_i`` with ``g_i`` example i's
share. With the LoRA-shaped sketches ``S`` of :mod:`geomsafe.predict.sketch`:

- ``change_h = -lr <S(L_D), S(lo_h)>``: the first-order change of ``lo_h`` after the step
  ``ΔW = -lr ∇W(L_D) AᵀA`` (nats per token; an unbiased estimate of the full-weight step's).
- ``alignment_h = -<S(L_D), S(lo_h)> / (|S(L_D)| |S(lo_h)|)`` (-1..1, scale-free).
- per example: ``contribution_ih = -<S(g_i), S(lo_h)> / (|S(L_D)| |S(lo_h)|)``, which sum
  over i to ``alignment_h`` (the norm held at the whole set's); the reported per-example score
  is ``n * contribution_ih`` (the alignment a set of n such examples would have, at that norm).

Under :func:`geomsafe.distributed.data_parallel` each rank backpropagates its share of the
pair and data batches; the sketches and per-example inner products are summed over the ranks.

Cost: one forward+backward per concept pair response (cached per model, pairs and sketch) and
one per data example; two small einsums per linear module per batch for the per-example scores.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from geomsafe import distributed
from geomsafe.evaluate.logodds import PairSet, response_logps
from geomsafe.formatting import Example, encode
from geomsafe.models import LoadedModel
from geomsafe.predict.likelihood import length_batches
from geomsafe.predict.sketch import inner, sketch_matrices, sketching, stack

# per model object (weakly held: an entry goes with its model, so a new model that reuses a
# freed one's address never reads its sketches), then by (pairs, max_length, cache_key)
_CACHE: weakref.WeakKeyDictionary[object, dict[tuple, dict[str, Tensor]]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_SIZE = 32  # entries per model


def logodds_sketch(
    lm: LoadedModel,
    pairs: PairSet,
    matrices: dict[str, Tensor],
    *,
    cache_key: tuple = (),
    batch_size: int = 4,
    max_tokens: int | None = 256,
    max_length: int = 256,
    progress: bool = True,
) -> dict[str, Tensor]:
    """The sketch of ``∇ lo`` for the pair set's mean log-odds (module docstring); cached in
    memory per model object (held weakly) by (pairs sha256, ``cache_key``)."""
    key = (pairs.sha256(), max_length, *cache_key)
    cached = _CACHE.setdefault(lm.model, {})
    if key in cached:
        return cached[key]
    examples = [ex for p in pairs.pairs for ex in p.examples()]
    encoded = [encode(lm.tokenizer, ex, max_length) for ex in examples]
    n_pairs = len(pairs.pairs)
    # lo = sum_j w_j logp_j, w = +1/(len * P) for a harmful response, -1/(len * P) otherwise
    weights = [
        (1 if j % 2 == 0 else -1) / ((e.length - e.prompt_len) * n_pairs)
        for j, e in enumerate(encoded)
    ]
    batches = distributed.mine(list(length_batches(encoded, batch_size, max_tokens)))
    with sketching(lm, matrices) as sk:
        for idx in tqdm(batches, desc=f"log-odds gradient {pairs.name}", disable=not progress):
            lp = response_logps(lm, [encoded[i] for i in idx])
            (lp * torch.tensor([weights[i] for i in idx], dtype=lp.dtype)).sum().backward()
    total = distributed.sum_dict(sk.total, lm.device)
    if len(cached) >= _CACHE_SIZE:
        cached.pop(next(iter(cached)))
    cached[key] = total
    return total


@dataclass
class BehaviouralEstimate:
    """Per concept: ``change`` (first-order log-odds change after one step of size lr),
    ``alignment``; ``contributions`` ``[n, H]`` (module docstring), columns in ``names`` order."""

    names: list[str]
    change: dict[str, float]
    alignment: dict[str, float]
    contributions: Tensor


def behavioural_estimate(
    lm: LoadedModel,
    data: Sequence[Example],
    concept_pairs: dict[str, PairSet],
    *,
    lr: float = 1e-4,
    rank: int = 16,
    seed: int = 0,
    batch_size: int = 4,
    max_tokens: int | None = 256,
    max_length: int = 256,
    progress: bool = True,
) -> BehaviouralEstimate:
    """The behavioural estimate of ``data`` for each concept of ``concept_pairs`` (module
    docstring)."""
    names = list(concept_pairs)
    matrices = sketch_matrices(lm, rank, seed)
    concept_sk = [
        logodds_sketch(
            lm,
            concept_pairs[n],
            matrices,
            cache_key=(rank, seed),
            batch_size=batch_size,
            max_tokens=max_tokens,
            max_length=max_length,
            progress=progress,
        )
        for n in names
    ]
    encoded = [encode(lm.tokenizer, ex, max_length) for ex in data]
    total_tokens = sum(e.length - e.prompt_len for e in encoded)
    dots = torch.zeros(len(data), len(names), dtype=torch.float64)
    with sketching(lm, matrices, stack(concept_sk, list(matrices))) as sk:
        batches = distributed.mine(list(length_batches(encoded, batch_size, max_tokens)))
        for idx in tqdm(batches, desc="data gradient", disable=not progress):
            sk.new_batch(len(idx))
            nll = -response_logps(lm, [encoded[i] for i in idx])
            (nll.sum() / total_tokens).backward()
            dots[idx] = sk.per_example
    distributed.all_sum(dots)  # each rank filled its own examples' rows
    data_total = distributed.sum_dict(sk.total, lm.device)
    data_norm = inner(data_total, data_total) ** 0.5
    change, alignment = {}, {}
    contributions = torch.zeros_like(dots)
    for k, (n, c) in enumerate(zip(names, concept_sk, strict=True)):
        dot = float(dots[:, k].sum())
        scale = data_norm * inner(c, c) ** 0.5
        change[n] = -lr * dot
        alignment[n] = -dot / scale if scale > 0 else 0.0
        contributions[:, k] = -dots[:, k] / scale if scale > 0 else 0.0
    return BehaviouralEstimate(names, change, alignment, contributions)
