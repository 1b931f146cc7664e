"""Resolve the guards of a run: guard names and objects, the guarded concepts and the atlas.

Names are registered guard kinds (:data:`~geomsafe.guard.GUARDS`), so a kind added with
``@register`` works here as the built-in ones do. Without an atlas, guards by name get one
extracted on the fly (:func:`geomsafe.directions.extract`) from the guarded concepts (built-in
names or concept ``.jsonl`` files) and, when a kind records target directions too
(``with_targets``: covariance), from the target concepts, and from the allowed concepts
(``GuardConfig.allow``). :meth:`GuardSetup.with_pilot` rebuilds the kinds on a pilot's
directions (``GuardConfig(source="pilot")``, run by ``finetune``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geomsafe import directions
from geomsafe.atlas import FeatureAtlas
from geomsafe.concepts import builtin_names, load_concept, load_for_direction
from geomsafe.errors import GeomsafeError
from geomsafe.guard.base import (
    GUARDS,
    Guard,
    GuardConfig,
    build_guards,
    guard_kinds,
    needs_atlas,
)
from geomsafe.guard.monitor import MonitorGuard
from geomsafe.guard.pilot import PilotDirections
from geomsafe.models import LoadedModel
from geomsafe.options import split_csv

GuardSpec = str | Guard | Sequence[str | Guard] | None


@dataclass
class GuardSetup:
    """The guards of a run, ready to install (all built with one layer template)."""

    kinds: list[str]  # registered kinds built from the atlas, in order
    guards: list[Guard]  # the guards of those kinds, then the guard objects passed in
    monitor: MonitorGuard | None  # records proj/<concept>; None without an atlas or concepts
    concepts: list[str]  # the guarded harmful concepts (the monitored ones without guards)
    atlas: FeatureAtlas | None
    extracted: bool  # the atlas was extracted for this run
    config: GuardConfig | None  # what the kinds were built with (concepts filled in)
    pilot: PilotDirections | None = field(default=None, repr=False)  # source="pilot" only

    @property
    def names(self) -> list[str]:
        """The guards' names, in order."""
        return [guard.name for guard in self.guards]

    def with_pilot(
        self, pilot: PilotDirections, config: GuardConfig, layer_template: str | None = None
    ) -> GuardSetup:
        """The same kinds built with ``config`` on the pilot's atlas (its kept shifts); the
        guard objects, the monitor (on the concept atlas) and the concepts are kept."""
        if pilot.atlas is None:
            raise GeomsafeError("pilot: no principal shift was kept; nothing to guard")
        objects = self.guards[len(self.kinds) :]
        built = [
            build_guards([k], pilot.atlas, config, layer_template)[0] if needs_atlas(k) else g
            for k, g in zip(self.kinds, self.guards[: len(self.kinds)], strict=True)
        ]  # kinds without an atlas (kl) are kept as built
        return dataclasses.replace(self, guards=built + objects, config=config, pilot=pilot)


def split_guards(guard: GuardSpec) -> tuple[list[str], list[Guard]]:
    """``"orthogonal,steer"`` / a list of names and/or Guard objects -> (kinds, objects)."""
    if guard is None:
        return [], []
    if isinstance(guard, str):
        items: list[object] = list(split_csv(guard))
    elif isinstance(guard, Guard):
        items = [guard]
    else:
        items = list(guard)
    names: list[str] = []
    objects: list[Guard] = []
    for item in items:
        if isinstance(item, Guard):
            objects.append(item)
        elif isinstance(item, str):
            names.append(item)
        else:
            raise GeomsafeError(
                f"not a guard: {item!r} (a registered guard name or a geomsafe.guard.Guard)"
            )
    return guard_kinds(names), objects


def load_atlas(atlas: FeatureAtlas | str | Path) -> FeatureAtlas:
    return atlas if isinstance(atlas, FeatureAtlas) else FeatureAtlas.load(atlas)


