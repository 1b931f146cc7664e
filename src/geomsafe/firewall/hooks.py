"""Run a causal LM under a firewall: score, clamp or block at the checked layers.

:func:`install` is a context manager over any Hugging Face causal LM (a peft model too): it
hooks the output of each checked decoder layer and the model that owns the LM head, and
removes every hook in ``finally``. Inside it, ``model.generate`` (KV cache, any batch size,
left padding) and plain forward passes run as usual, and each forward pass is scored:

- the **score** of check ``k`` at a token is ``h · u_k`` (``h`` the layer's output at that
  token, ``u_k`` the check's unit direction), recorded for every real (non-padding) token;
- a check **fires** when its score exceeds its threshold τ_k at a position its rule reads: in
  the first forward pass of a sequence (the prompt), the last real token of each row, for every
  check; in later passes (each generated token fed back), every real token, for ``response``
  checks only. The first check that fires on a row is its :class:`Verdict` (stage ``prompt``
  in the first pass, ``response`` later; among checks firing at one token, the largest margin).

Modes:

- ``monitor``: records scores and verdicts; the forward pass is untouched.
- ``clamp``: at every position that ``response`` checks read, the residual stream of each
  checked layer is moved to the nearest point whose projections on the layer's ``response``
  directions are all ≤ τ. With one
  direction at a layer this is ``h ← h − relu(h·u − τ)·u``; with several (not orthogonal), the
  nearest point is found by Hildreth's dual coordinate method (at most ``max_sweeps`` sweeps,
  stopping when a sweep moves no coefficient by more than ``1e-6`` and every projection is
  within ``1e-6·(1 + |τ|)`` of its cap). The change lies in
  the span of the directions, so the orthogonal complement is unchanged. ``last_prompt``
  (request-side) checks are never clamped: see :attr:`Check.clampable`. Recorded scores are
  those before the clamp.
- ``block``: once a row has a verdict, its next-token logits are set so that the end-of-turn
  token is certain: the row stops there. :func:`geomsafe.firewall.screening.screen` then returns the
  firewall's refusal in place of the text, with the verdict as the reason.

Sequences are told apart by their KV cache: a forward pass with an empty cache starts a new
:class:`Trace` (one per ``generate`` call), so generation without a cache is not supported.
A session keeps every trace until it ends and serves one generation at a time: open one
context per batch of work (as :mod:`.serve` does per request), not one per process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from geomsafe import hooks
from geomsafe.errors import GeomsafeError
from geomsafe.firewall.config import MODES, Check, Firewall, stack_directions
from geomsafe.layers import decoder_blocks
from geomsafe.models import eos_ids, model_width


@dataclass(frozen=True)
class Verdict:
    """Why a row was flagged (monitor, clamp) or stopped (block)."""

    stage: str  # "prompt" (first forward pass) or "response"
    concept: str
    layer: int
    score: float  # the projection h·u
    threshold: float  # τ
    margin: float  # (score − τ) / σ_benign
    position: int  # index of the token among the row's real tokens (0: first prompt token)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"{self.concept} at layer {self.layer}: score {self.score:.3f} > threshold "
            f"{self.threshold:.3f} ({self.stage}, token {self.position})"
        )


@dataclass
class RowTrace:
    """One row of a sequence: ``scores[t, k]`` for every real token ``t`` processed (prompt
    tokens first, then each generated token that was fed back), ``n_prompt`` tokens of prompt.
    The last generated token is never fed back, so it has no scores."""

    prompt_ids: list[int]
    scores: Tensor
    n_prompt: int
    verdict: Verdict | None
    n_clamped: int


@dataclass
class _Step:
    """One forward pass: which positions are real, which the checks read, their scores."""

    real: Tensor  # [B, T] bool
    read: Tensor  # [B, T] bool: positions the checks read (see the module docstring)
    prefill: bool
    scores: Tensor  # [B, T, K] float32
    input_ids: Tensor | None
    clamped: Tensor  # [B] (token, check) pairs capped


@dataclass
class Trace:
    """The forward passes of one sequence batch (one ``generate`` call)."""

    batch: int
    steps: list[_Step] = field(default_factory=list)
    verdicts: list[Verdict | None] = field(default_factory=list)
    n_real: list[int] = field(default_factory=list)
    finished: list[bool] = field(default_factory=list)  # an end-of-turn token was fed back

    def __post_init__(self) -> None:
        self.verdicts = [None] * self.batch
        self.n_real = [0] * self.batch
        self.finished = [False] * self.batch

    def rows(self) -> list[RowTrace]:
        out = []
        for r in range(self.batch):
            first = self.steps[0]
            ids = first.input_ids[r][first.real[r]].tolist() if first.input_ids is not None else []
            scores = torch.cat([s.scores[r][s.real[r]] for s in self.steps])
            n_clamped = int(sum(int(s.clamped[r]) for s in self.steps))
            out.append(RowTrace(ids, scores, int(first.real[r].sum()), self.verdicts[r], n_clamped))
        return out


@dataclass
class _LayerPlan:
    layer: int
    index: Tensor  # positions of this layer's checks in the firewall's check list
    directions: Tensor  # [k, D] float32
    cap_index: Tensor  # rows of `directions` that clamp may cap
    cap_gram: Tensor  # [c, c] Gram matrix of the capped directions
    cap_tau: Tensor  # [c]


class Session:
    """What :func:`install` yields: the firewall, the mode and the traces recorded so far."""

    def __init__(
        self,
        firewall: Firewall,
        mode: str,
        device: torch.device,
        stop_ids: list[int],
        on_step: Callable[[Session, Tensor | None], None] | None,
        max_sweeps: int,
    ) -> None:
        self.firewall = firewall
        self.mode = mode
        self.traces: list[Trace] = []
        self._checks = firewall.checks
        self._tau = torch.tensor([c.threshold for c in self._checks], device=device)
        self._std = [c.benign_std for c in self._checks]
        self._response = torch.tensor([c.tokens == "response" for c in self._checks], device=device)
        self._eos = stop_ids[0] if stop_ids else None
        self._stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
        self._on_step = on_step
        self._sweeps = max_sweeps
        self._step: _Step | None = None
        self._device = device

    @property
    def last(self) -> Trace:
        if not self.traces:
            raise GeomsafeError("the firewall has not seen a forward pass yet")
        return self.traces[-1]

    def rows(self) -> list[RowTrace]:
        """The rows of the latest sequence batch."""
        return self.last.rows()

    # -- hooks ------------------------------------------------------------------------------

    def before(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs.get("inputs_embeds")
        if ref is None:
            raise GeomsafeError("the firewall needs input_ids or inputs_embeds")
        batch, width = ref.shape[0], ref.shape[1]
        past = _past_length(kwargs.get("past_key_values", kwargs.get("cache")))
        mask = kwargs.get("attention_mask")
        if isinstance(mask, Tensor) and mask.dim() == 2 and mask.shape[1] >= width:
            full = mask.to(self._device).bool()
            pos = (full.long().cumsum(-1) - 1)[:, -width:]
            real = full[:, -width:]
        else:
            real = torch.ones(batch, width, dtype=torch.bool, device=self._device)
            pos = torch.arange(past, past + width, device=self._device).expand(batch, width)
        read = real & (pos >= self.firewall.skip_first)
        if past == 0:  # the prompt: only its last real token predicts a response token
            last = (real.long() * torch.arange(1, width + 1, device=self._device)).argmax(-1)
            read &= torch.arange(width, device=self._device) == last[:, None]
        if past == 0 or not self.traces or self.traces[-1].batch != batch:
            self.traces.append(Trace(batch))
        trace = self.traces[-1]
        if past > 0 and isinstance(ids, Tensor) and self._stop.numel():
            ended = torch.isin(ids[:, 0].to(self._device), self._stop).tolist()
            trace.finished = [f or e for f, e in zip(trace.finished, ended, strict=True)]
        if any(trace.finished):  # a row past its end-of-turn token is padding: never read
            read &= ~torch.tensor(trace.finished, device=self._device)[:, None]
        self._step = _Step(
            real,
            read,
            past == 0,
            torch.full((batch, width, len(self._checks)), math.nan, device=self._device),
            ids.detach() if isinstance(ids, Tensor) else None,
            torch.zeros(batch, dtype=torch.long),
        )

    def layer_hook(self, plan: _LayerPlan) -> hooks.LayerFn:
        """The callback at ``plan.layer``'s output (:func:`geomsafe.hooks.on_layers`): scores
        the residual stream; in clamp mode returns the clamped one."""

        def hook(hidden: Tensor) -> Tensor | None:
            step = self._step
            if step is None:  # a forward pass that bypassed the model with the LM head
                return None
            proj = hidden.float() @ plan.directions.T  # [B, T, k]
            step.scores[:, :, plan.index] = proj
            if self.mode != "clamp" or plan.cap_index.numel() == 0:
                return None
            s = proj[..., plan.cap_index]
            over = (s > plan.cap_tau) & step.read[..., None]
            if not bool(over.any()):
                return None
            s = s.masked_fill(~step.read[..., None], -math.inf)
            lam = cap_coefficients(s, plan.cap_gram, plan.cap_tau, self._sweeps)
            step.clamped += over.sum((1, 2)).cpu()
            caps = plan.directions[plan.cap_index]
            return hidden - (lam @ caps).to(hidden.dtype)

        return hook

    def after(self, _module: nn.Module, _args: tuple, output: Any) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        trace = self.traces[-1]
        self._judge(trace, step)
        trace.steps.append(
            _Step(
                step.real.cpu(),
                step.read.cpu(),
                step.prefill,
                step.scores.cpu(),
                None if step.input_ids is None else step.input_ids.cpu(),
                step.clamped,
            )
        )
        trace.n_real = [
            a + b for a, b in zip(trace.n_real, step.real.sum(-1).tolist(), strict=True)
        ]
        if self.mode == "block":
            rows = [r for r, v in enumerate(trace.verdicts) if v is not None]
            logits = getattr(output, "logits", None)
            if logits is None and isinstance(output, tuple):
                logits = output[0]
            if rows and isinstance(logits, Tensor):
                logits[rows] = -math.inf
                logits[rows, ..., self._eos] = 0.0
        if self._on_step is not None:
            self._on_step(self, None if step.input_ids is None else step.input_ids.cpu())

    def _judge(self, trace: Trace, step: _Step) -> None:
        """Find the first firing check of every row without a verdict yet."""
        readable = step.read[..., None] & (self._response | step.prefill)  # [B, T, K]
        fire = (step.scores > self._tau) & readable
        if not bool(fire.any()):
            return
        before_t = step.real.long().cumsum(-1) - 1  # index among this pass's real tokens
        for r in torch.nonzero(fire.any((1, 2))).flatten().tolist():
            if trace.verdicts[r] is not None:
                continue
            t = int(torch.nonzero(fire[r].any(-1)).flatten()[0])
            ks = torch.nonzero(fire[r, t]).flatten().tolist()
            margins = {k: self._margin(k, float(step.scores[r, t, k])) for k in ks}
            k = max(ks, key=lambda j: margins[j])
            check = self._checks[k]
            trace.verdicts[r] = Verdict(
                "prompt" if step.prefill else "response",
                check.concept,
                check.layer,
                float(step.scores[r, t, k]),
                check.threshold,
                margins[k],
                trace.n_real[r] + int(before_t[r, t]),
            )

    def _margin(self, k: int, score: float) -> float:
        return (score - self._checks[k].threshold) / self._std[k]


def cap_coefficients(
    s: Tensor, gram: Tensor, tau: Tensor, max_sweeps: int = 100, tol: float = 1e-6
) -> Tensor:
    """Coefficients ``λ ≥ 0`` (``[..., c]``) such that ``h − λ·U`` is the nearest point to ``h``
    with ``U (h − λ·U) ≤ τ``, given the projections ``s = U h`` and ``gram = U Uᵀ`` (unit rows).
    One direction: ``λ = relu(s − τ)``, exact. Several: Hildreth's method (dual coordinate
    ascent); ``-inf`` in ``s`` marks positions that must stay unchanged."""
    if s.shape[-1] == 1:
        return (s - tau).clamp_min(0)
    lam = torch.zeros_like(s.masked_fill(torch.isinf(s), 0.0))
    slack = tol * (1 + tau.abs())
    for _ in range(max_sweeps):
        moved = torch.zeros((), dtype=s.dtype, device=s.device)
        for k in range(s.shape[-1]):
            current = s[..., k] - lam @ gram[:, k]
            new = (lam[..., k] + (current - tau[k]) / gram[k, k]).clamp_min(0)
            moved = torch.maximum(moved, (new - lam[..., k]).abs().max())
            lam[..., k] = new
        if float(moved) <= tol and not bool(((s - lam @ gram) > tau + slack).any()):
            break
    return lam


def _past_length(cache: Any) -> int:
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, tuple | list) and cache and cache[0] is not None:
        return int(cache[0][0].shape[-2])  # legacy tuple cache: [layer][key] = [B, H, T, d]
    return 0


def lm_module(model: nn.Module) -> nn.Module:
    """The transformers model that owns the LM head (for a peft model, the wrapped one: peft
    forwards attribute look-ups, so only a real ``PreTrainedModel`` counts)."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            with contextlib.suppress(Exception):
                if module.get_output_embeddings() is not None:
                    return module
    return model


