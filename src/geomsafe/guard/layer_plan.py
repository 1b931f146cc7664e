"""Which harmful directions a guard watches at which layer.

A plan maps each guarded layer to the guarded concepts there and their unit directions
(``[F, D]``), plus the target directions at that layer for the covariance guard. With an
allow-list (``GuardConfig.allow``) the harmful directions are orthogonalised against the
allowed ones at each layer (:mod:`geomsafe.guard.allow`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.guard.allow import allowed_complement
from geomsafe.guard.base import GuardConfig


@dataclass
class LayerPlan:
    """The guarded directions at one layer (hook site: output of decoder layer ``layer``)."""

    layer: int
    names: list[str]  # guarded harmful concepts at this layer
    harmful: Tensor  # [F, D] unit rows, float32
    target_names: list[str]
    targets: Tensor | None  # [T, D] unit rows (covariance guard), else None
    allowed: list[str] = field(default_factory=list)  # the harmful rows are orthogonal to these

    @property
    def directions(self) -> Tensor:
        """``[F (+ T), D]``: harmful rows first, then target rows."""
        return self.harmful if self.targets is None else torch.cat([self.harmful, self.targets])


def layer_plans(
    atlas: FeatureAtlas, config: GuardConfig, with_targets: bool = False
) -> list[LayerPlan]:
    """The guarded layers in increasing order. Raises GeomsafeError on unknown names/layers."""
    names = list(config.concepts) if config.concepts is not None else atlas.harmful
    if not names:
        raise GeomsafeError("no guarded concepts: the atlas has no harmful features; pass concepts")
    missing = [n for n in names if n not in atlas.directions]
    if missing:
        have = ", ".join(atlas.directions) or "none"
        raise GeomsafeError(f"atlas has no direction for {', '.join(missing)} (it has: {have})")
    if config.layers is not None:
        bad = [layer for layer in config.layers if layer not in atlas.layers]
        if bad:
            raise GeomsafeError(
                f"guard layers {bad} are not in the atlas (atlas layers: {atlas.layers})"
            )
        by_layer = {layer: list(names) for layer in sorted(set(config.layers))}
    else:
        by_layer = {}
        for name in names:
            by_layer.setdefault(atlas.best_layer(name), []).append(name)
    target_names: list[str] = []
    if with_targets:
        target_names = list(config.targets) if config.targets is not None else atlas.targets
        if not target_names:
            raise GeomsafeError(
                "the covariance guard needs target directions: the atlas has no "
                "target features (extract some or set GuardConfig.targets)"
            )
        missing = [n for n in target_names if n not in atlas.directions]
        if missing:
            raise GeomsafeError(f"atlas has no target direction for {', '.join(missing)}")
    allow = list(config.allow or [])
    missing = [n for n in allow if n not in atlas.directions]
    if missing:
        raise GeomsafeError(f"atlas has no direction for allowed concept {', '.join(missing)}")
    if set(allow) & set(names):
        raise GeomsafeError(f"{', '.join(set(allow) & set(names))} is both guarded and allowed")
    plans = []
    for layer in sorted(by_layer):
        harmful = atlas.matrix(layer, by_layer[layer]).detach().float().cpu()
        if allow:
            allowed = atlas.matrix(layer, allow).detach().float().cpu()
            harmful = allowed_complement(harmful, allowed, by_layer[layer], allow, layer)
        targets = atlas.matrix(layer, target_names).detach().float().cpu() if target_names else None
        plans.append(LayerPlan(layer, by_layer[layer], harmful, list(target_names), targets, allow))
    return plans
