"""Record the residual stream at decoder-layer outputs.

Hook site: the output of decoder layer ``l`` (the residual stream after block ``l``). This
equals Hugging Face's ``hidden_states[l + 1]`` for every layer but the last, whose
``hidden_states`` entry is taken after the final norm. Hooks are installed only inside the
:func:`record` context manager (through :mod:`geomsafe.hooks`) and removed when it ends.

:func:`capture` runs the backbone (no LM head) over batched, length-sorted examples, with
left or right padding (position ids follow the attention mask so both paddings give the
same activations), selects tokens by rule and pools them (mean) or keeps them per token.
With ``share_prefix``, tokens that open several examples (a system prompt, a contrastive pair's
prompt) run once, continued from a key/value cache (the plan is :mod:`geomsafe.prefix`).
:func:`capture_projections` pools the same way but keeps only each example's projections on
given directions (``[N, K]`` per layer, accumulated pass by pass), never the ``[N, L, D]``
pooled activations: what :func:`geomsafe.projection.project` (predict, evaluate) needs.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from geomsafe import distributed, hooks
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Encoded, Example, encode_all
from geomsafe.layers import attention_out_proj, decoder_blocks, resolve_layers
from geomsafe.models import LoadedModel, pad_token_id
from geomsafe.prefix import PrefixPlan, SharedStep, plan_prefixes, shared_steps

HOOK_SITE = "decoder_layer_output"
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
    store: dict[int, Tensor] = {}
    last = max(layers) if layers else -1

    def at_block(idx: int) -> hooks.LayerFn:
        def fn(hidden: Tensor) -> None:
            if site == "block":
                store[idx] = hidden.detach() if detach else hidden
            if stop_after_last and idx == last:
                raise _StopForward

        return fn

    def at_heads(idx: int):
        def pre_hook(_module: nn.Module, inputs: tuple) -> None:
            store[idx] = inputs[0].detach() if detach else inputs[0]

        return pre_hook

    at_layers = hooks.layer_hooks(
        model, {idx: at_block(idx) for idx in layers}, layer_template=layer_template
    )
    at_projections = []
    if site == "heads":
        blocks = decoder_blocks(model, layer_template)
        at_projections = [
            hooks.Hook(attention_out_proj(blocks[idx]), at_heads(idx), pre=True) for idx in layers
        ]
    with hooks.on_modules([*at_projections, *at_layers]):
        yield store


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


def pad_rows(
    seqs: Sequence[Sequence[int]], index: list[int], pad_id: int, padding_side: str
) -> Batch:
    """One padded batch of token id rows; position ids follow the mask (from 0)."""
    if padding_side not in ("left", "right"):
        raise GeomsafeError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    offsets = []
    for row, seq in enumerate(seqs):
        n = len(seq)
        off = width - n if padding_side == "left" else 0
        ids[row, off : off + n] = torch.tensor(seq)
        mask[row, off : off + n] = 1
        offsets.append(off)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, pos, index, offsets)


def make_batches(
    encoded: Sequence[Encoded], batch_size: int, pad_id: int, padding_side: str
) -> Iterator[Batch]:
    """Length-sorted (longest first) padded batches; position ids follow the mask."""
    order = sorted(range(len(encoded)), key=lambda i: -encoded[i].length)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield pad_rows([encoded[i].input_ids for i in idx], idx, pad_id, padding_side)


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


# Share prefixes only when that leaves at most this share of the tokens to compute: a shared
# capture runs two passes per batch (prompts, then responses), on smaller matrices.
SHARE_AT = 0.9

Pick = tuple[int, int, int, int]  # (example, row, first column, end column) within one pass


class _Pooler:
    """Accumulates each example's mean over its selected tokens, one forward pass at a time
    (a shared capture sees an example's tokens in up to three passes).

    With ``project_on`` (``{layer: [K, D]}`` float32 directions) it keeps, instead of the
    ``[N, L, D]`` means, only their projections ``{layer: [N, K]}`` (:attr:`projections`):
    each pass's weighted token sum is projected as it comes (the mean is linear in the tokens,
    so the sum of projected parts is the projection of the mean)."""

    def __init__(
        self,
        n: int,
        layers: list[int],
        width: int,
        head_width: int,
        per_token: bool,
        spans,
        project_on: dict[int, Tensor] | None = None,
    ) -> None:
        self.layers = layers
        self.project_on = project_on
        self.pooled = torch.zeros(n, len(layers), 0 if project_on is not None else width)
        self.projections = {
            layer: torch.zeros(n, u.shape[0]) for layer, u in (project_on or {}).items()
        }
        self.heads = torch.zeros(n, len(layers), head_width) if head_width else None
        self.parts: list[list[Tensor]] | None = [[] for _ in range(n)] if per_token else None
        self.weight = [1.0 / (end - start) for start, end in spans]

    def add(
        self, store: dict[int, Tensor], head_store: dict[int, Tensor], picks: list[Pick]
    ) -> None:
        """Add the picked columns of the recorded pass (rows ``[R, T, D]`` per layer)."""
        picks = [p for p in picks if p[3] > p[2]]
        if picks:
            first = store[self.layers[0]]
            weights = torch.zeros(len(picks), first.shape[1], dtype=torch.float32)
            for k, (i, _row, a, b) in enumerate(picks):
                weights[k, a:b] = self.weight[i]
            weights = weights.to(first.device).unsqueeze(1)
            examples, rows = [p[0] for p in picks], [p[1] for p in picks]
            sel = None
            if rows != list(range(first.shape[0])):
                sel = torch.tensor(rows, device=first.device)
            for j, idx in enumerate(self.layers):
                summed = _weighted_sum(weights, store[idx], sel)
                if self.project_on is not None:
                    self.projections[idx][examples] += summed @ self.project_on[idx].T
                else:
                    self.pooled[examples, j] += summed
                if self.heads is not None:
                    self.heads[examples, j] += _weighted_sum(weights, head_store[idx], sel)
            if self.parts is not None:
                for i, row, a, b in picks:
                    toks = torch.stack([store[idx][row, a:b] for idx in self.layers], dim=1)
                    self.parts[i].append(toks.float().cpu())
        store.clear()
        head_store.clear()

    def tokens(self) -> list[Tensor] | None:
        return None if self.parts is None else [torch.cat(p) for p in self.parts]

    def reduce(self) -> None:
        """Sum the pooled rows over the ranks (:mod:`geomsafe.distributed`): each rank filled
        only its batches' examples, so the sum is every example's value, in order."""
        pooled = self.pooled if self.project_on is None else None
        distributed.all_sum(pooled, self.heads, *self.projections.values())


def _weighted_sum(weights: Tensor, hidden: Tensor, rows: Tensor | None) -> Tensor:
    """``[K, 1, T]`` weights times ``[R, T, D]`` hidden (rows ``rows`` of it) -> ``[K, D]``."""
    if rows is not None and hidden.shape[0] == 1:  # the root pass: one row for every example
        return (weights.squeeze(1) @ hidden[0].float()).cpu()
    hidden = hidden if rows is None else hidden.index_select(0, rows)
    return torch.bmm(weights, hidden.float()).squeeze(1).cpu()


def cache_kwarg(net: nn.Module) -> str | None:
    """The name under which ``net.forward`` takes a key/value cache (None: it takes none)."""
    params = inspect.signature(net.forward).parameters
    return next((k for k in ("cache", "past_key_values") if k in params), None)


def new_cache(model: nn.Module) -> Any:
    """An empty dynamic key/value cache for ``model``."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=getattr(model, "config", None))
    except TypeError:  # older transformers build it without a config
        return DynamicCache()


