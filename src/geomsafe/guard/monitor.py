"""The projection monitor: a recording-only atlas guard.

It neither penalises nor changes anything. Inside the training forward passes it records,
for each concept at the concept's best atlas layer, the mean projection of the assistant
tokens' residual stream (output of that decoder layer, labels != -100) on the concept's unit
direction, over the micro-batches of an optimiser step: the geometry log's ``proj/<concept>``.
Installed together with other atlas guards it shares their hook at each layer, so it costs
no extra forward and no extra hook.

It is not a registered kind: ``finetune`` adds it whenever it has an atlas and concepts, with
or without guards.
"""

from __future__ import annotations

from collections.abc import Sequence

from geomsafe.atlas import FeatureAtlas
from geomsafe.guard.atlas_guard import AtlasGuard
from geomsafe.guard.base import GuardConfig


class MonitorGuard(AtlasGuard):
    name = "monitor"

    def __init__(
        self, atlas: FeatureAtlas, concepts: Sequence[str], layer_template: str | None = None
    ) -> None:
        super().__init__(atlas, GuardConfig(concepts=list(concepts)), layer_template)

    def log(self) -> dict[str, float]:
        """``proj/<concept>`` of the step (no ``penalty`` or ``strength``: the monitor has
        neither)."""
        return {k: v for k, v in super().log().items() if k not in ("penalty", "strength")}
