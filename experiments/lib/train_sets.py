"""The fine-tuning data sets of the behaviour runs (``experiments/behaviour_runs.py``), shared
with ``predict_validation.py`` and ``guard_effect.py``: the data set specs, how each is built,
and the folder a run of one goes to.

Specs (:data:`DATASETS` is the default list):

- public emergent-misalignment sets ``insecure``, ``jailbroken``, ``insecure_small``,
  ``secure_small`` (the data root has no full ``secure`` or ``educational`` set);
- the built-in benign tasks ``task:code``, ``task:factual_qa``, ``task:instruction_following``,
  ``task:summarisation``;
- ``advice_harmful`` / ``advice_sound``: the built-in ``dangerous_advice`` concept's *direction
  half* (never its evaluation half, the ``concept:dangerous_advice`` row) as chat data: each
  prompt with its harmful (positive) or its sound (negative) response;
- dose-response mixtures ``mix:A:B:F`` (:func:`parse_mix`, :func:`mix_records`);
- ``NAME=FILE.jsonl``: any file ``geomsafe.datasets`` reads.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections.abc import Sequence
from typing import Any

from geomsafe.bench.tasks import EXTERNAL, resolve_task
from geomsafe.concepts import load_for_direction
from geomsafe.datasets import Dataset, Record, load_dataset
from geomsafe.errors import GeomsafeError

TASKS = ("task:code", "task:factual_qa", "task:instruction_following", "task:summarisation")
MIX_LEVELS = (0.0, 0.25, 0.5, 0.75, 1.0)
MIXTURES = tuple(f"mix:insecure:task:code:{f:g}" for f in MIX_LEVELS)
DATASETS = (
    "insecure",
    "jailbroken",
    "insecure_small",
    "secure_small",
    *TASKS,
    "advice_harmful",
    "advice_sound",
    *MIXTURES,
)
ADVICE = {"advice_harmful": "positive", "advice_sound": "negative"}
BEHAVIOUR_JSON = "behaviour.json"


def safe_name(spec: str) -> str:
    """The folder name of a data set spec (``task:code`` -> ``task_code``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", spec.split("=", 1)[0]).strip("_") or "dataset"


def display_name(spec: str) -> str:
    """The name a data set spec is shown under: ``NAME`` of ``NAME=PATH``, else the spec."""
    return spec.split("=", 1)[0] if "=" in spec else spec


def parse_mix(spec: str) -> tuple[str, str, float]:
    """``mix:A:B:F`` -> (A, B, F); A and B may contain ``:`` (``task:code``), so the split
    point is the first at which A and B both name a known data set."""
    body, _, frac = spec.removeprefix("mix:").rpartition(":")
    try:
        f = float(frac)
    except ValueError as exc:
        raise GeomsafeError(f"{spec}: the fraction {frac!r} is not a number") from exc
    if not 0.0 <= f <= 1.0:
        raise GeomsafeError(f"{spec}: the fraction must be in [0, 1], not {f}")
    parts = body.split(":")
    for k in range(1, len(parts)):
        a, b = ":".join(parts[:k]), ":".join(parts[k:])
        if known(a) and known(b):
            return a, b, f
    raise GeomsafeError(f"{spec}: expected mix:A:B:FRACTION with two known data sets")


def known(spec: str) -> bool:
    """Whether ``spec`` names a data set (a mixture's parts are checked by :func:`parse_mix`)."""
    return spec in EXTERNAL or spec in ADVICE or spec.startswith("task:") or "=" in spec


def mix_records(
    a: Sequence[Any], b: Sequence[Any], frac: float, n: int, seed: int
) -> tuple[list[Any], int]:
    """``round(frac * n)`` items of ``a`` and the rest of ``n`` from ``b``, each drawn without
    replacement with ``Random(f"{seed}:mix")``, then shuffled; and the number from ``a``."""
    k = round(frac * n)
    if k > len(a) or n - k > len(b):
        raise GeomsafeError(f"mixture needs {k} + {n - k} items; have {len(a)} and {len(b)}")
    rng = random.Random(f"{seed}:mix")
    items = rng.sample(list(a), k) + rng.sample(list(b), n - k)
    rng.shuffle(items)
    return items, k


def advice_dataset(side: str) -> Dataset:
    """The ``dangerous_advice`` concept's direction half as chat data: prompt + ``side``
    (``positive``: harmful, ``negative``: sound) response."""
    concept = load_for_direction("dangerous_advice")
    return Dataset.from_examples(
        [(p.prompt, getattr(p, side)) for p in concept.pairs],
        source=f"dangerous_advice-direction-{side}",
    )


def base_dataset(spec: str, data_root: str | None) -> Dataset:
    """A data set spec other than a mixture, unsampled."""
    if spec in ADVICE:
        return advice_dataset(ADVICE[spec])
    if spec.startswith("task:"):
        return load_dataset(spec)
    return load_dataset(resolve_task(spec, data_root).path)


def build_dataset(spec: str, n: int, seed: int, data_root: str | None = None) -> Dataset:
    """The training data of ``spec`` (module docstring): at most ``n`` examples, seeded."""
    if not spec.startswith("mix:"):
        return base_dataset(spec, data_root).sample(n, seed)
    a_spec, b_spec, frac = parse_mix(spec)
    a, b = base_dataset(a_spec, data_root), base_dataset(b_spec, data_root)
    size = min(n, len(a), len(b))
    records, _ = mix_records(a.records, b.records, frac, size, seed)
    mixed: list[Record] = list(records)
    ds = Dataset(spec, mixed, "")
    return dataclasses.replace(ds, sha256=ds.records_sha256)