@dataclass
class _Forward:
    """Runs the backbone on a padded batch, after ``past`` cached columns when given."""

    net: nn.Module
    device: torch.device
    cache_name: str | None = None

    def __call__(
        self, batch: Batch, start: Tensor | int = 0, past: Tensor | None = None, cache: Any = None
    ) -> None:
        mask = batch.attention_mask if past is None else torch.cat([past, batch.attention_mask], 1)
        extra = {} if cache is None else {str(self.cache_name): cache}
        run_until_stopped(
            self.net,
            input_ids=batch.input_ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=(batch.position_ids + start).to(self.device),
            use_cache=cache is not None,
            **extra,
        )


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
    share_prefix: bool = False,
) -> Activations:
    """Residual-stream activations of ``examples`` at ``layers`` (all when None).

    ``tokens``: ``response`` | ``prompt`` | ``last`` | ``all``. ``skip_first`` tokens at the
    start of every sequence (attention sinks) are excluded from ``prompt``/``all``.
    ``heads=True`` also pools the per-head attention outputs in the same forward pass.
    ``share_prefix=True``: tokens that open several examples (a system prompt, a pair's prompt)
    are run once and continued from a key/value cache (:mod:`geomsafe.prefix`) when that leaves
    at most ``SHARE_AT`` of the tokens to compute; the activations are those of separate runs
    up to float rounding (matrices of other shapes sum in another order, as with another batch
    size). :func:`geomsafe.directions.extract` turns it on: a pair's two responses share their
    prompt.
    """
    exs, chosen, encoded, spans = _prepare(lm, examples, layers, tokens, skip_first, max_length)
    head_width = lm.n_heads * lm.head_dim if heads else 0
    pooler = _Pooler(len(exs), chosen, lm.d_model, head_width, per_token, spans)
    _run(lm, encoded, spans, pooler, batch_size, padding_side, progress, desc, heads, share_prefix)
    return Activations(
        layers=chosen,
        pooled=pooler.pooled,
        token_rule=tokens,
        skip_first=skip_first,
        tokens=pooler.tokens(),
        n_tokens=[end - start for start, end in spans],
        heads=pooler.heads,
    )


