"""Overlap score of a target with harmful features, its permutation null and bootstrap CI.

Overlap score of target t at a layer (or averaged over a layer band):
``max(0, max_h cos(t, h))`` over harmful features h, with the argmax h named. Positive
cosine means pushing the target also pushes the harmful feature.

Null band: the same statistic with the *target's* labels permuted (a fair sign flip of each
pair's difference, the exact permutation for paired data), the harmful directions held
fixed. Activations are anisotropic, so even label-free directions have non-zero cosines
with harmful ones; the null measures how large. p-value = (1 + #null >= observed)/(1 + P).
Bootstrap CI: pairs of the target and of every harmful concept resampled with replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from geomsafe.atlas import FeatureAtlas
from geomsafe.directions import ConceptActivations, unit
from geomsafe.errors import GeomsafeError


@dataclass
class OverlapResult:
    """The overlap of ``target`` with the harmful features over ``layers`` (one layer or a band)."""

    target: str
    harmful: str
    layers: list[int]
    score: float
    cosines: dict[str, float]
    ci_low: float
    ci_high: float
    p_value: float
    null_mean: float
    null_q95: float
    n_perm: int
    n_boot: int

    def to_dict(self) -> dict:
        return asdict(self)


def cosine_matrix(atlas: FeatureAtlas, layer: int, names: Sequence[str] | None = None) -> Tensor:
    m = atlas.matrix(layer, list(names) if names else None)
    return unit(m) @ unit(m).T


def _band_cos(t: Tensor, h: Tensor) -> Tensor:
    """Mean over the band rows of the cosine; ``t``, ``h``: ``[..., R, D]``."""
    return (unit(t) * unit(h)).sum(-1).mean(-1)


def overlap_score(
    atlas: FeatureAtlas, target: str, layers: Sequence[int], harmful: Sequence[str] | None = None
) -> tuple[float, str, dict[str, float]]:
    """Score, nearest harmful feature and every harmful cosine (band-averaged)."""
    harmful = [h for h in (harmful or atlas.harmful) if h != target]
    if not harmful:
        raise GeomsafeError("the atlas has no harmful features to compare with")
    rows = [atlas.row(layer) for layer in layers]
    t = atlas.directions[target][rows]
    cos = {h: float(_band_cos(t, atlas.directions[h][rows])) for h in harmful}
    nearest = max(cos, key=lambda k: cos[k])
    return max(0.0, cos[nearest]), nearest, cos


def overlap_per_layer(
    atlas: FeatureAtlas,
    target: str,
    harmful: Sequence[str] | None = None,
    activations: dict[str, ConceptActivations] | None = None,
    n_perm: int = 200,
    seed: int = 0,
) -> list[dict]:
    """Score per layer; with ``activations``, also that layer's null band (mean and 95th pct).

    Every layer's null uses the same ``n_perm`` sign flips (drawn from ``seed``), so all layers
    are computed at once: one ``[n_perm, pairs] @ [pairs, L*D]`` product."""
    harmful = [h for h in (harmful or atlas.harmful) if h != target]
    if not harmful:
        raise GeomsafeError("the atlas has no harmful features to compare with")
    cos_all = _layer_cos(atlas.directions[target], [atlas.directions[h] for h in harmful])
    null_all = None
    if activations is not None:
        null_all = _null(atlas, activations, target, atlas.layers, harmful, n_perm, seed, False)
    out = []
    for j, layer in enumerate(atlas.layers):
        cos = {h: float(cos_all[k, j]) for k, h in enumerate(harmful)}
        nearest = max(cos, key=lambda k: cos[k])
        score = max(0.0, cos[nearest])
        row = {"layer": layer, "score": score, "harmful": nearest, "cosines": cos}
        if null_all is not None:
            null = null_all[:, j].contiguous()
            row |= {
                "null_mean": float(null.mean()),
                "null_q95": float(torch.quantile(null, 0.95)),
                "p_value": float((1 + (null >= score).sum()) / (1 + n_perm)),
            }
        out.append(row)
    return out


def _layer_cos(t: Tensor, hs: Sequence[Tensor]) -> Tensor:
    """Cosine per layer of ``t`` ``[..., L, D]`` with each of ``hs`` ``[L, D]``: ``[..., H, L]``."""
    h = unit(torch.stack(list(hs)))
    return (unit(t).unsqueeze(-3) * h).sum(-1)


def _diffs(acts: ConceptActivations, layers: Sequence[int]) -> Tensor:
    """Per-pair differences (positive - negative) at ``layers``: ``[n, R, D]``."""
    rows = [acts.layers.index(layer) for layer in layers]
    return acts.pos[:, rows] - acts.neg[:, rows]


def _null(atlas, activations, target, layers, harmful, n_perm, seed, band=True) -> Tensor:
    """Permutation null of the overlap statistic: ``[n_perm]`` over the band ``layers``, or
    ``[n_perm, R]`` (one column per layer) when ``band`` is False."""
    gen = torch.Generator().manual_seed(seed)
    null_t = _sign_flip_directions(_diffs(activations[target], layers), n_perm, gen)
    rows = [atlas.row(x) for x in layers]
    if not band:
        cos = _layer_cos(null_t, [atlas.directions[h][rows] for h in harmful])
        return cos.max(dim=1).values.clamp_min(0)
    h_dirs = torch.stack([atlas.directions[h][rows] for h in harmful])
    return _band_cos(null_t[:, None], h_dirs[None]).max(dim=1).values.clamp_min(0)


def _sign_flip_directions(diffs: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` label-permuted mean-difference directions: ``[n, R, D]``."""
    signs = torch.randint(0, 2, (n, diffs.shape[0]), generator=generator).float() * 2 - 1
    return (signs @ diffs.flatten(1)).view(n, *diffs.shape[1:]) / diffs.shape[0]


