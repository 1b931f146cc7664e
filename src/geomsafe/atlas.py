"""FeatureAtlas: per-layer unit directions of named features, with stats and provenance.

Saved as ``atlas.safetensors`` (one ``[L, D]`` tensor per feature) + ``atlas.json``
(``geomsafe.atlas/1``: layers, kinds, stats, provenance). Rows of each tensor follow ``layers``.
A command's output folder keeps its atlas in ``<out>/atlas/`` (:data:`ATLAS_DIR`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from geomsafe.artefacts import (
    ATLAS_DIR,
    ATLAS_META,
    ATLAS_WEIGHTS,
    atomic_write,
    read_json,
    write_json,
)
from geomsafe.errors import GeomsafeError


@dataclass
class FeatureAtlas:
    """``directions[name]`` is ``[len(layers), D]``, unit rows; ``kinds[name]`` is harmful,
    target, control or sae; ``stats[name]`` holds per-layer separation statistics."""

    layers: list[int]
    directions: dict[str, Tensor]
    kinds: dict[str, str]
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def names(self, kind: str | None = None) -> list[str]:
        return [n for n in self.directions if kind is None or self.kinds[n] == kind]

    @property
    def harmful(self) -> list[str]:
        return self.names("harmful")

    @property
    def targets(self) -> list[str]:
        return self.names("target")

    def row(self, layer: int) -> int:
        if layer not in self.layers:
            raise GeomsafeError(f"layer {layer} is not in the atlas (layers {self.layers})")
        return self.layers.index(layer)

    def direction(self, name: str, layer: int) -> Tensor:
        if name not in self.directions:
            raise GeomsafeError(f"feature {name!r} not in atlas; have {', '.join(self.directions)}")
        return self.directions[name][self.row(layer)]

    def best_layer(self, name: str) -> int:
        best = self.stats.get(name, {}).get("best_layer")
        return int(best) if best is not None else self.layers[len(self.layers) // 2]

    def matrix(self, layer: int, names: list[str] | None = None) -> Tensor:
        """``[F, D]`` directions of ``names`` (all) at ``layer``."""
        names = names or list(self.directions)
        return torch.stack([self.direction(n, layer) for n in names])

    def sha256(self, names: Sequence[str] | None = None) -> str:
        """Hex sha256 over each name of ``names`` (default: every feature, in order) and its
        float32 ``[L, D]`` directions: what identifies the directions a result was computed
        from."""
        h = hashlib.sha256()
        for n in self.names() if names is None else names:
            h.update(n.encode())
            h.update(self.directions[n].float().contiguous().cpu().numpy().tobytes())
        return h.hexdigest()

    def to(self, *args, **kwargs) -> FeatureAtlas:
        return FeatureAtlas(
            list(self.layers),
            {k: v.to(*args, **kwargs) for k, v in self.directions.items()},
            dict(self.kinds),
            self.stats,
            self.provenance,
        )

    def select(self, names: list[str]) -> FeatureAtlas:
        missing = [n for n in names if n not in self.directions]
        if missing:
            raise GeomsafeError(f"not in atlas: {', '.join(missing)}")
        return FeatureAtlas(
            list(self.layers),
            {n: self.directions[n] for n in names},
            {n: self.kinds[n] for n in names},
            {n: self.stats.get(n, {}) for n in names},
            self.provenance,
        )

    def save(self, folder: str | Path) -> Path:
        """Write ``atlas.safetensors`` + ``atlas.json`` atomically into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().float().contiguous().cpu() for k, v in self.directions.items()}
        meta = {
            "layers": self.layers,
            "kinds": self.kinds,
            "stats": self.stats,
            "provenance": self.provenance,
            "names": list(self.directions),
        }
        atomic_write(folder / ATLAS_WEIGHTS, lambda p: save_file(tensors, str(p)))
        write_json(folder / ATLAS_META, meta, "atlas")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FeatureAtlas:
        """Read an atlas from its folder, one of its files, or an output folder holding it in
        ``atlas/`` (older output folders with the atlas at the top level load too)."""
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        if not (folder / ATLAS_META).is_file() and (folder / ATLAS_DIR / ATLAS_META).is_file():
            folder = folder / ATLAS_DIR
        weights, meta_path = folder / ATLAS_WEIGHTS, folder / ATLAS_META
        if not weights.is_file() or not meta_path.is_file():
            raise GeomsafeError(f"no atlas in {folder} (expected {ATLAS_WEIGHTS} + {ATLAS_META})")
        meta = read_json(meta_path, "atlas")
        try:
            tensors = load_file(str(weights))
            names = meta.get("names", list(tensors))
            return cls(
                list(meta["layers"]),
                {n: tensors[n] for n in names},
                dict(meta["kinds"]),
                meta.get("stats", {}),
                meta.get("provenance", {}),
            )
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise GeomsafeError(f"atlas in {folder} is unreadable: {first}") from None
