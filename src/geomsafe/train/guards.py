"""Resolve the guards of a run: guard names or objects, their concepts and their atlas.

When guards are asked for by name without an atlas, one is extracted on the fly from the
guarded concepts (built-in names or concept ``.jsonl`` files) and, for the covariance guard,
the target concepts, with :func:`geomsafe.directions.extract`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomsafe.atlas import FeatureAtlas
from geomsafe.concepts import builtin_names, load_concept
from geomsafe.errors import GeomsafeError
from geomsafe.models import LoadedModel

GUARD_KINDS = ("orthogonal", "steer", "projection", "covariance")
NEEDS_TARGETS = ("covariance",)


def split_csv(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [v.strip() for v in items if isinstance(v, str) and v.strip()]


def parse_guards(guard: Any) -> tuple[list[str], list[Any]]:
    """``"orthogonal,steer"`` / a list of names and/or Guard objects -> (names, objects)."""
    if guard is None:
        return [], []
    items = guard.split(",") if isinstance(guard, str) else list(guard)
    names: list[str] = []
    objects: list[Any] = []
    for item in items:
        if isinstance(item, str):
            name = item.strip().lower()
            if not name:
                continue
            if name not in GUARD_KINDS:
                raise GeomsafeError(f"unknown guard {item!r}; use one of {', '.join(GUARD_KINDS)}")
            if name not in names:
                names.append(name)
        elif all(hasattr(item, m) for m in ("install", "penalty", "after_step", "log")):
            objects.append(item)
        else:
            raise GeomsafeError(
                f"not a guard: {item!r} (a name or an object with install/penalty/after_step/log)"
            )
    return names, objects


def default_guard_config(concepts: Sequence[str]) -> Any:
    from geomsafe.guard import GuardConfig

    return GuardConfig(concepts=list(concepts))


def with_concepts(config: Any, concepts: Sequence[str]) -> Any:
    """``config`` with its ``concepts`` set (a copy; configs are dataclasses)."""
    if dataclasses.is_dataclass(config) and any(
        f.name == "concepts" for f in dataclasses.fields(config)
    ):
        return dataclasses.replace(config, concepts=list(concepts))
    return config


def config_dict(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config):
        return {k: v for k, v in dataclasses.asdict(config).items() if _jsonable(v)}
    return {}


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool, type(None), list, tuple, dict))


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
) -> FeatureAtlas:
    """Extract an atlas of the harmful ``concepts`` (and ``targets``) from their pairs."""
    from geomsafe.directions import extract

    sets = [load_concept(c, "harmful").subset(max_pairs, seed) for c in concepts]
    sets += [load_concept(t, "target").subset(max_pairs, seed) for t in targets]
    return extract(lm, sets, layers=layers, seed=seed, progress=progress).atlas


def concept_names(specs: Sequence[str]) -> list[str]:
    """Names that concept specs get in an atlas (a file's header/stem, a built-in name)."""
    out = []
    for spec in specs:
        if spec.endswith(".jsonl") or ":" in spec:
            out.append(load_concept(spec, "harmful").name)
        else:
            out.append(spec)
    return out


def check_atlas(atlas: FeatureAtlas, concepts: Sequence[str], kinds: Sequence[str]) -> None:
    missing = [c for c in concepts if c not in atlas.directions]
    if missing:
        have = ", ".join(atlas.directions) or "none"
        raise GeomsafeError(f"atlas has no direction for {', '.join(missing)} (it has: {have})")
    if any(k in NEEDS_TARGETS for k in kinds) and not atlas.targets:
        raise GeomsafeError(
            "the covariance guard needs target concepts in the atlas; extract "
            "them too (GuardConfig.targets) or pass an atlas that has them"
        )


def resolve(
    lm: LoadedModel,
    guard: Any,
    guard_concepts: str | Sequence[str] | None,
    atlas: FeatureAtlas | str | Path | None,
    guard_config: Any = None,
    *,
    seed: int = 0,
    max_pairs: int | None = 64,
    progress: bool = True,
) -> tuple[list[str], list[Any], list[str], FeatureAtlas | None, bool, Any]:
    """-> (guard kinds, guard objects, guarded concept names, atlas, extracted?, guard config)."""
    kinds, objects = parse_guards(guard)
    specs = split_csv(guard_concepts) or split_csv(getattr(guard_config, "concepts", None))
    loaded = load_atlas(atlas) if atlas is not None else None
    if not kinds:
        names = concept_names(specs) if specs else (list(loaded.harmful) if loaded else [])
        if loaded is not None:
            check_atlas(loaded, names, [])
        return [], objects, names, loaded, False, guard_config
    extracted = False
    if loaded is None:
        specs = specs or builtin_names("harmful")
        targets = split_csv(getattr(guard_config, "targets", None))
        if any(k in NEEDS_TARGETS for k in kinds) and not targets:
            targets = builtin_names("target")
        layers = getattr(guard_config, "layers", None)
        loaded = extract_atlas(
            lm, specs, targets, layers=layers, max_pairs=max_pairs, seed=seed, progress=progress
        )
        extracted = True
        names = concept_names(specs)
    else:
        names = concept_names(specs) if specs else list(loaded.harmful)
    if not names:
        raise GeomsafeError(
            "no guarded concepts: pass --guard-concepts or an atlas with harmful concepts"
        )
    check_atlas(loaded, names, kinds)
    config = guard_config if guard_config is not None else default_guard_config(names)
    config = with_concepts(config, names)
    return kinds, objects, names, loaded, extracted, config


def build(kinds: Sequence[str], atlas: FeatureAtlas, config: Any, layer_template: str) -> list[Any]:
    """Guard objects for ``kinds`` (via :func:`geomsafe.guard.build_guards`)."""
    if not kinds:
        return []
    from geomsafe.guard import build_guards

    return list(build_guards(list(kinds), atlas, config, layer_template=layer_template))
