"""Strength schedules: how hard a guard acts at each optimiser step.

A guard's strength ``s`` (in ``[0, 1]``) scales its own knob: the penalty weight
(``projection``, ``covariance``: the penalty is ``s * weight * ...``), the steering
coefficient (``steer`` adds ``s * coeff * scale * u``), the ablated share (``ablate``:
``h - s (h·U)Uᵀ``) and the share of the harmful component removed from the LoRA update
(``orthogonal``: ``B - s U(UᵀB)``). The trainer sets it before the first forward of each
optimiser step (:meth:`~geomsafe.guard.Guard.begin_step`) from the guard's
:class:`~geomsafe.guard.GuardConfig`:

- ``constant``: ``s = 1`` at every step;
- ``front`` (strong early, relaxed late, since harmful drift is fastest early): ``s = 1`` for
  the first ``S`` steps, then ``floor``;
- ``linear_decay``: ``s = 1 - (1 - floor) * min(step / S, 1)``, from 1 at the first step down
  to ``floor`` at step ``S`` and after.

``step`` counts the optimiser steps completed before this one (0 for the first); ``S`` is
``schedule_steps``, by default a quarter of the run (rounded up) for ``front`` and the whole
run (``total`` optimiser steps) for ``linear_decay``.
"""

from __future__ import annotations

import math
from typing import Any

from geomsafe.errors import GeomsafeError

SCHEDULES = ("constant", "front", "linear_decay")


def schedule_length(kind: str, total: int, steps: int | None = None) -> int:
    """``S``: ``steps`` when given, else the default of ``kind`` for a run of ``total`` steps."""
    if steps is not None:
        return int(steps)
    if total <= 0:
        raise GeomsafeError(
            f"the {kind!r} guard schedule needs the run's number of optimiser steps or "
            "schedule_steps"
        )
    return max(1, math.ceil(total / 4)) if kind == "front" else int(total)


def strength(
    kind: str, step: int, total: int, steps: int | None = None, floor: float = 0.0
) -> float:
    """The guard strength at optimiser ``step`` (0-based) of a run of ``total`` steps."""
    if kind not in SCHEDULES:
        raise GeomsafeError(f"guard schedule must be one of {', '.join(SCHEDULES)}, not {kind!r}")
    if kind == "constant":
        return 1.0
    length = schedule_length(kind, total, steps)
    if kind == "front":
        return 1.0 if step < length else float(floor)
    return 1.0 - (1.0 - float(floor)) * min(step / length, 1.0)


def scheduled_strength(config: Any, step: int, total: int) -> float:
    """:func:`strength` at ``step`` of ``total`` under a guard config's ``schedule``,
    ``schedule_steps`` and ``schedule_floor``."""
    return strength(
        config.schedule, step, total, config.schedule_steps, config.schedule_floor
    )
