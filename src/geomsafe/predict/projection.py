"""Projections of a dataset on harmful directions: the data's responses, the model's own
responses to the same prompts, and the last prompt token.

All projections are taken at each concept's best layer (from the atlas), on the residual
stream (decoder-layer output), pooled over the selected tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import capture
from geomsafe.formatting import Example
from geomsafe.models import LoadedModel


def concept_layers(atlas: FeatureAtlas, names: Sequence[str]) -> dict[str, int]:
    return {n: atlas.best_layer(n) for n in names}


def project(
    lm: LoadedModel,
    examples: Sequence[Example],
    atlas: FeatureAtlas,
    names: Sequence[str],
    tokens: str,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "project",
) -> Tensor:
    """``[N, H]``: each example's pooled activation projected on each concept's direction."""
    at = concept_layers(atlas, names)
    layers = sorted(set(at.values()))
    acts = capture(
        lm,
        examples,
        layers=layers,
        tokens=tokens,
        batch_size=batch_size,
        progress=progress,
        desc=desc,
    )
    cols = [acts.layer(at[n]) @ atlas.direction(n, at[n]).float() for n in names]
    return torch.stack(cols, dim=1)


@torch.no_grad()
def generate_own(
    lm: LoadedModel,
    prompts: Sequence[Example],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    progress: bool = True,
) -> list[str]:
    """The model's own greedy responses to ``prompts`` (deterministic, KV cache, left padding)."""
    from tqdm.auto import tqdm

    from geomsafe.formatting import render_prompt

    tok = lm.tokenizer
    texts = [render_prompt(tok, ex.messages()) for ex in prompts]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    out: list[str] = [""] * len(texts)
    old_side = tok.padding_side
    tok.padding_side = "left"
    try:
        starts = range(0, len(order), batch_size)
        for s in tqdm(starts, desc="own responses", disable=not progress, leave=False):
            idx = order[s : s + batch_size]
            enc = tok(
                [texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(lm.device)
            gen = lm.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
            for row, i in enumerate(idx):
                new = gen[row, enc["input_ids"].shape[1] :]
                out[i] = tok.decode(new, skip_special_tokens=True).strip()
    finally:
        tok.padding_side = old_side
    return out
