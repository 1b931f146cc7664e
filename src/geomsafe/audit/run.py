"""`audit`: where do harmful features sit relative to a fine-tuning target?

Extracts a FeatureAtlas for the harmful and target concepts (plus a label-shuffled control),
then reports for every target its overlap with the nearest harmful feature at the target's
best layer and over a layer band, with permutation p-value and bootstrap CI; the same for
every harmful feature against the other harmful ones; superposition density per layer; and
the attention heads that write along both a target and its nearest harmful feature.

Under a launcher (``torchrun --nproc_per_node N``) the capture of the concept pairs is shared
out over the processes and reduced (:mod:`geomsafe.distributed`); every process then holds the
one-process activations and computes the rest itself; only rank 0 writes ``out``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geomsafe import distributed
from geomsafe.artefacts import ATLAS_DIR, AUDIT_JSON, CONTROL, prepare_out, stamp, write_json
from geomsafe.atlas import FeatureAtlas
from geomsafe.audit.config import AuditConfig
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
from geomsafe.layers import default_band
from geomsafe.models import LoadedModel, load
from geomsafe.threads import torch_threads


@dataclass
class AuditResult:
    atlas: FeatureAtlas
    report: dict[str, Any]
    extraction: Extraction | None = field(default=None, repr=False)

    @property
    def rows(self) -> list[dict]:
        return self.report["targets"]


class _Clock:
    """Seconds per phase: ``lap(name)`` adds the time since the previous lap to ``name``."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - self.last
        self.last = now


def audit(
    model: str | LoadedModel = "default",
    *,
    out: str | Path | None = None,
    config: AuditConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
    **options: Any,
) -> AuditResult:
    """Run the geometric audit; write ``atlas/`` and ``audit.json`` into ``out`` when given.

    ``options`` override :class:`AuditConfig` fields (``max_pairs=16``, ``target=["code"]``,
    ...). Every setting, concept file and ``out`` is checked before the model is loaded; a
    non-empty ``out`` is refused unless ``overwrite``. The report's ``phases`` holds the
    seconds spent per phase (load, extract, overlap, heads, neighbours, density). Under a
    launcher every rank returns the same result and rank 0 alone writes ``out`` (module
    docstring)."""
    cfg = (config or AuditConfig()).with_options(**options)
    folder = prepare_out(out, "audit", overwrite=overwrite) if out is not None else None
    sets, harmful, targets = _concept_sets(cfg)
    with distributed.data_parallel(), torch_threads(cfg.threads):
        progress = progress and distributed.is_main()
        clock = _Clock()
        lm = model if isinstance(model, LoadedModel) else load(model)
        clock.lap("load")
        ex = extract(
            lm,
            sets,
            layers=list(cfg.layers) if cfg.layers else None,
            tokens=cfg.tokens,
            seed=cfg.seed,
            batch_size=cfg.batch_size,
            progress=progress,
            heads=cfg.heads,
        )
        clock.lap("extract")
        atlas = ex.atlas
        if cfg.layer is not None and cfg.layer not in atlas.layers:
            raise GeomsafeError(f"layer {cfg.layer} was not extracted (layers {atlas.layers})")
        band = _band(cfg, lm, atlas)
        rows = [
            _score_target(lm, ex, name, harmful, band, cfg, clock)
            for name in targets + ([CONTROL] if cfg.control else [])
        ]
        neighbours = _harmful_neighbours(ex, harmful, cfg)
        clock.lap("neighbours")
        density = _density(ex, cfg.seed)
        clock.lap("density")
    report = _report(atlas, rows, neighbours, density, band, cfg, clock)
    if folder is not None and distributed.is_main():
        with folder.writing() as work:
            write_audit(work, atlas, report)
    return AuditResult(atlas, report, ex)


def _concept_sets(cfg: AuditConfig) -> tuple[list[ConceptSet], list[str], list[str]]:
    """The concept sets (sampled to ``max_pairs``, plus the control), harmful and target names."""
    sets = [
        load_for_direction(s).subset(cfg.max_pairs, cfg.seed)
        for s in cfg.concepts or builtin_names()
    ]
    harmful = [c.name for c in sets if c.kind == "harmful"]
    targets = [c.name for c in sets if c.kind == "target"]
    if cfg.target:
        unknown = [t for t in cfg.target if t not in {c.name for c in sets}]
        if unknown:
            raise GeomsafeError(f"target(s) not among the concepts: {', '.join(unknown)}")
        targets = list(cfg.target)
    if not harmful:
        raise GeomsafeError("the audit needs at least one harmful concept")
    if not targets:
        raise GeomsafeError("the audit needs at least one target concept")
    if cfg.control:
        base = next(c for c in sets if c.name == targets[0])
        sets.append(base.shuffled_labels(cfg.seed, name=CONTROL))
    return sets, harmful, targets