@torch.no_grad()
def capture_projections(
    lm: LoadedModel,
    examples: Sequence[Example | str | tuple[str, str]],
    directions: Mapping[int, Tensor],
    *,
    tokens: str = "response",
    skip_first: int = 1,
    batch_size: int = 8,
    padding_side: str = "right",
    max_length: int = 512,
    progress: bool = True,
    desc: str = "projection",
) -> dict[int, Tensor]:
    """``{layer: [N, K]}`` float32 cpu: each example's pooled activation at ``layer`` (as
    :func:`capture` pools it, same arguments) dotted with each row of ``directions[layer]``
    (``[K, D]`` or ``[D]``). The same numbers as ``capture(...).layer(layer) @ u`` up to float
    rounding, but memory grows as ``N x K`` per layer rather than ``N x L x D``: only running
    projections are kept, never the pooled activations."""
    if not directions:
        raise GeomsafeError("no directions to project on")
    dirs = {int(k): torch.atleast_2d(v.detach().float().cpu()) for k, v in directions.items()}
    for layer, u in dirs.items():
        if u.dim() != 2 or u.shape[1] != lm.d_model:
            raise GeomsafeError(
                f"directions at layer {layer} have shape {tuple(u.shape)}; need [K, {lm.d_model}]"
            )
    exs, chosen, encoded, spans = _prepare(
        lm, examples, sorted(dirs), tokens, skip_first, max_length
    )
    pooler = _Pooler(len(exs), chosen, lm.d_model, 0, False, spans, project_on=dirs)
    _run(lm, encoded, spans, pooler, batch_size, padding_side, progress, desc, False, False)
    return pooler.projections


def _prepare(
    lm: LoadedModel,
    examples: Sequence[Example | str | tuple[str, str]],
    layers: Sequence[int] | None,
    tokens: str,
    skip_first: int,
    max_length: int,
) -> tuple[list[Example], list[int], list[Encoded], list[tuple[int, int]]]:
    """Check the inputs; the examples, chosen layers, encodings and selected-token spans."""
    if tokens not in TOKEN_RULES:
        raise GeomsafeError(f"unknown token rule {tokens!r}; use one of {', '.join(TOKEN_RULES)}")
    exs = as_examples(examples)
    if not exs:
        raise GeomsafeError("no examples to capture")
    chosen = resolve_layers(lm.n_layers, list(layers) if layers is not None else None)
    encoded = encode_all(lm.tokenizer, exs, max_length)
    spans = [token_span(e, tokens, skip_first) for e in encoded]
    return exs, chosen, encoded, spans


def _run(
    lm: LoadedModel,
    encoded: Sequence[Encoded],
    spans: list[tuple[int, int]],
    pooler: _Pooler,
    batch_size: int,
    padding_side: str,
    progress: bool,
    desc: str,
    heads: bool,
    share_prefix: bool,
) -> None:
    """The forward passes of a capture, each pass's selected tokens added to ``pooler``.

    Under :func:`geomsafe.distributed.data_parallel` each rank runs its share of the batches
    (:func:`~geomsafe.distributed.mine`) and the pooled rows are summed over the ranks; a
    per-token capture is not sharded (every rank runs all of it)."""
    chosen = pooler.layers
    shard = pooler.parts is None
    pad_id = pad_token_id(lm.tokenizer)
    net = backbone(lm.model)
    forward = _Forward(net, lm.device, cache_kwarg(net))
    plan = plan_prefixes(encoded) if share_prefix and forward.cache_name else None
    if plan is not None and plan.tokens(encoded) > SHARE_AT * sum(e.length for e in encoded):
        plan = None
    head_layers = chosen if heads else []
    with (
        record(lm.model, chosen, lm.layer_template, True) as store,
        record(lm.model, head_layers, lm.layer_template, site="heads") as head_store,
    ):
        if plan is None:
            batches = list(make_batches(encoded, batch_size, pad_id, padding_side))
            batches = distributed.mine(batches) if shard else batches
            for batch in tqdm(batches, desc=desc, unit="batch", disable=not progress, leave=False):
                forward(batch)
                picks = [
                    (i, row, off + spans[i][0], off + spans[i][1])
                    for row, (i, off) in enumerate(zip(batch.index, batch.offsets, strict=True))
                ]
                pooler.add(store, head_store, picks)
        else:
            ctx = _Shared(lm.model, forward, plan, encoded, spans, pad_id, padding_side)
            keep_root = not shard or distributed.shard_rank() == 0  # every rank needs its cache
            root = ctx.run_root(pooler, store, head_store, keep=keep_root)
            steps = list(shared_steps(plan, encoded, batch_size))
            steps = distributed.mine(steps) if shard else steps
            for step in tqdm(steps, desc=desc, unit="batch", disable=not progress, leave=False):
                ctx.run_step(step, root, pooler, store, head_store)
    if shard:
        pooler.reduce()


