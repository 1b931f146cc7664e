"""`audit`: where do harmful features sit relative to a fine-tuning target?

Extracts a FeatureAtlas for the harmful and target concepts (plus a label-shuffled control),
then reports for every target its overlap with the nearest harmful feature at the target's
best layer and over a layer band, with permutation p-value and bootstrap CI; the same for
every harmful feature against the other harmful ones; superposition density per layer; and
the attention heads that write along both a target and its nearest harmful feature.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import geomsafe
from geomsafe.atlas import FeatureAtlas, atomic_write
from geomsafe.concepts import ConceptSet, builtin_names, load_for_direction
from geomsafe.directions import Extraction, extract
from geomsafe.errors import GeomsafeError
from geomsafe.geometry import (
    cosine_matrix,
    head_attribution,
    overlap,
    overlap_per_layer,
    superposition_density,
)
from geomsafe.geometry.heads import shared_heads
from geomsafe.models import LoadedModel, load

CONTROL = "random_labels"
AUDIT_JSON = "audit.json"


@dataclass
class AuditResult:
    atlas: FeatureAtlas
    report: dict[str, Any]
    extraction: Extraction | None = field(default=None, repr=False)

    @property
    def rows(self) -> list[dict]:
        return self.report["targets"]


def default_band(n_layers: int) -> list[int]:
    """The middle third of the layers, where concept directions are usually cleanest."""
    lo, hi = n_layers // 3, max(n_layers // 3 + 1, (2 * n_layers) // 3)
    return list(range(lo, hi))


def _concepts(specs: Sequence[str] | None, max_pairs: int | None, seed: int) -> list[ConceptSet]:
    sets = [load_for_direction(s) for s in (specs or builtin_names())]
    return [c.subset(max_pairs, seed) for c in sets]


def audit(
    model: str | LoadedModel = "default",
    *,
    target: Sequence[str] | None = None,
    concepts: Sequence[str] | None = None,
    out: str | Path | None = None,
    layers: Sequence[int] | None = None,
    layer: int | None = None,
    band: Sequence[int] | None = None,
    max_pairs: int | None = 64,
    tokens: str = "response",
    n_perm: int = 200,
    n_boot: int = 200,
    control: bool = True,
    heads: bool = True,
    seed: int = 0,
    batch_size: int = 16,
    progress: bool = True,
) -> AuditResult:
    """Run the geometric audit; write ``atlas.*`` and ``audit.json`` into ``out`` when given.
    The report's ``phases`` holds the seconds spent per phase (load, extract, overlap, heads,
    neighbours, density)."""
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    lm = model if isinstance(model, LoadedModel) else load(model)
    lap = _lap(phases, "load", t0)
    sets = _concepts(concepts, max_pairs, seed)
    harmful = [c.name for c in sets if c.kind == "harmful"]
    targets = [c.name for c in sets if c.kind == "target"]
    if target:
        unknown = [t for t in target if t not in {c.name for c in sets}]
        if unknown:
            raise GeomsafeError(f"target(s) not among the concepts: {', '.join(unknown)}")
        targets = list(target)
    if not harmful:
        raise GeomsafeError("the audit needs at least one harmful concept")
    if not targets:
        raise GeomsafeError("the audit needs at least one target concept")
    if control:
        base = next(c for c in sets if c.name == targets[0])
        sets.append(base.shuffled_labels(seed, name=CONTROL))
    ex = extract(
        lm,
        sets,
        layers=layers,
        tokens=tokens,
        seed=seed,
        batch_size=batch_size,
        progress=progress,
        heads=heads,
    )
    lap = _lap(phases, "extract", lap)
    atlas = ex.atlas
    if layer is not None and layer not in atlas.layers:
        raise GeomsafeError(f"layer {layer} was not extracted (layers {atlas.layers})")
    band = [b for b in (band or default_band(lm.n_layers)) if b in atlas.layers] or atlas.layers

    def scored(name: str, against: list[str]) -> dict:
        nonlocal lap
        at = layer if layer is not None else atlas.best_layer(name)
        res = overlap(atlas, ex.activations, name, [at], against, n_perm, n_boot, seed)
        res_band = overlap(atlas, ex.activations, name, band, against, n_perm, n_boot, seed)
        row = {
            **res.to_dict(),
            "layer": at,
            "auroc": atlas.stats[name]["best_auroc"],
            "band": res_band.to_dict(),
            "per_layer": overlap_per_layer(atlas, name, against, ex.activations, n_perm, seed),
        }
        lap = _lap(phases, "overlap", lap)
        if heads:
            acts = ex.activations
            ht = head_attribution(lm, acts[name], at, atlas.direction(name, at))
            hh = head_attribution(lm, acts[res.harmful], at, atlas.direction(res.harmful, at))
            row["heads"] = {
                "target": ht.to_dict(),
                "harmful": hh.to_dict(),
                "shared": shared_heads(ht, hh),
            }
            lap = _lap(phases, "heads", lap)
        return row

    rows = [scored(t, harmful) for t in targets + ([CONTROL] if control else [])]
    neighbours = []
    for h in harmful:
        others = [x for x in harmful if x != h]
        if others:
            at = atlas.best_layer(h)
            res = overlap(atlas, ex.activations, h, [at], others, n_perm, n_boot, seed)
            neighbours.append({**res.to_dict(), "layer": at})
    lap = _lap(phases, "neighbours", lap)
    features = [n for n in atlas.names() if atlas.kinds[n] != "control"]
    all_acts = torch.cat(
        [torch.cat([a.pos, a.neg]) for n, a in ex.activations.items() if n in features]
    )
    density = [
        superposition_density(atlas.matrix(x, features), all_acts[:, j], x, seed=seed).to_dict()
        for j, x in enumerate(atlas.layers)
    ]
    _lap(phases, "density", lap)
    report = {
        "kind": "audit",
        "targets": rows,
        "harmful_neighbours": neighbours,
        "density": density,
        "cosines": {
            "names": features,
            "by_layer": {str(x): cosine_matrix(atlas, x, features).tolist() for x in atlas.layers},
        },
        "separation": {n: atlas.stats[n]["heldout_auroc"] for n in atlas.names()},
        "best_layer": {n: atlas.best_layer(n) for n in atlas.names()},
        "band": band,
        "settings": {
            "max_pairs": max_pairs,
            "tokens": tokens,
            "n_perm": n_perm,
            "n_boot": n_boot,
            "seed": seed,
            "layer": layer,
        },
        "provenance": atlas.provenance,
        "geomsafe_version": geomsafe.__version__,
        "seconds": time.perf_counter() - t0,
        "phases": phases,
    }
    if out is not None:
        write_audit(out, atlas, report)
    return AuditResult(atlas, report, ex)


def _lap(phases: dict[str, float], name: str, since: float) -> float:
    """Add the seconds since ``since`` to ``phases[name]``; returns now."""
    now = time.perf_counter()
    phases[name] = phases.get(name, 0.0) + now - since
    return now


def write_audit(out: str | Path, atlas: FeatureAtlas, report: dict) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atlas.save(folder)
    atomic_write(folder / AUDIT_JSON, lambda p: Path(p).write_text(json.dumps(report, indent=1)))
    return folder
