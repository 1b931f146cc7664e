"""Extract one direction per layer per concept: the mean difference of the residual stream
between positive and negative responses, unit-normalised, with held-out separation stats.

Direction of concept c at layer l: ``mean(act | positive) - mean(act | negative)`` over the
selected tokens (``response`` by default), then unit-normalised. Held-out separation: the
direction is fitted on a random ``1 - holdout`` share of the pairs and the AUROC of the
projection is measured on the rest (with its effect size, Cohen's d); the saved direction is
then refit on all pairs. Best layer: the highest held-out AUROC, ties (AUROC saturates at 1
for many concepts) broken by the larger held-out effect size.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from geomsafe.artefacts import geomsafe_version
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import HOOK_SITE, capture
from geomsafe.concepts import ConceptSet, split_record
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.layers import resolve_layers
from geomsafe.models import LoadedModel


@dataclass
class ConceptActivations:
    """Pooled activations of a concept's pairs: ``pos`` and ``neg`` are ``[n, L, D]``."""

    name: str
    kind: str
    layers: list[int]
    pos: Tensor
    neg: Tensor
    heads_pos: Tensor | None = None  # [n, L, H*hd] pooled per-head attention outputs
    heads_neg: Tensor | None = None

    @property
    def diffs(self) -> Tensor:
        return self.pos - self.neg


@dataclass
class Extraction:
    atlas: FeatureAtlas
    activations: dict[str, ConceptActivations]


def unit(x: Tensor, eps: float = 1e-12) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def mean_difference(pos: Tensor, neg: Tensor) -> Tensor:
    """``[n, L, D]`` x2 -> ``[L, D]`` unit directions."""
    return unit(pos.mean(0) - neg.mean(0))


def auroc(pos: Tensor, neg: Tensor) -> float:
    """Area under the ROC curve of scores ``pos`` (label 1) vs ``neg`` (label 0); ties count 1/2."""
    pos, neg = pos.flatten().double(), neg.flatten().double()
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (pos.numel() * neg.numel()))


