"""First-order estimate of how one gradient step on a dataset moves harmful projections.

For the weights W of the modules that write into the residual stream (attention output and
MLP down projections) up to the deepest layer needed, a step ``ΔW = -lr ∇_W L(D)`` changes
the projection p_h (mean over probe prompts of the last-token residual at h's best layer,
projected on h) by ``Δp_h ≈ -lr <∇_W p_h, ∇_W L(D)>``. L is the mean next-token loss on the
dataset's assistant tokens. Gradient alignment: the cosine between the descent direction
``-∇_W L(D)`` and ``∇_W p_h`` (scale-free, -1..1): the share of the step that raises p_h.
Full weights are used rather than a LoRA's (whose B starts at zero), so the estimate does not
depend on a random LoRA initialisation.

Under :func:`geomsafe.distributed.data_parallel` each rank backpropagates its share of the
data batches and of the probe batches, and the gradients are summed over the ranks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from geomsafe import distributed
from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import make_batches, record
from geomsafe.evaluate.logodds import response_logps
from geomsafe.formatting import Example, encode_all
from geomsafe.layers import attention_out_proj, get_layers, mlp_out_proj
from geomsafe.models import LoadedModel, pad_token_id
from geomsafe.predict.likelihood import length_batches
from geomsafe.projection import concept_layers


def residual_writers(lm: LoadedModel, max_layer: int) -> list[nn.Parameter]:
    """Weights of the attention output and MLP down projections of blocks ``0..max_layer``."""
    params = []
    for block in get_layers(lm.model, lm.layer_template)[: max_layer + 1]:
        params.append(attention_out_proj(block).weight)
        mlp = mlp_out_proj(block)
        if mlp is not None:
            params.append(mlp.weight)
    return params


@contextlib.contextmanager
def trainable(params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Temporarily enable gradients for ``params`` (restored in ``finally``)."""
    before = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, before, strict=True):
            p.requires_grad_(flag)
            p.grad = None


def _loss_grad(
    lm: LoadedModel,
    data: Sequence[Example],
    params,
    batch_size: int,
    max_length: int,
    progress: bool,
    max_tokens: int | None = 256,
) -> list[Tensor]:
    """Gradient of L (module docstring) for ``params``, from the logits of the response
    positions only (:func:`geomsafe.evaluate.logodds.response_logps`)."""
    enc = encode_all(lm.tokenizer, data, max_length)
    enc = [e for e in enc if e.length > e.prompt_len]
    total = sum(e.length - e.prompt_len for e in enc)
    for p in params:
        p.grad = None
    for idx in tqdm(
        distributed.mine(list(length_batches(enc, batch_size, max_tokens))),
        desc="loss gradient",
        disable=not progress,
        leave=False,
    ):
        loss = -response_logps(lm, [enc[i] for i in idx]).sum() / max(total, 1)
        loss.backward()
    out = [p.grad.detach() if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None  # handed over, not copied: one gradient in memory
    distributed.all_sum(*out)
    return out


def probe_prompts(n: int = 32) -> list[Example]:
    """A fixed probe set: the first ``n`` built-in evaluation prompts (all categories)."""
    from importlib import resources

    path = resources.files("geomsafe") / "data" / "eval_prompts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by_cat: dict[str, list[str]] = {}
    for r in rows:
        by_cat.setdefault(r["category"], []).append(r["prompt"])
    mixed = [p for group in zip(*by_cat.values(), strict=False) for p in group]
    return [Example(p) for p in mixed[:n]]


def _projection_grad(
    lm: LoadedModel, batches, layer: int, direction: Tensor, params
) -> list[Tensor | None]:
    """Gradient for ``params`` of the mean over all probes of the last token's projection on
    ``direction`` at ``layer``, one probe batch at a time (one batch's graph in memory)."""
    total = sum(len(b.index) for b in batches)
    acc: list[Tensor | None] = [None] * len(params)
    for batch in distributed.mine(batches):
        with record(lm.model, [layer], lm.layer_template, detach=False) as store:
            lm.model.base_model(
                input_ids=batch.input_ids.to(lm.device),
                attention_mask=batch.attention_mask.to(lm.device),
                position_ids=batch.position_ids.to(lm.device),
                use_cache=False,
            )
        last = store[layer][:, -1].float()  # left padding: the last column is the last token
        proj = (last @ direction.float().to(last.device)).sum() / total
        grads = torch.autograd.grad(proj, params, allow_unused=True)
        for i, g in enumerate(grads):
            if g is not None:
                acc[i] = g if acc[i] is None else acc[i].add_(g)
    return distributed.sum_grads(acc, params)


@dataclass
class GradientEstimate:
    shift: dict[str, float]  # predicted change of the probe projection after one step
    alignment: dict[str, float]  # cos(-grad L, grad p_h)


def gradient_estimate(
    lm: LoadedModel,
    data: Sequence[Example],
    probe: Sequence[Example],
    atlas: FeatureAtlas,
    names: Sequence[str],
    lr: float = 1e-4,
    batch_size: int = 8,
    max_length: int = 256,
    progress: bool = True,
) -> GradientEstimate:
    """Predicted change of each concept's probe projection after one step of size ``lr``, and
    the alignment of the step with the concept's projection gradient."""
    at = concept_layers(atlas, names, lm=lm)
    params = residual_writers(lm, max(at.values()))
    with trainable(params):
        g_loss = _loss_grad(lm, data, params, batch_size, max_length, progress)
        loss_norm = sum(float((g * g).sum()) for g in g_loss) ** 0.5
        enc = encode_all(lm.tokenizer, probe, max_length)
        pad = pad_token_id(lm.tokenizer)
        batches = list(make_batches(enc, batch_size, pad, "left"))
        shift, alignment = {}, {}
        for n in names:
            grads = _projection_grad(lm, batches, at[n], atlas.direction(n, at[n]), params)
            pairs = [(g, gl) for g, gl in zip(grads, g_loss, strict=True) if g is not None]
            dot = sum(float((g * gl).sum()) for g, gl in pairs)
            norm = sum(float((g * g).sum()) for g, _ in pairs) ** 0.5
            shift[n] = -lr * dot
            alignment[n] = -dot / (norm * loss_norm) if norm * loss_norm > 0 else 0.0
    return GradientEstimate(shift, alignment)
