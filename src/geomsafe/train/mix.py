"""``mix-safe``: interleave a fixed share of safe examples into the training data, a peer of the
geometric guards (Kaczér et al. 2025: mixing safe data into fine-tuning).

With ``n`` training examples and a share ``frac`` in [0, 1), the run trains on ``n + k``
examples, ``k`` of them safe, where

    k = floor(frac * n / (1 - frac) + 1/2)

is the whole number nearest to the ``k`` whose share ``k / (n + k)`` is exactly ``frac`` (so the
share is ``frac`` exactly whenever ``frac * n / (1 - frac)`` is a whole number, e.g. 4 safe
among 16 for ``frac=0.25`` and ``n=12``, and within ``1 / (2 (n + k))`` of it otherwise). The
safe examples are the safe set shuffled once with the run's seed, cycled when ``k`` exceeds its
size. The ``j``-th safe example (0-based) goes to position ``floor((j + 1/2) (n + k) / k)`` of
the mixed list and the training examples keep their order in the other positions, so the safe
share is the same throughout the list (the Trainer still shuffles batches with its seed).

The safe set (``TrainConfig.mix_safe_data``): ``builtin`` is :data:`BUILTIN_SAFE`, 40 chat
examples written for geomsafe, half refusals of harmful requests (each refusal says why and
points to a safe alternative; worded unlike the refusal texts that ``evaluate`` scores against
and the ones of :mod:`geomsafe.concepts.compliance`), half sound answers to risky everyday
questions (questions unlike those of the ``dangerous_advice`` concept and the ``advice``
behaviour set). Any chat / prompt-completion JSONL file or ``task:NAME`` can replace it (e.g.
AdvBench requests with refusals from ``../shared/data``). The perplexity-gap choice of the
published method (the safe examples whose perplexity differs most between an aligned and a
misaligned model) is not offered: it needs a misaligned model, which a user does not have
before the run; see ``docs/peers.md``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from geomsafe.datasets import Dataset, load_dataset
from geomsafe.errors import GeomsafeError

BUILTIN_SAFE = "safe_mix.jsonl"  # under geomsafe/data/safe/


def builtin_safe() -> Path:
    """Path of the built-in safe set."""
    return Path(str(resources.files("geomsafe") / "data" / "safe" / BUILTIN_SAFE))


def safe_source(spec: str) -> Path | str:
    """The data spec of a ``mix_safe_data`` setting (``builtin`` or a file / ``task:NAME``)."""
    return builtin_safe() if spec == "builtin" else spec


def safe_count(n: int, frac: float) -> int:
    """How many safe examples join ``n`` training examples for a share ``frac`` (module
    docstring): ``floor(frac * n / (1 - frac) + 1/2)``."""
    if not 0.0 <= frac < 1.0:
        raise GeomsafeError(f"mix_safe must be in [0, 1), not {frac}")
    return math.floor(frac * n / (1.0 - frac) + 0.5)


def safe_positions(n: int, k: int) -> list[int]:
    """The positions of the ``k`` safe examples in the mixed list of ``n + k``: ``floor((j +
    1/2) (n + k) / k)`` for ``j = 0 .. k - 1`` (increasing, distinct since ``n + k >= k``)."""
    total = n + k
    return [math.floor((2 * j + 1) * total / (2 * k)) for j in range(k)]


@dataclass(frozen=True)
class SafeMix:
    """What :func:`mix_safe` did, for the run's provenance."""

    frac: float
    source: str  # the safe set's file
    source_sha256: str
    n_train: int
    n_safe: int

    @property
    def share(self) -> float:
        """The safe share of the mixed data, ``n_safe / (n_train + n_safe)``."""
        total = self.n_train + self.n_safe
        return self.n_safe / total if total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "frac": self.frac,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "n_train": self.n_train,
            "n_safe": self.n_safe,
            "share": self.share,
            "rule": "n_safe = floor(frac * n_train / (1 - frac) + 1/2), interleaved evenly",
        }


def mix_safe(
    train: Dataset, frac: float, source: str = "builtin", seed: int = 0
) -> tuple[Dataset, SafeMix | None]:
    """``train`` with ``safe_count(len(train), frac)`` safe examples from ``source`` interleaved
    (module docstring), and what was mixed (None when ``frac`` is 0: ``train`` unchanged).

    The mixed Dataset keeps ``train``'s path and file hash; its ``records_sha256`` (the run's
    ``examples_hash``) covers the safe records too, and each safe record's ``where`` names
    the safe file's line."""
    k = safe_count(len(train), frac)
    if frac == 0.0:
        return train, None
    safe = load_dataset(safe_source(source))
    order = list(range(len(safe)))
    random.Random(seed).shuffle(order)
    chosen = [safe.records[order[j % len(order)]] for j in range(k)]
    positions = set(safe_positions(len(train), k))
    rest, picked = iter(train.records), iter(chosen)
    records = [next(picked) if i in positions else next(rest) for i in range(len(train) + k)]
    info = SafeMix(frac, safe.path, safe.sha256, len(train), k)
    return Dataset(train.path, records, train.sha256), info
