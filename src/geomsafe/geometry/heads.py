"""Attention-head attribution: which heads write along a feature direction at a layer.

Head h of layer l writes ``W_O^h z_h`` into the residual stream (``z_h`` its output, ``W_O^h``
its slice of the attention output projection). Its write along a unit direction u is
``(uᵀ W_O^h) z_h``. Attribution of head h to concept c = mean over pairs of that write on the
positive minus the negative response (pooled over response tokens): the head's share of the
concept's separation along u. ``fraction`` divides by the sum of absolute attributions over
heads. A head is *shared* between a target and a harmful feature when it writes positively
along both; its shared score is the smaller of its two fractions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from geomsafe.capture import attention_out_proj
from geomsafe.directions import ConceptActivations
from geomsafe.errors import GeomsafeError
from geomsafe.layers import get_layers
from geomsafe.models import LoadedModel


@dataclass
class HeadAttribution:
    layer: int
    concept: str
    attribution: list[float]  # per head, residual units along u
    fraction: list[float]  # attribution / sum |attribution|

    def top(self, k: int = 3) -> list[int]:
        return sorted(range(len(self.fraction)), key=lambda h: -self.fraction[h])[:k]

    def to_dict(self) -> dict:
        return {**asdict(self), "top_heads": self.top()}


def output_weight(proj: nn.Module) -> Tensor:
    """``[D_out, H*hd]`` weight of an output projection (GPT-2's Conv1D stores it transposed)."""
    w = proj.weight
    return w.T if type(proj).__name__ == "Conv1D" else w


def head_readout(lm: LoadedModel, layer: int, direction: Tensor) -> Tensor:
    """``[H, hd]``: ``uᵀ W_O^h`` for every head."""
    proj = attention_out_proj(get_layers(lm.model, lm.layer_template)[layer])
    w = output_weight(proj).detach().float().cpu()
    return (direction.float() @ w).view(lm.n_heads, lm.head_dim)


def head_attribution(
    lm: LoadedModel,
    acts: ConceptActivations,
    layer: int,
    direction: Tensor,
) -> HeadAttribution:
    """Attribution of every head at ``layer`` from a concept's pooled head outputs
    (``extract(..., heads=True)`` records them in the same pass as the residual stream)."""
    if acts.heads_pos is None or acts.heads_neg is None:
        raise GeomsafeError(f"no head activations for {acts.name}: extract with heads=True")
    j = acts.layers.index(layer)
    z_diff = (acts.heads_pos[:, j].mean(0) - acts.heads_neg[:, j].mean(0)).view(
        lm.n_heads, lm.head_dim
    )
    attr = (head_readout(lm, layer, direction) * z_diff).sum(-1)
    frac = attr / attr.abs().sum().clamp_min(1e-12)
    return HeadAttribution(layer, acts.name, attr.tolist(), frac.tolist())


def shared_heads(a: HeadAttribution, b: HeadAttribution, k: int = 3) -> list[dict]:
    """Heads writing positively along both features, ranked by the smaller fraction."""
    scores = [
        min(x, y) if x > 0 and y > 0 else 0.0 for x, y in zip(a.fraction, b.fraction, strict=True)
    ]
    ranked = sorted(range(len(scores)), key=lambda h: -scores[h])[:k]
    return [
        {"head": h, "shared": scores[h], a.concept: a.fraction[h], b.concept: b.fraction[h]}
        for h in ranked
        if scores[h] > 0
    ]


__all__ = ["HeadAttribution", "head_attribution", "head_readout", "shared_heads"]