def split_pairs(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    k = max(1, round(n * holdout))
    if n - k < 1:
        raise GeomsafeError(f"too few pairs ({n}) for a held-out split of {holdout}")
    return sorted(idx[k:]), sorted(idx[:k])


def effect_size(pos: Tensor, neg: Tensor) -> float:
    """Cohen's d of scores ``pos`` vs ``neg`` (difference of means over the pooled std)."""
    pos, neg = pos.flatten().double(), neg.flatten().double()
    if pos.numel() < 2 or neg.numel() < 2:
        return float("nan")
    pooled = ((pos.var() + neg.var()) / 2).sqrt().clamp_min(1e-12)
    return float((pos.mean() - neg.mean()) / pooled)


def separation(
    acts: ConceptActivations, holdout: float, seed: int
) -> tuple[list[float], list[float]]:
    """Held-out AUROC and held-out effect size (Cohen's d) per layer of the train-split
    direction."""
    train, test = split_pairs(acts.pos.shape[0], holdout, seed)
    direction = mean_difference(acts.pos[train], acts.neg[train])  # [L, D]
    pos_s = torch.einsum("nld,ld->nl", acts.pos[test], direction)
    neg_s = torch.einsum("nld,ld->nl", acts.neg[test], direction)
    layers = range(direction.shape[0])
    aucs = [auroc(pos_s[:, j], neg_s[:, j]) for j in layers]
    return aucs, [effect_size(pos_s[:, j], neg_s[:, j]) for j in layers]


def best_row(aucs: Sequence[float], effects: Sequence[float]) -> int:
    """The row with the highest held-out AUROC (to 3 decimals); ties, common when AUROC
    saturates at 1, go to the larger held-out effect size, then to the earlier layer."""
    return max(range(len(aucs)), key=lambda j: (round(aucs[j], 3), effects[j], -j))


def capture_concept(
    lm: LoadedModel,
    concept: ConceptSet,
    layers: Sequence[int],
    tokens: str = "response",
    batch_size: int = 16,
    progress: bool = True,
    heads: bool = False,
) -> ConceptActivations:
    return capture_concepts(lm, [concept], layers, tokens, batch_size, progress, heads)[
        concept.name
    ]


def _hashable(prompt: str | Sequence[Mapping[str, str]]) -> Hashable:
    """A prompt as a dictionary key (a chat prompt is a sequence of message dicts)."""
    if isinstance(prompt, str):
        return prompt
    return tuple(tuple(sorted(m.items())) for m in prompt)


def capture_concepts(
    lm: LoadedModel,
    concepts: Sequence[ConceptSet],
    layers: Sequence[int],
    tokens: str = "response",
    batch_size: int = 16,
    progress: bool = True,
    heads: bool = False,
) -> dict[str, ConceptActivations]:
    """Every concept's activations from one capture of their distinct examples: batches are
    length-sorted across concepts, shared prompts run once, and an example that several
    concepts hold (a label-shuffled control re-uses its source's) is captured once."""
    index: dict[tuple[Hashable, str], int] = {}
    examples: list[Example] = []
    sides = []
    for concept in concepts:
        rows: list[list[int]] = [[], []]
        for p in concept.pairs:
            for side, text in zip(rows, (p.positive, p.negative), strict=True):
                key = (_hashable(p.prompt), text)
                if key not in index:
                    index[key] = len(examples)
                    examples.append(Example(p.prompt, text))
                side.append(index[key])
        sides.append(rows)
    desc = f"capture {len(concepts)} concept{'s' if len(concepts) != 1 else ''}"
    acts = capture(
        lm,
        examples,
        layers=layers,
        tokens=tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
        heads=heads,
        share_prefix=True,
    )
    h = acts.heads
    out = {}
    for concept, (pos_rows, neg_rows) in zip(concepts, sides, strict=True):
        out[concept.name] = ConceptActivations(
            concept.name,
            concept.kind,
            acts.layers,
            acts.pooled[pos_rows],
            acts.pooled[neg_rows],
            None if h is None else h[pos_rows],
            None if h is None else h[neg_rows],
        )
    return out


def extract(
    lm: LoadedModel,
    concepts: Sequence[ConceptSet],
    *,
    layers: Sequence[int] | None = None,
    tokens: str = "response",
    holdout: float = 0.25,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
    heads: bool = False,
) -> Extraction:
    """Capture every concept's pairs (:func:`capture_concepts`: one capture, each distinct
    example once) and build a :class:`FeatureAtlas`."""
    if not concepts:
        raise GeomsafeError("no concepts to extract")
    names = [c.name for c in concepts]
    if len(set(names)) != len(names):
        raise GeomsafeError(f"duplicate concept names: {names}")
    chosen = resolve_layers(lm.n_layers, list(layers) if layers is not None else None)
    directions, kinds, stats = {}, {}, {}
    acts_by_name = capture_concepts(lm, concepts, chosen, tokens, batch_size, progress, heads)
    for concept in concepts:
        acts = acts_by_name[concept.name]
        raw = acts.pos.mean(0) - acts.neg.mean(0)
        directions[concept.name] = unit(raw)
        kinds[concept.name] = concept.kind
        aucs, effects = separation(acts, holdout, seed)
        best = best_row(aucs, effects)
        stats[concept.name] = {
            "heldout_auroc": aucs,
            "heldout_effect_size": effects,
            "best_layer": chosen[best],
            "best_auroc": aucs[best],
            "diff_norm": raw.norm(dim=-1).tolist(),
            "n_pairs": len(concept.pairs),
            "holdout": holdout,
            "data_hash": concept.data_hash(),
            "split": split_record(concept),
            "source": concept.source,
            "description": concept.description,
        }
    provenance = {
        **lm.provenance(),
        "layers": chosen,
        "hook_site": HOOK_SITE,
        "token_rule": tokens,
        "skip_first": 1,
        "pooling": "mean",
        "method": "mean_difference",
        "seed": seed,
        "data_hash": {c.name: c.data_hash() for c in concepts},
        "geomsafe_version": geomsafe_version(),
    }
    atlas = FeatureAtlas(chosen, directions, kinds, stats, provenance)
    return Extraction(atlas, acts_by_name)