@dataclass
class _Shared:
    """A capture whose examples share leading tokens (:class:`geomsafe.prefix.PrefixPlan`):
    the root runs once, each step runs its groups' leads on copies of the root's cache, then
    the other members' responses on their lead's cache row, the lead's reply masked out."""

    model: nn.Module
    forward: _Forward
    plan: PrefixPlan
    encoded: Sequence[Encoded]
    spans: list[tuple[int, int]]
    pad_id: int
    padding_side: str

    def run_root(self, pooler: _Pooler, store: dict, head_store: dict, keep: bool = True) -> Any:
        """Run the root tokens once; returns their cache (None when there is no root). With
        ``keep=False`` their activations are not added to ``pooler`` (another rank adds them)."""
        r = self.plan.root
        if r == 0:
            return None
        cache = new_cache(self.model)
        self.forward(pad_rows([self.plan.prompts[0][:r]], [0], self.pad_id, "right"), cache=cache)
        picks = [(i, 0, a, min(b, r)) for i, (a, b) in enumerate(self.spans)] if keep else []
        pooler.add(store, head_store, picks)
        return cache

    def run_step(
        self, step: SharedStep, root: Any, pooler: _Pooler, store: dict, head_store: dict
    ) -> None:
        """The step's lead pass on copies of the ``root`` cache, then its response pass."""
        r, enc, spans = self.plan.root, self.encoded, self.spans
        leads = [enc[i].input_ids[r:] for i in step.leads]
        batch = pad_rows(leads, step.leads, self.pad_id, self.padding_side)
        cache = new_cache(self.model) if root is None else copy.deepcopy(root)
        if root is not None:
            cache.reorder_cache(torch.zeros(len(leads), dtype=torch.long))
        past = torch.ones(len(leads), r, dtype=torch.long)
        self.forward(batch, r, past, cache)
        row = {g: k for k, g in enumerate(step.prompts)}
        picks = []
        for i in step.members:  # the lead's tokens, and the prompt tokens of the others
            k = row[self.plan.group[i]]
            end = spans[i][1] if i == step.leads[k] else min(spans[i][1], enc[i].prompt_len)
            a, b = max(spans[i][0], r) - r, end - r
            picks.append((i, k, batch.offsets[k] + a, batch.offsets[k] + b))
        pooler.add(store, head_store, picks)
        if not step.responses:
            return
        seen = batch.attention_mask.clone()  # the others see their prompt, not the lead's reply
        for k, (i, off) in enumerate(zip(step.leads, batch.offsets, strict=True)):
            seen[k, off + enc[i].prompt_len - r : off + enc[i].length - r] = 0
        parents = step.parents
        if parents != list(range(len(leads))):
            cache.reorder_cache(torch.tensor(parents))
        past = torch.cat([past, seen], 1)[parents]
        starts = [enc[i].prompt_len for i in step.responses]
        tails = [enc[i].input_ids[p:] for i, p in zip(step.responses, starts, strict=True)]
        tail = pad_rows(tails, step.responses, self.pad_id, self.padding_side)
        self.forward(tail, torch.tensor(starts)[:, None], past, cache)
        picks = []
        for k, (i, p) in enumerate(zip(step.responses, starts, strict=True)):
            a, b = max(spans[i][0], p), spans[i][1]
            picks.append((i, k, tail.offsets[k] + a - p, tail.offsets[k] + b - p))
        pooler.add(store, head_store, picks)
