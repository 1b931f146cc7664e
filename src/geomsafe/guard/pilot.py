"""Data-driven guard directions: the principal shifts of a short pilot fine-tune that point
along a harmful direction.

Given, at each guarded layer ``l``, the pooled response activations ``base`` (``[N, D]``,
adapters disabled) and ``tuned`` (``[N, D]``, after a short pilot LoRA run) of ``N`` held-out
training examples (the run itself: :func:`geomsafe.train.pilot.pilot_directions`):

1. **Principal shifts.** ``Δ = tuned - base`` (``[N, D]``, one row per example). The
   principal shifts are the top ``k`` right singular vectors of ``Δ`` *uncentred* (the
   eigenvectors of ``ΔᵀΔ / N``), so the mean shift that every example shares counts as
   well as the spread around it; ``explained`` is each one's share of ``‖Δ‖_F²``. Each is
   oriented so that the mean shift projects positively on it
   (:func:`geomsafe.diff.shifts.principal_shifts`, shared with model diffing).
2. **Alignment.** ``cos_ih = pc_i · u_h`` for every guarded harmful direction ``u_h`` at ``l``.
3. **Null band** (permutation): a label-shuffled direction of the layer's own activations,
   ``d_π = unit(mean(base[S_π]) - mean(base[rest]))`` for a random half ``S_π`` of the
   held-out examples, is what a concept direction looks like when its labels carry no
   information; it inherits the anisotropy of the residual stream (outlier dimensions) that
   makes raw cosines meaningless. The band of ``pc_i`` is the ``1 - α / (k · H)`` quantile of
   ``|pc_i · d_π|`` over ``draws`` permutations (Bonferroni over the ``k`` shifts and ``H``
   harmful directions tested at the layer).
4. **Selection.** ``pc_i`` is kept when ``max_h |cos_ih|`` exceeds its band; it is assigned
   to that ``h`` and re-oriented so that ``cos_ih > 0`` (steering and one-sided penalties then
   act towards the harmful side). With an allow-list, a shift that lies within the allowed
   directions' span (residual norm below :data:`geomsafe.guard.allow.MIN_RESIDUAL`) is
   dropped instead: it is the drift the allow-list means to keep.

The kept shifts form a :class:`~geomsafe.atlas.FeatureAtlas` of harmful features named
``pc<i>_L<layer>`` whose best layer is their own (guards with ``layers=None`` use each at its
layer only; the rows at the atlas's other layers repeat the same vector and carry no
meaning), plus the allowed concepts' directions (kind ``target``) for the allow-list.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geomsafe.artefacts import PILOT_JSON, read_json, write_json
from geomsafe.atlas import FeatureAtlas
from geomsafe.config import option
from geomsafe.diff.shifts import principal_shifts
from geomsafe.errors import GeomsafeError
from geomsafe.guard.allow import MIN_RESIDUAL
from geomsafe.guard.basis import orthonormal_basis

PILOT_KIND = "pilot"


@dataclass
class PilotConfig:
    """The pilot run and the selection of its principal shifts."""

    steps: int = option(
        20, "Optimiser steps of the pilot LoRA run (the run's TrainConfig otherwise)."
    )
    pcs: int = option(3, "Principal shifts tested per guarded layer.")
    heldout: int = option(
        16, "Training examples held out of the pilot run and compared base vs pilot."
    )
    alpha: float = option(
        0.05, "Family-wise level of the null band (Bonferroni over pcs x concepts)."
    )
    draws: int = option(1000, "Permutations of the null band.")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> PilotConfig:
        checks = [
            (self.steps >= 1, f"pilot steps must be >= 1, not {self.steps}"),
            (self.pcs >= 1, f"pilot pcs must be >= 1, not {self.pcs}"),
            (self.heldout >= 4, f"pilot heldout must be >= 4 examples, not {self.heldout}"),
            (0 < self.alpha < 1, f"pilot alpha must be in (0, 1), not {self.alpha}"),
            (self.draws >= 20, f"pilot draws must be >= 20, not {self.draws}"),
        ]
        for ok, message in checks:
            if not ok:
                raise GeomsafeError(message)
        return self


@dataclass
class PilotComponent:
    """One principal shift at one layer and the test that kept or dropped it."""

    name: str  # pc<index>_L<layer>
    layer: int
    index: int  # rank of the shift at its layer (0 = largest)
    explained: float  # share of the squared shift norm along it
    concept: str  # the harmful concept it aligns with most
    cosine: float  # pc · u_concept after orientation (kept: > 0)
    band: float  # null band of |cosine|
    kept: bool
    cosines: dict[str, float] = field(default_factory=dict)  # with every guarded concept
    note: str = ""  # why a shift above its band was dropped ("within the allowed span")


@dataclass
class PilotDirections:
    """The principal shifts considered, the kept ones as an atlas (None when none is kept)."""

    components: list[PilotComponent]
    atlas: FeatureAtlas | None
    config: PilotConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    shifts: dict[int, Tensor] = field(default_factory=dict, repr=False)  # layer -> [k, D] all
    # principal shifts, oriented along the mean shift (not saved)

    @property
    def names(self) -> list[str]:
        """The kept shifts' names (the harmful features of ``atlas``)."""
        return [c.name for c in self.components if c.kept]

    def summary(self) -> str:
        """One line per layer: the best |cosine| against its band."""
        parts = []
        for c in self.components:
            mark = "kept" if c.kept else "dropped"
            cos = f"|cos| {abs(c.cosine):.3f} with {c.concept}"
            parts.append(f"{c.name}: {cos} vs band {c.band:.3f} ({mark})")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "kept": self.names,
            "components": [asdict(c) for c in self.components],
            "provenance": self.provenance,
        }

    def save(self, folder: str | Path) -> Path:
        """``pilot.json`` (:meth:`to_dict`) and, when a shift was kept, the atlas in
        ``folder``, each written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self.atlas is not None:
            self.atlas.save(folder)
        write_json(folder / PILOT_JSON, self.to_dict(), "pilot")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> PilotDirections:
        folder = Path(folder)
        if not (folder / PILOT_JSON).is_file():
            raise GeomsafeError(f"no pilot in {folder} (expected {PILOT_JSON})")
        payload = read_json(folder / PILOT_JSON, "pilot")
        atlas = FeatureAtlas.load(folder) if payload["kept"] else None
        return cls(
            [PilotComponent(**c) for c in payload["components"]],
            atlas,
            PilotConfig(**payload["config"]),
            payload.get("provenance", {}),
        )


def shuffled_directions(base: Tensor, draws: int, generator: torch.Generator) -> Tensor:
    """``[draws, D]`` label-shuffled directions: unit mean differences between a random half
    of the rows of ``base`` (``[N, D]``) and the rest."""
    n = base.shape[0]
    half = n // 2
    order = torch.argsort(torch.rand(draws, n, generator=generator), dim=1)
    weights = torch.full((draws, n), -1.0 / (n - half), dtype=torch.float64)
    weights.scatter_(1, order[:, :half], 1.0 / half)
    dirs = weights @ base.double()
    return (dirs / dirs.norm(dim=-1, keepdim=True).clamp(min=1e-300)).float()


def null_band(
    base: Tensor, pcs: Tensor, draws: int, quantile: float, generator: torch.Generator
) -> Tensor:
    """``[k]``: the ``quantile`` of ``|pc_i · d_π|`` over ``draws`` label-shuffled directions
    ``d_π`` of ``base`` (see the module docstring)."""
    dirs = shuffled_directions(base, draws, generator)
    cos = (dirs.double() @ pcs.double().T).abs()
    return torch.quantile(cos, quantile, dim=0).float()


def select_shifts(
    base: Mapping[int, Tensor],
    tuned: Mapping[int, Tensor],
    atlas: FeatureAtlas,
    concepts: Sequence[str] | Mapping[int, Sequence[str]],
    config: PilotConfig | None = None,
    *,
    allow: Sequence[str] = (),
    seed: int = 0,
) -> PilotDirections:
    """Principal shifts of ``tuned - base`` at each layer (``{layer: [N, D]}``) that align
    with a harmful direction of ``concepts`` (the same at every layer, or ``{layer: names}``)
    above their null band (module docstring)."""
    config = (config or PilotConfig()).validate()
    if sorted(base) != sorted(tuned):
        raise GeomsafeError("pilot: base and tuned activations are at different layers")
    per_layer = {
        layer: list(concepts[layer] if isinstance(concepts, Mapping) else concepts)
        for layer in sorted(base)
    }
    components: list[PilotComponent] = []
    kept: dict[str, Tensor] = {}
    shifts: dict[int, Tensor] = {}
    for layer, names in per_layer.items():
        if not names:
            raise GeomsafeError(f"pilot: no harmful concepts to compare the shifts with at {layer}")
        quantile = 1.0 - config.alpha / (config.pcs * len(names))
        b, t = base[layer].float().cpu(), tuned[layer].float().cpu()
        if b.shape != t.shape or b.shape[0] < 4:
            raise GeomsafeError(
                f"pilot: layer {layer} needs matching [N >= 4, D] activations, got "
                f"{tuple(b.shape)} and {tuple(t.shape)}"
            )
        pcs, explained = principal_shifts(t - b, config.pcs)
        shifts[layer] = pcs
        generator = torch.Generator().manual_seed(seed * 100_003 + layer)
        band = null_band(b, pcs, config.draws, quantile, generator)
        harmful = atlas.matrix(layer, names).float().cpu()
        allowed = None
        if allow:
            allowed = orthonormal_basis(atlas.matrix(layer, list(allow)).float().cpu())
        cos = pcs @ harmful.T  # [k, H]
        for i in range(pcs.shape[0]):
            j = int(cos[i].abs().argmax())
            sign = 1.0 if float(cos[i, j]) >= 0 else -1.0
            name = f"pc{i}_L{layer}"
            ok = abs(float(cos[i, j])) > float(band[i])
            note = ""
            if ok and allowed is not None:
                inside = pcs[i] - (pcs[i] @ allowed) @ allowed.T
                if float(inside.norm()) < MIN_RESIDUAL:
                    ok, note = False, "within the allowed span"
            components.append(
                PilotComponent(
                    name=name,
                    layer=layer,
                    index=i,
                    explained=float(explained[i]),
                    concept=names[j],
                    cosine=sign * float(cos[i, j]),
                    band=float(band[i]),
                    kept=ok,
                    cosines={c: sign * float(cos[i, n]) for n, c in enumerate(names)},
                    note=note,
                )
            )
            if ok:
                kept[name] = sign * pcs[i]
    atlas_out = pilot_atlas(kept, components, atlas, sorted(base), allow)
    return PilotDirections(components, atlas_out, config, shifts=shifts)


def pilot_atlas(
    kept: Mapping[str, Tensor],
    components: Sequence[PilotComponent],
    parent: FeatureAtlas,
    layers: Sequence[int],
    allow: Sequence[str] = (),
) -> FeatureAtlas | None:
    """The kept shifts as harmful features (each at its own best layer) plus the allowed
    concepts of ``parent`` as targets, at ``layers``; None when nothing is kept."""
    if not kept:
        return None
    layers = list(layers)
    rows = [parent.row(layer) for layer in layers]
    by_name = {c.name: c for c in components}
    directions: dict[str, Tensor] = {}
    kinds: dict[str, str] = {}
    stats: dict[str, dict[str, Any]] = {}
    for name, vector in kept.items():
        directions[name] = vector.float().expand(len(layers), -1).clone()
        kinds[name] = "harmful"
        comp = by_name[name]
        stats[name] = {"best_layer": comp.layer, "aligned": comp.concept, "cosine": comp.cosine}
    for name in allow:
        if name not in parent.directions:
            raise GeomsafeError(f"atlas has no direction for allowed concept {name!r}")
        directions[name] = parent.directions[name][rows].float().cpu()
        kinds[name] = "target"
        best = parent.best_layer(name)
        stats[name] = {"best_layer": best if best in layers else layers[len(layers) // 2]}
    provenance = {**parent.provenance, "kind": PILOT_KIND}
    return FeatureAtlas(layers, directions, kinds, stats, provenance)
