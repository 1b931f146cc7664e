"""The grid of the guard Pareto benchmark: which cells, what each strength means, and the
folder of finished cells (one JSON per cell, so an interrupted run resumes where it stopped).

A **cell** is (data set, guard, strength); the unguarded run of a data set is the cell
``(dataset, "none", "-")``. Strength levels ``low``, ``mid``, ``high`` set these
:class:`~geomsafe.guard.GuardConfig` fields (everything else stays at the run's base config):

==============  ===========================  =================  ==========================
guard           low                          mid                high
==============  ===========================  =================  ==========================
orthogonal      schedule ``front``           (defaults)         ``orthogonal_scope=upto``
steer           ``steer_coeff=0.05``         ``0.1``            ``0.2``
ablate          schedule ``front``           (defaults)         every atlas layer (a band)
projection      ``weight=0.1``               ``1``              ``10``
covariance      ``weight=0.1``               ``1``              ``10``
kl (peer)       ``weight=0.1``               ``1``              ``10``
==============  ===========================  =================  ==========================

``front``: full strength for the first quarter of the steps, then off (the drift is fastest
early); defaults: each concept at its best atlas layer, constant schedule.

Extra levels, run only when named in ``strengths`` and only for the guards that have them:
``projection@one-sided`` = ``weight=1``, ``projection_mode="increase"`` (only moves towards the
harmful side are penalised, as in BLOCK-EM's one-sided penalty); ``projection@one-sided-high``
the same at ``weight=10``; ``projection@one-sided-band`` the same at ``weight=1`` on every atlas
layer (a band) instead of each concept's best layer. ``ablate@pilot`` = ``source="pilot"``:
the data-driven directions (the principal shifts of a short pilot fine-tune on the cell's own
training part that align with a guarded concept above their null band,
:mod:`geomsafe.guard.pilot`), each ablated at its own layer (:mod:`.run` runs the pilot).

A cell's file records a **fingerprint** (sha256 of the settings that decide its numbers: the
model, the training recipe, the data, the rows, the atlas); :meth:`CellStore.load` returns a
finished cell only when its fingerprint matches and refuses (a one-line error) when it does
not, so a folder never mixes two recipes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomsafe.artefacts import atomic_write_text
from geomsafe.errors import GeomsafeError
from geomsafe.guard import GUARDS, GuardConfig

NONE = "none"
LEVELS = ("low", "mid", "high")
BAND = "band"  # a layers value: every layer of the atlas
STRENGTHS: dict[str, dict[str, dict[str, Any]]] = {
    "orthogonal": {"low": {"schedule": "front"}, "mid": {}, "high": {"orthogonal_scope": "upto"}},
    "steer": {
        "low": {"steer_coeff": 0.05},
        "mid": {"steer_coeff": 0.1},
        "high": {"steer_coeff": 0.2},
    },
    "ablate": {
        "low": {"schedule": "front"},
        "mid": {},
        "high": {"layers": BAND},
        "pilot": {"source": "pilot"},
    },
    "projection": {
        "low": {"weight": 0.1},
        "mid": {"weight": 1.0},
        "high": {"weight": 10.0},
        "one-sided": {"weight": 1.0, "projection_mode": "increase"},
        "one-sided-high": {"weight": 10.0, "projection_mode": "increase"},
        "one-sided-band": {"weight": 1.0, "projection_mode": "increase", "layers": BAND},
    },
    "covariance": {"low": {"weight": 0.1}, "mid": {"weight": 1.0}, "high": {"weight": 10.0}},
    # a peer, not a geometric guard: KL to the base model on the built-in benign reference set
    "kl": {"low": {"weight": 0.1}, "mid": {"weight": 1.0}, "high": {"weight": 10.0}},
}
GUARD_NAMES = tuple(STRENGTHS)


@dataclass(frozen=True)
class Cell:
    """One (data set, guard, strength) of the grid."""

    dataset: str
    guard: str
    strength: str = "-"

    @property
    def guarded(self) -> bool:
        return self.guard != NONE

    @property
    def key(self) -> str:
        return f"{self.dataset}|{self.guard}@{self.strength}"

    @property
    def filename(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.dataset).strip("-")
        return f"{safe}--{self.guard}--{self.strength}.json"


def cells(datasets: Sequence[str], guards: Sequence[str], strengths: Sequence[str]) -> list[Cell]:
    """Per data set: the unguarded cell, then every guard at every strength it has (in that
    order; the three ``LEVELS`` every guard has, an extra level only its guards)."""
    for g in guards:
        if g not in STRENGTHS:
            raise GeomsafeError(f"unknown guard {g!r} for the grid; use {', '.join(STRENGTHS)}")
    known = dict.fromkeys(level for g in guards for level in STRENGTHS[g])
    for s in strengths:
        if s not in known:
            raise GeomsafeError(f"unknown strength {s!r} for these guards; use {', '.join(known)}")
    if not datasets:
        raise GeomsafeError("the grid needs at least one data set")
    out = []
    for d in datasets:
        out.append(Cell(d, NONE))
        out += [Cell(d, g, s) for g in guards for s in strengths if s in STRENGTHS[g]]
    return out


def guard_config(
    guard: str, strength: str, base: GuardConfig, atlas_layers: Sequence[int]
) -> GuardConfig:
    """``base`` with the fields that ``strength`` sets for ``guard`` (module docstring)."""
    if guard not in GUARDS or guard not in STRENGTHS:
        raise GeomsafeError(f"unknown guard {guard!r} for the grid; use {', '.join(STRENGTHS)}")
    fields = dict(STRENGTHS[guard][strength])
    if fields.get("layers") == BAND:
        fields["layers"] = list(atlas_layers)
    return dataclasses.replace(base, **fields).validate()


def fingerprint(settings: dict[str, Any]) -> str:
    """sha256 of ``settings`` as canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class CellStore:
    """Finished cells under ``folder/cells/`` (one JSON each, written atomically), each with
    the fingerprint of the settings it was run with."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder) / "cells"

    def path(self, cell: Cell) -> Path:
        return self.folder / cell.filename

    def load(self, cell: Cell, fingerprint: str) -> dict[str, Any] | None:
        """The finished cell, or None when it is not there yet; a cell run with other
        settings (another ``fingerprint``) is an error."""
        path = self.path(cell)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise GeomsafeError(f"{path}: not a readable cell file ({exc}); delete it") from exc
        if data.get("fingerprint") != fingerprint:
            raise GeomsafeError(
                f"{path} was run with other settings (fingerprint differs); use another --out "
                "or delete the folder's cells"
            )
        return data

    def save(self, cell: Cell, fingerprint: str, payload: dict[str, Any]) -> Path:
        path = self.path(cell)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = {
            "cell": dataclasses.asdict(cell),
            "fingerprint": fingerprint,
            **payload,
        }
        atomic_write_text(path, json.dumps(body, indent=1))
        return path


__all__ = [
    "BAND",
    "GUARD_NAMES",
    "LEVELS",
    "NONE",
    "STRENGTHS",
    "Cell",
    "CellStore",
    "cells",
    "fingerprint",
    "guard_config",
]
