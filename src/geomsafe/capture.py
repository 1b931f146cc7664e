"""Record the residual stream at decoder-layer outputs.

Hook site: the output of decoder layer ``l`` (the residual stream after block ``l``). This
equals Hugging Face's ``hidden_states[l + 1]`` for every layer but the last, whose
``hidden_states`` entry is taken after the final norm. Hooks are installed only inside the
:func:`record` context manager and removed in ``finally``.

:func:`capture` runs the backbone (no LM head) over batched, length-sorted examples, with
left or right padding (position ids follow the attention mask so both paddings give the
same activations), selects tokens by rule and pools them (mean) or keeps them per token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Encoded, Example, encode_all
from geomsafe.layers import (
    attention_out_proj,
    decoder_blocks,
    hidden_of,
    resolve_layers,
)
from geomsafe.models import LoadedModel

HOOK_SITE = "decoder_layer_output"
HEADS_SITE = "attention_out_proj_input"
TokenRule = Literal["response", "prompt", "last", "all"]
TOKEN_RULES: tuple[str, ...] = ("response", "prompt", "last", "all")


class _StopForward(Exception):
    """Raised by the last needed hook so layers above it are not computed."""


SITES = ("block", "heads")


@contextlib.contextmanager
def record(
    model: nn.Module,
    layers: Sequence[int],
    layer_template: str | None = None,
    stop_after_last: bool = False,
    site: str = "block",
    detach: bool = True,
) -> Iterator[dict[int, Tensor]]:
    """Context manager that records activations into a dict ``{layer: [B, T, D]}``.

    ``site="block"``: decoder-layer outputs (the residual stream). ``site="heads"``: the input
    of the attention output projection, i.e. the concatenated per-head outputs ``[B, T, H*hd]``.
    With ``stop_after_last`` the forward pass is cut after the highest recorded layer; wrap
    the call in :func:`run_until_stopped`. ``detach=False`` keeps the autograd graph.
    """
    if site not in SITES:
        raise GeomsafeError(f"unknown hook site {site!r}; use one of {', '.join(SITES)}")
    blocks = decoder_blocks(model, layer_template)
    store: dict[int, Tensor] = {}
    last = max(layers) if layers else -1
    handles = []

    def make_hook(idx: int):
        def hook(_module: nn.Module, _inputs: tuple, output: object) -> None:
            if site == "block":
                hidden = hidden_of(output)
                store[idx] = hidden.detach() if detach else hidden
            if stop_after_last and idx == last:
                raise _StopForward

        return hook

    def make_pre_hook(idx: int):
        def pre_hook(_module: nn.Module, inputs: tuple) -> None:
            store[idx] = inputs[0].detach() if detach else inputs[0]

        return pre_hook

    try:
        for idx in layers:
            if site == "heads":
                proj = attention_out_proj(blocks[idx])
                handles.append(proj.register_forward_pre_hook(make_pre_hook(idx)))
            handles.append(blocks[idx].register_forward_hook(make_hook(idx)))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def head_dim(lm: LoadedModel) -> int:
    cfg = lm.model.config
    return int(getattr(cfg, "head_dim", None) or lm.d_model // lm.n_heads)


def run_until_stopped(fn, *args, **kwargs) -> None:
    """Call ``fn`` and swallow the early stop raised by a ``record(stop_after_last=True)`` hook."""
    with contextlib.suppress(_StopForward):
        fn(*args, **kwargs)


def backbone(model: nn.Module) -> nn.Module:
    """The transformer without its LM head (``model.model`` in Llama, ``transformer`` in GPT-2)."""
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) and base is not model else model


@dataclass
class Batch:
    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    index: list[int]  # positions of these rows in the caller's example list
    offsets: list[int]  # where each example's first real token sits in its row


def make_batches(
    encoded: Sequence[Encoded], batch_size: int, pad_id: int, padding_side: str
) -> Iterator[Batch]:
    """Length-sorted (longest first) padded batches; position ids follow the mask."""
    if padding_side not in ("left", "right"):
        raise GeomsafeError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(encoded[i].length for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        offsets = []
        for row, i in enumerate(idx):
            n = encoded[i].length
            off = width - n if padding_side == "left" else 0
            ids[row, off : off + n] = torch.tensor(encoded[i].input_ids)
            mask[row, off : off + n] = 1
            offsets.append(off)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        yield Batch(ids, mask, pos, idx, offsets)


def token_span(enc: Encoded, rule: str, skip_first: int) -> tuple[int, int]:
    """Half-open span ``[start, end)`` of the selected tokens within an unpadded example."""
    n, p = enc.length, enc.prompt_len
    if rule == "response":
        if p >= n:
            raise GeomsafeError("token rule 'response' needs examples with a non-empty response")
        return max(p, skip_first), n
    if rule == "prompt":
        start, end = skip_first, p
    elif rule == "last":
        start, end = n - 1, n
    elif rule == "all":
        start, end = skip_first, n
    else:
        raise GeomsafeError(f"unknown token rule {rule!r}; use one of {', '.join(TOKEN_RULES)}")
    if start >= end:  # a one-token prompt: keep its only token rather than nothing
        start = max(0, end - 1)
    return start, end


@dataclass
class Activations:
    """Residual-stream activations at ``layers``.

    ``pooled`` is ``[N, L, D]`` (mean over the selected tokens of each example);
    ``tokens`` (when asked for) holds one ``[T_i, L, D]`` tensor per example; ``heads`` (when
    asked for) is ``[N, L, H*hd]``, the pooled per-head attention outputs (the input of the
    attention output projection) at the same layers and tokens.
    """

    layers: list[int]
    pooled: Tensor
    token_rule: str
    hook_site: str = HOOK_SITE
    skip_first: int = 1
    tokens: list[Tensor] | None = None
    n_tokens: list[int] = field(default_factory=list)
    heads: Tensor | None = None

    def layer(self, layer: int) -> Tensor:
        """``[N, D]`` pooled activations at a model layer index."""
        return self.pooled[:, self.layers.index(layer)]

    def to(self, *args, **kwargs) -> Activations:
        toks = None if self.tokens is None else [t.to(*args, **kwargs) for t in self.tokens]
        return Activations(
            self.layers,
            self.pooled.to(*args, **kwargs),
            self.token_rule,
            self.hook_site,
            self.skip_first,
            toks,
            list(self.n_tokens),
            None if self.heads is None else self.heads.to(*args, **kwargs),
        )


def as_examples(items: Sequence[Example | str | tuple[str, str]]) -> list[Example]:
    out = []
    for item in items:
        if isinstance(item, Example):
            out.append(item)
        elif isinstance(item, str):
            out.append(Example(item))
        else:
            out.append(Example(item[0], item[1]))
    return out


@torch.no_grad()
def capture(
    lm: LoadedModel,
    examples: Sequence[Example | str | tuple[str, str]],
    *,
    layers: Sequence[int] | None = None,
    tokens: str = "response",
    skip_first: int = 1,
    per_token: bool = False,
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int = 512,
    progress: bool = True,
    desc: str = "capture",
    heads: bool = False,
) -> Activations:
    """Residual-stream activations of ``examples`` at ``layers`` (all when None).

    ``tokens``: ``response`` | ``prompt`` | ``last`` | ``all``. ``skip_first`` tokens at the
    start of every sequence (attention sinks) are excluded from ``prompt``/``all``.
    ``heads=True`` also pools the per-head attention outputs in the same forward pass.
    """
    if tokens not in TOKEN_RULES:
        raise GeomsafeError(f"unknown token rule {tokens!r}; use one of {', '.join(TOKEN_RULES)}")
    exs = as_examples(examples)
    if not exs:
        raise GeomsafeError("no examples to capture")
    chosen = resolve_layers(lm.n_layers, list(layers) if layers is not None else None)
    encoded = encode_all(lm.tokenizer, exs, max_length)
    spans = [token_span(e, tokens, skip_first) for e in encoded]
    device = lm.device
    pooled = torch.zeros(len(exs), len(chosen), lm.d_model)
    pooled_heads = torch.zeros(len(exs), len(chosen), lm.n_heads * head_dim(lm)) if heads else None
    kept: list[Tensor | None] = [None] * len(exs)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    net = backbone(lm.model)
    batches = list(make_batches(encoded, batch_size, pad_id, padding_side))
    bar = tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False)
    head_layers = chosen if heads else []
    with (
        record(lm.model, chosen, lm.layer_template, True) as store,
        record(lm.model, head_layers, lm.layer_template, site="heads") as head_store,
    ):
        for batch in bar:
            run_until_stopped(
                net,
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                position_ids=batch.position_ids.to(device),
                use_cache=False,
            )
            weights = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
            for row, i in enumerate(batch.index):
                start, end = spans[i]
                off = batch.offsets[row]
                weights[row, off + start : off + end] = 1.0 / (end - start)
            weights = weights.to(device)
            rows = torch.tensor(batch.index)
            for j, idx in enumerate(chosen):
                hidden = store[idx].float()
                pooled[rows, j] = torch.bmm(weights.unsqueeze(1), hidden).squeeze(1).cpu()
                if pooled_heads is not None:
                    z = head_store[idx].float()
                    pooled_heads[rows, j] = torch.bmm(weights.unsqueeze(1), z).squeeze(1).cpu()
            if per_token:
                for row, i in enumerate(batch.index):
                    start, end = spans[i]
                    off = batch.offsets[row]
                    kept[i] = (
                        torch.stack(
                            [store[idx][row, off + start : off + end] for idx in chosen], dim=1
                        )
                        .float()
                        .cpu()
                    )
            store.clear()
            head_store.clear()
    return Activations(
        layers=chosen,
        pooled=pooled,
        token_rule=tokens,
        skip_first=skip_first,
        tokens=[t for t in kept if t is not None] if per_token else None,
        n_tokens=[end - start for start, end in spans],
        heads=pooled_heads,
    )
