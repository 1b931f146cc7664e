"""FeatureAtlas: per-layer unit directions of named features, with stats and provenance.

Saved as ``atlas.safetensors`` (one ``[L, D]`` tensor per feature) + ``atlas.json``
(layers, kinds, stats, provenance). Rows of each tensor follow ``layers``.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from geomsafe.diskfull import writing
from geomsafe.errors import GeomsafeError

ATLAS_WEIGHTS = "atlas.safetensors"
ATLAS_META = "atlas.json"


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
        atomic_write(folder / ATLAS_META, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> FeatureAtlas:
        folder = Path(folder)
        if folder.is_file():
            folder = folder.parent
        weights, meta_path = folder / ATLAS_WEIGHTS, folder / ATLAS_META
        if not weights.is_file() or not meta_path.is_file():
            raise GeomsafeError(f"no atlas in {folder} (expected {ATLAS_WEIGHTS} + {ATLAS_META})")
        try:
            meta = json.loads(meta_path.read_text())
            tensors = load_file(str(weights))
        except Exception as exc:
            raise GeomsafeError(f"atlas in {folder} is unreadable: {exc}") from exc
        names = meta.get("names", list(tensors))
        return cls(
            meta["layers"],
            {n: tensors[n] for n in names},
            meta["kinds"],
            meta.get("stats", {}),
            meta.get("provenance", {}),
        )


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so readers never see half a file;
    a full disk is the one-line error ``no space left on device writing PATH``."""
    with writing(path):
        _atomic_write(path, write)


def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
