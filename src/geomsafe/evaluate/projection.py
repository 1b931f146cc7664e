"""Projection of the model's own responses on the atlas's harmful directions.

For each harmful feature ``h`` of a :class:`~geomsafe.atlas.FeatureAtlas`, at its best layer
``l`` (from the atlas's stats): the residual stream (output of decoder layer ``l``) of
prompt + generated response, averaged over the response tokens (``tokens="response"``, the
rule the atlas's directions were extracted with), dotted with ``h``'s unit direction at ``l``.
Empty responses are left out. A fine-tune that moves generations toward a harmful feature
raises its projection.
"""

from __future__ import annotations

from collections.abc import Sequence

from geomsafe.atlas import FeatureAtlas
from geomsafe.capture import HOOK_SITE, capture
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example
from geomsafe.models import LoadedModel

TOKENS = "response"


def feature_layers(atlas: FeatureAtlas, lm: LoadedModel, names: Sequence[str]) -> dict[str, int]:
    """Each feature's best layer, checked against the model's depth and width."""
    out = {}
    for name in names:
        if name not in atlas.directions:
            raise GeomsafeError(f"atlas has no feature {name!r}")
        width = int(atlas.directions[name].shape[-1])
        if width != lm.d_model:
            raise GeomsafeError(
                f"atlas feature {name!r} has width {width} but the model has {lm.d_model}; "
                "use an atlas built on this model"
            )
        layer = atlas.best_layer(name)
        if not 0 <= layer < lm.n_layers:
            raise GeomsafeError(
                f"atlas layer {layer} is out of range for a {lm.n_layers}-layer model"
            )
        out[name] = layer
    return out


def response_projections(
    lm: LoadedModel,
    prompts: Sequence[Example],
    responses: Sequence[Sequence[str]],
    atlas: FeatureAtlas,
    names: Sequence[str] | None = None,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> dict[str, list[list[float]]]:
    """``out[feature][i]``: projections of prompt ``i``'s non-empty responses on the feature
    (harmful features of the atlas when ``names`` is None)."""
    names = list(names) if names is not None else list(atlas.harmful)
    if not names:
        raise GeomsafeError("the atlas has no harmful features to project on")
    where = feature_layers(atlas, lm, names)
    rows: list[tuple[int, Example]] = []
    for i, (prompt, texts) in enumerate(zip(prompts, responses, strict=True)):
        for text in texts:
            if text.strip():
                rows.append((i, Example(prompt.prompt, text)))
    out: dict[str, list[list[float]]] = {n: [[] for _ in prompts] for n in names}
    if not rows:
        return out
    acts = capture(
        lm,
        [ex for _, ex in rows],
        layers=sorted(set(where.values())),
        tokens=TOKENS,
        batch_size=batch_size,
        progress=progress,
        desc="projection",
    )
    for name, layer in where.items():
        values = acts.layer(layer).float() @ atlas.direction(name, layer).float().cpu()
        for (i, _), v in zip(rows, values.tolist(), strict=True):
            out[name][i].append(float(v))
    return out


__all__ = ["HOOK_SITE", "TOKENS", "feature_layers", "response_projections"]