def _resampled_directions(diffs: Tensor, n: int, generator: torch.Generator) -> Tensor:
    idx = torch.randint(0, diffs.shape[0], (n, diffs.shape[0]), generator=generator)
    counts = torch.zeros(n, diffs.shape[0]).scatter_add_(1, idx, torch.ones(n, diffs.shape[0]))
    return (counts @ diffs.flatten(1)).view(n, *diffs.shape[1:]) / diffs.shape[0]


def overlap(
    atlas: FeatureAtlas,
    activations: dict[str, ConceptActivations],
    target: str,
    layers: Sequence[int],
    harmful: Sequence[str] | None = None,
    n_perm: int = 200,
    n_boot: int = 200,
    seed: int = 0,
) -> OverlapResult:
    """Overlap score of ``target`` over ``layers`` with its permutation null and bootstrap CI."""
    harmful = [h for h in (harmful or atlas.harmful) if h != target]
    score, nearest, cos = overlap_score(atlas, target, layers, harmful)
    missing = [n for n in [target, *harmful] if n not in activations]
    if missing:
        raise GeomsafeError(f"no activations for {', '.join(missing)}: null and CI need them")
    null = _null(atlas, activations, target, layers, harmful, n_perm, seed)
    p_value = float((1 + (null >= score).sum()) / (1 + n_perm))
    gen = torch.Generator().manual_seed(seed + 1)
    boot_t = _resampled_directions(_diffs(activations[target], layers), n_boot, gen)
    boot_cos = []
    for h in harmful:
        h_diffs = _diffs(activations[h], layers)
        boot_cos.append(_band_cos(boot_t, _resampled_directions(h_diffs, n_boot, gen)))
    boot = torch.stack(boot_cos, 1).max(dim=1).values.clamp_min(0)
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975])).tolist()
    return OverlapResult(
        target=target,
        harmful=nearest,
        layers=list(layers),
        score=score,
        cosines=cos,
        ci_low=lo,
        ci_high=hi,
        p_value=p_value,
        null_mean=float(null.mean()),
        null_q95=float(torch.quantile(null, 0.95)),
        n_perm=n_perm,
        n_boot=n_boot,
    )
