"""Batches for predict's backward passes through
:func:`geomsafe.evaluate.logodds.response_logps` (the one response log-likelihood, also
differentiable): :func:`length_batches` bounds a backward pass's memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from geomsafe.evaluate.probes import _batches
from geomsafe.formatting import Encoded


def length_batches(
    encoded: Sequence[Encoded], batch_size: int, max_tokens: int | None = None
) -> Iterator[list[int]]:
    """Indices of ``encoded`` in batches of similar length, longest first: at most
    ``batch_size`` rows and (when given) at most ``max_tokens`` = rows x the batch's longest
    sequence (a longer sequence is a batch of its own), which bounds a backward pass's memory."""
    for idx in _batches([e.input_ids for e in encoded], batch_size):
        if max_tokens is None:
            yield idx
            continue
        rows = max(1, max_tokens // encoded[idx[0]].length)  # idx[0] is the longest
        for s in range(0, len(idx), rows):
            yield idx[s : s + rows]
