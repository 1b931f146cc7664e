"""Differentiable response log-likelihoods, from the logits of the response positions only.

The same quantity as :func:`geomsafe.evaluate.logodds.response_logprobs` (and the same forward,
:func:`geomsafe.evaluate.probes._forward_tail`: left-padded, ``logits_to_keep`` = the longest
response + 1), but kept in the autograd graph: ``logp(r | prompt) = sum_t log P(r_t | prompt,
r_<t)`` over the response tokens of :func:`geomsafe.formatting.encode`. Only ``[B, keep, V]``
logits exist, never ``[B, T, V]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.probes import _batches, _forward_tail
from geomsafe.formatting import Encoded
from geomsafe.models import LoadedModel


def response_logps(lm: LoadedModel, encoded: Sequence[Encoded]) -> Tensor:
    """``[B]`` summed log-probabilities of each encoded example's response tokens (one forward,
    differentiable when the graph is being recorded)."""
    seqs = [list(e.input_ids) for e in encoded]
    n_resp = [e.length - e.prompt_len for e in encoded]
    if min(n_resp) < 1:
        raise GeomsafeError("an example has an empty response")
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    keep = max(n_resp) + 1
    logp = _forward_tail(lm, seqs, keep, pad)
    out = []
    for r, (seq, n) in enumerate(zip(seqs, n_resp, strict=True)):
        rows = torch.arange(keep - 1 - n, keep - 1)  # response token t is predicted there
        out.append(logp[r, rows, torch.tensor(seq[-n:])].sum())
    return torch.stack(out)


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
