"""Which harmful directions a guard watches at which layer, and where those layers are.

A plan maps each guarded layer to the guarded concepts there and their unit directions
(``[F, D]``), plus the target directions at that layer for the covariance guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from geomsafe.atlas import FeatureAtlas
from geomsafe.errors import GeomsafeError
from geomsafe.guard.base import GuardConfig
from geomsafe.layers import get_layers

IGNORE_INDEX = -100


@dataclass
class LayerPlan:
    """The guarded directions at one layer (hook site: output of decoder layer ``layer``)."""

    layer: int
    names: list[str]  # guarded harmful concepts at this layer
    harmful: Tensor  # [F, D] unit rows, float32
    target_names: list[str]
    targets: Tensor | None  # [T, D] unit rows (covariance guard), else None

    @property
    def directions(self) -> Tensor:
        """``[F (+ T), D]``: harmful rows first, then target rows."""
        return self.harmful if self.targets is None else torch.cat([self.harmful, self.targets])


def make_plan(
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
    plans = []
    for layer in sorted(by_layer):
        harmful = atlas.matrix(layer, by_layer[layer]).detach().float().cpu()
        targets = atlas.matrix(layer, target_names).detach().float().cpu() if target_names else None
        plans.append(LayerPlan(layer, by_layer[layer], harmful, list(target_names), targets))
    return plans


def decoder_blocks(model: nn.Module, layer_template: str | None = None) -> list[nn.Module]:
    """The decoder blocks of ``model`` (a peft model or a plain causal LM).

    ``layer_template`` may be relative to the peft model (``base_model.model.model.layers.{num}``)
    or to the wrapped model (``model.layers.{num}``); without one it is guessed on the wrapped
    model.
    """
    get_base = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    if layer_template is None:
        return get_layers(base, None)
    try:
        return get_layers(model, layer_template)
    except GeomsafeError:
        if base is model:
            raise
        return get_layers(base, layer_template)


def assistant_mask(inputs: dict[str, Tensor], shape: tuple[int, int]) -> Tensor:
    """``[B, T]`` bool: tokens whose label is not -100 (the assistant tokens); all attended
    tokens when there are no labels."""
    labels = inputs.get("labels")
    if labels is not None:
        mask = labels != IGNORE_INDEX
    elif inputs.get("attention_mask") is not None:
        mask = inputs["attention_mask"].bool()
    else:
        return torch.ones(shape, dtype=torch.bool)
    if tuple(mask.shape) != tuple(shape):
        raise GeomsafeError(
            f"guard: labels/attention_mask shape {tuple(mask.shape)} does not match the recorded "
            f"activations {tuple(shape)}"
        )
    return mask