def _plans(checks: list[Check], device: torch.device) -> list[_LayerPlan]:
    plans = []
    for layer in sorted({c.layer for c in checks}):
        idx = [i for i, c in enumerate(checks) if c.layer == layer]
        dirs = stack_directions([checks[i] for i in idx], device)
        cap = [j for j, i in enumerate(idx) if checks[i].clampable]
        caps = dirs[cap]
        plans.append(
            _LayerPlan(
                layer,
                torch.tensor(idx, device=device),
                dirs,
                torch.tensor(cap, dtype=torch.long, device=device),
                caps @ caps.T,
                torch.tensor([checks[idx[j]].threshold for j in cap], device=device),
            )
        )
    return plans


@contextlib.contextmanager
def install(
    model: nn.Module,
    firewall: Firewall,
    mode: str = "monitor",
    *,
    layer_template: str | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    on_step: Callable[[Session, Tensor | None], None] | None = None,
    max_sweeps: int = 100,
) -> Iterator[Session]:
    """Run ``model`` under ``firewall`` in ``mode`` (``monitor``, ``clamp`` or ``block``; see the
    module docstring) inside the ``with`` block; yields the :class:`Session` that records the
    scores. ``eos_token_id``: the end-of-turn token(s) (default: the model's, by
    :func:`geomsafe.models.eos_ids`; pass ``eos_ids(model, tokenizer)`` to add the tokenizer's
    end of turn); a blocked row is forced to the first, and a row that has fed one back is finished
    (its later padding is not read). ``on_step(session, input_ids)`` is called after every
    forward pass (after its verdicts), e.g. to stream tokens only once they were scored."""
    if mode not in MODES:
        raise GeomsafeError(f"unknown firewall mode {mode!r}; use one of {', '.join(MODES)}")
    if mode != "monitor" and not firewall.calibrated:
        raise GeomsafeError(f"mode {mode!r} needs calibrated thresholds; calibrate first")
    top = lm_module(model)
    firewall.check_width(model_width(top))
    n_layers = len(decoder_blocks(model, layer_template))
    for c in firewall.checks:
        if not 0 <= c.layer < n_layers:
            raise GeomsafeError(f"check {c.key}: the model has {n_layers} layers")
    if eos_token_id is None:
        stop = eos_ids(top)
    elif isinstance(eos_token_id, int):
        stop = [eos_token_id]
    else:
        stop = [int(t) for t in eos_token_id]
    if mode == "block" and not stop:
        raise GeomsafeError("block mode needs an end-of-turn token id (eos_token_id)")
    device = next(top.parameters()).device
    session = Session(firewall, mode, device, stop, on_step, max_sweeps)
    at_layers = {plan.layer: session.layer_hook(plan) for plan in _plans(firewall.checks, device)}
    try:
        with hooks.on_modules(
            [
                hooks.Hook(top, session.before, pre=True, with_kwargs=True),
                *hooks.layer_hooks(model, at_layers, layer_template=layer_template),
                hooks.Hook(top, session.after),
            ]
        ):
            yield session
    finally:
        session._step = None