def _band(cfg: AuditConfig, lm: LoadedModel, atlas: FeatureAtlas) -> list[int]:
    """The extracted layers of the configured band (default: the middle third)."""
    if cfg.band is None:
        return [b for b in default_band(lm.n_layers) if b in atlas.layers] or atlas.layers
    band = [b for b in cfg.band if b in atlas.layers]
    if not band:
        raise GeomsafeError(f"band {list(cfg.band)} has no extracted layer (layers {atlas.layers})")
    return band


def _score_target(
    lm: LoadedModel,
    ex: Extraction,
    name: str,
    harmful: list[str],
    band: list[int],
    cfg: AuditConfig,
    clock: _Clock,
) -> dict[str, Any]:
    """One target's row: overlap with its nearest harmful feature at its layer and over the
    band, per layer, and (with ``heads``) the attention heads writing along both."""
    atlas, acts = ex.atlas, ex.activations
    at = cfg.layer if cfg.layer is not None else atlas.best_layer(name)
    res = overlap(atlas, acts, name, [at], harmful, cfg.n_perm, cfg.n_boot, cfg.seed)
    res_band = overlap(atlas, acts, name, band, harmful, cfg.n_perm, cfg.n_boot, cfg.seed)
    row = {
        **res.to_dict(),
        "layer": at,
        "auroc": atlas.stats[name]["best_auroc"],
        "band": res_band.to_dict(),
        "per_layer": overlap_per_layer(atlas, name, harmful, acts, cfg.n_perm, cfg.seed),
    }
    clock.lap("overlap")
    if cfg.heads:
        ht = head_attribution(lm, acts[name], at, atlas.direction(name, at))
        hh = head_attribution(lm, acts[res.harmful], at, atlas.direction(res.harmful, at))
        row["heads"] = {
            "target": ht.to_dict(),
            "harmful": hh.to_dict(),
            "shared": shared_heads(ht, hh),
        }
        clock.lap("heads")
    return row


def _harmful_neighbours(ex: Extraction, harmful: list[str], cfg: AuditConfig) -> list[dict]:
    """Every harmful feature's overlap with its nearest other harmful feature."""
    atlas, rows = ex.atlas, []
    for h in harmful:
        others = [x for x in harmful if x != h]
        if others:
            at = atlas.best_layer(h)
            res = overlap(atlas, ex.activations, h, [at], others, cfg.n_perm, cfg.n_boot, cfg.seed)
            rows.append({**res.to_dict(), "layer": at})
    return rows


def _density(ex: Extraction, seed: int) -> list[dict]:
    """Superposition density of the (non-control) features at every extracted layer."""
    atlas = ex.atlas
    features = [n for n in atlas.names() if atlas.kinds[n] != "control"]
    acts = torch.cat(
        [torch.cat([a.pos, a.neg]) for n, a in ex.activations.items() if n in features]
    )
    return [
        superposition_density(atlas.matrix(x, features), acts[:, j], x, seed=seed).to_dict()
        for j, x in enumerate(atlas.layers)
    ]


def _report(
    atlas: FeatureAtlas,
    rows: list[dict],
    neighbours: list[dict],
    density: list[dict],
    band: list[int],
    cfg: AuditConfig,
    clock: _Clock,
) -> dict[str, Any]:
    """The ``audit.json`` payload (stamped ``geomsafe.audit/2``)."""
    features = [n for n in atlas.names() if atlas.kinds[n] != "control"]
    report = {
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
            "max_pairs": cfg.max_pairs,
            "tokens": cfg.tokens,
            "n_perm": cfg.n_perm,
            "n_boot": cfg.n_boot,
            "seed": cfg.seed,
            "layer": cfg.layer,
        },
        "provenance": atlas.provenance,
        "seconds": time.perf_counter() - clock.start,
        "phases": clock.phases,
    }
    return stamp(report, "audit")


def write_audit(out: str | Path, atlas: FeatureAtlas, report: dict) -> Path:
    """Write ``<out>/atlas/`` and ``<out>/audit.json`` (each file atomically)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    atlas.save(folder / ATLAS_DIR)
    write_json(folder / AUDIT_JSON, report, "audit")
    return folder
