"""Overlap score of a target with harmful features, its permutation null and bootstrap CI.

Overlap score of target t at a layer (or averaged over a layer band):
``max(0, max_h cos(t, h))`` over harmful features h, with the argmax h named. Positive
cosine means pushing the target also pushes the harmful feature.

Null band: the same statistic with the *target's* labels permuted (a fair sign flip of each
pair's difference, the exact permutation for paired data), the harmful directions held
fixed. Activations are anisotropic, so even label-free directions have non-zero cosines
with harmful ones; the null measures how large. p-value = (1 + #null >= observed)/(1 + P).
Bootstrap CI (:class:`geomsafe.stats.CI`): pairs of the target and of every harmful concept
resampled with replacement, each concept a stratum (:func:`geomsafe.stats.stratified_draws`,
seeded ``seed + 1``; the target's draws first, then the harmful concepts' in order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geomsafe.atlas import FeatureAtlas
from geomsafe.directions import ConceptActivations, unit
from geomsafe.errors import GeomsafeError
from geomsafe.stats import CI, percentile, stratified_draws


@dataclass
class OverlapResult:
    """The overlap of ``target`` with the harmful features over ``layers`` (one layer or a band)."""

    target: str
    harmful: str
    layers: list[int]
    score: float
    cosines: dict[str, float]
    ci: CI  # the score with its bootstrap interval (n: the target's pairs)
    p_value: float
    null_mean: float
    null_q95: float
    n_perm: int
    n_boot: int

    def to_dict(self) -> dict[str, Any]:
        """The fields, ``ci`` as :meth:`CI.to_dict` (audit.json from ``geomsafe.audit/2``)."""
        return {**asdict(self), "ci": self.ci.to_dict()}


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


def _resampled_directions(diffs: Tensor, idx: np.ndarray) -> Tensor:
    """The mean-difference directions of the resamples ``idx`` (``[n_boot, n]``) of ``diffs``
    ``[n, R, D]``: ``[n_boot, R, D]``."""
    n_boot, n = idx.shape
    counts = torch.from_numpy(np.stack([np.bincount(row, minlength=n) for row in idx]))
    flat = diffs.flatten(1)
    return (counts.to(flat.dtype) @ flat).view(n_boot, *diffs.shape[1:]) / n


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
    diffs = [_diffs(activations[name], layers) for name in [target, *harmful]]
    draws = stratified_draws([d.shape[0] for d in diffs], n_boot, seed + 1)
    boot_t = _resampled_directions(diffs[0], draws[0])
    boot_cos = [
        _band_cos(boot_t, _resampled_directions(d, idx))
        for d, idx in zip(diffs[1:], draws[1:], strict=True)
    ]
    boot = torch.stack(boot_cos, 1).max(dim=1).values.clamp_min(0)
    ci = CI(score, *percentile(boot.double().numpy()), diffs[0].shape[0], n_boot)
    return OverlapResult(
        target=target,
        harmful=nearest,
        layers=list(layers),
        score=score,
        cosines=cos,
        ci=ci,
        p_value=p_value,
        null_mean=float(null.mean()),
        null_q95=float(torch.quantile(null, 0.95)),
        n_perm=n_perm,
        n_boot=n_boot,
    )