def extract_atlas(
    lm: LoadedModel,
    concepts: Sequence[str],
    targets: Sequence[str] = (),
    *,
    layers: Sequence[int] | None = None,
    max_pairs: int | None = 64,
    seed: int = 0,
    progress: bool = True,
    split: bool | None = None,
) -> FeatureAtlas:
    """Extract an atlas of the harmful ``concepts`` (and ``targets``) from their pairs: the
    direction half of built-in concepts and all pairs of a user's concept file, or the
    direction half of every concept with ``split=True`` (when the other half is evaluated,
    :func:`geomsafe.concepts.load_for_direction`)."""
    sets = [load_for_direction(c, "harmful", split=split).subset(max_pairs, seed) for c in concepts]
    sets += [load_for_direction(t, "target", split=split).subset(max_pairs, seed) for t in targets]
    layer_list = list(layers) if layers is not None else None
    return directions.extract(lm, sets, layers=layer_list, seed=seed, progress=progress).atlas


def concept_names(specs: Sequence[str]) -> list[str]:
    """Names that concept specs get in an atlas (a file's header/stem, a built-in name)."""
    out = []
    for spec in specs:
        if spec.endswith(".jsonl") or ":" in spec:
            out.append(load_concept(spec, "harmful").name)
        else:
            out.append(spec)
    return out


def resolve_guards(
    lm: LoadedModel,
    guard: GuardSpec = None,
    guard_concepts: str | Sequence[str] | None = None,
    atlas: FeatureAtlas | str | Path | None = None,
    guard_config: GuardConfig | None = None,
    *,
    layer_template: str | None = None,
    extract: bool = True,
    seed: int = 0,
    max_pairs: int | None = 64,
    progress: bool = True,
) -> GuardSetup:
    """The guards of a run, built (so bad names, concepts or layers fail here, before training).

    ``guard``: registered kinds (``"orthogonal,steer"`` or a list) and/or Guard objects.
    ``guard_concepts``: the harmful concepts to guard (default: ``guard_config.concepts``, the
    atlas's harmful concepts or, when the atlas is extracted, every built-in one). ``atlas``: a
    FeatureAtlas or its folder; without one, guards by name get one extracted for the run
    (unless ``extract=False``: an error); kinds with ``needs_atlas = False`` (kl) need neither
    an atlas nor concepts. Guards are prepared with ``lm``'s tokenizer and ``seed``
    (:meth:`~geomsafe.guard.Guard.prepare`). With an atlas and concepts the setup has a
    :class:`MonitorGuard`, guards or not.
    """
    kinds, objects = split_guards(guard)
    atlas_kinds = [k for k in kinds if needs_atlas(k)]  # kl needs no atlas or concepts
    config_concepts = guard_config.concepts if guard_config is not None else None
    specs = split_csv(guard_concepts) or split_csv(config_concepts)
    loaded = load_atlas(atlas) if atlas is not None else None
    extracted = False
    if atlas_kinds and loaded is None:
        if not extract:
            raise GeomsafeError("guards by name need an atlas: pass atlas=")
        specs = specs or builtin_names("harmful")
        targets = split_csv(guard_config.targets if guard_config is not None else None)
        if not targets and any(getattr(GUARDS[k], "with_targets", False) for k in kinds):
            targets = builtin_names("target")
        allow = split_csv(guard_config.allow if guard_config is not None else None)
        targets += [a for a in allow if a not in targets]
        layers = guard_config.layers if guard_config is not None else None
        loaded = extract_atlas(
            lm, specs, targets, layers=layers, max_pairs=max_pairs, seed=seed, progress=progress
        )
        extracted = True
    names = concept_names(specs) if specs else (list(loaded.harmful) if loaded else [])
    config: GuardConfig | None = None
    built: list[Guard] = []
    if kinds:
        if atlas_kinds and not names:
            raise GeomsafeError(
                "no guarded concepts: pass --guard-concepts or an atlas with harmful concepts"
            )
        config = dataclasses.replace(guard_config or GuardConfig(), concepts=list(names) or None)
        if config.allow:
            config.allow = concept_names(config.allow)
        built = build_guards(
            kinds, loaded, config, layer_template, tokenizer=lm.tokenizer, seed=seed
        )
    monitor = MonitorGuard(loaded, names, layer_template) if loaded is not None and names else None
    return GuardSetup(kinds, built + objects, monitor, names, loaded, extracted, config)
