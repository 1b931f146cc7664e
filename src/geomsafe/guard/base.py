"""The guard protocol, its configuration, the registry of guard kinds and small helpers.

A guard is a small object with these methods, which any training loop can call:

- ``install(model)``: a context manager whose hooks are active during the *training* forward
  pass (steering adds, the others record);
- ``penalty(model, inputs)``: called right after that forward, before backward; a scalar added
  to the loss (already weighted) or ``None``;
- ``after_step(model)``: called after each optimiser step (the orthogonal guard projects the
  LoRA weights here);
- ``log()``: the last values for the geometry log (``penalty``, ``proj/<concept>``, ...);
- ``begin_step(step, total)``: called before the first forward of each optimiser step; atlas
  guards set their strength there from their schedule (:mod:`geomsafe.guard.schedule`);
  ``set_strength(s)`` sets it directly.

A new kind joins :data:`GUARDS` with ``@register``; ``build_guards``, ``finetune`` and the CLI's
``--guard`` then accept its name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from geomsafe.config import option
from geomsafe.errors import GeomsafeError
from geomsafe.guard.pilot import PilotConfig
from geomsafe.guard.schedule import SCHEDULES, scheduled_strength
from geomsafe.layers import RESIDUAL_WRITERS
from geomsafe.options import split_csv

if TYPE_CHECKING:
    from geomsafe.atlas import FeatureAtlas

STEER_SCALES = ("norm", "diff", "unit")
PROJECTION_MODES = ("both", "increase")
ORTHOGONAL_SCOPES = ("layer", "upto")
GUARD_SOURCES = ("atlas", "pilot")


@dataclass
class GuardConfig:
    """What a guard protects and how hard.

    Layers are model layer indices with the atlas's hook site: the output of decoder layer
    ``l`` (the residual stream after block ``l``).
    """

    concepts: list[str] | None = option(
        None, "Guarded harmful features (default: every harmful one of the atlas)."
    )
    layers: list[int] | None = option(
        None,
        "Guarded layers: 'best'/None (each concept at its best atlas layer), a list '3,4,5' "
        "or a band '3:6' (end excluded): every concept at every listed layer.",
    )
    weight: float = option(1.0, "Penalty weight of the projection/covariance/kl guards.")
    targets: list[str] | None = option(
        None, "Covariance guard: target features (default: all atlas targets)."
    )
    steer_coeff: float = option(
        0.1, "Steer guard: how far along each harmful direction, in --steer-scale units."
    )
    steer_scale: str = option(
        "norm",
        "Steer guard unit: median residual norm, the concept's mean-difference norm, or 1.",
    )
    projection_mode: str = option(
        "both",
        "Projection guard: both (penalise any change of the projection) or increase (only "
        "moves towards the harmful side).",
    )
    orthogonal_scope: str = option(
        "layer",
        "Orthogonal guard: layer (project the writers of block l off layer l's directions) or "
        "upto (the writers of every block j <= l too).",
    )
    writers: list[str] = option(
        list(RESIDUAL_WRITERS),
        "Orthogonal guard: module paths in a block that write to the residual stream.",
    )
    allow: list[str] | None = option(
        None,
        "Allowed target concepts, comma-separated (e.g. empathy): the guards act only on the "
        "part of each harmful direction orthogonal to them.",
    )
    schedule: str = option(
        "constant",
        "Guard strength per step: constant; front (full for --schedule-steps, then "
        "--schedule-floor); linear_decay (full -> --schedule-floor over --schedule-steps).",
    )
    schedule_steps: int | None = option(
        None,
        "Length of the strong/decaying phase in optimiser steps (default: a quarter of the "
        "run for front, the whole run for linear_decay).",
    )
    schedule_floor: float = option(0.0, "Guard strength after the strong phase, in [0, 1].")
    source: str = option(
        "atlas",
        "Guarded directions: the atlas's concepts, or the principal shifts of a short pilot "
        "fine-tune that align with them above a permutation null band.",
    )
    pilot: PilotConfig = option(
        PilotConfig(), "The pilot run (source pilot; see geomsafe.guard.pilot)."
    )
    kl_data: str = option(
        "builtin",
        "kl guard's reference batch: builtin (task:factual_qa), training (the training batch) "
        "or a JSONL file / task:NAME (geomsafe.guard.kl).",
    )

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> GuardConfig:
        checks = [
            (self.weight >= 0, f"guard weight must be >= 0, not {self.weight}"),
            (
                self.steer_scale in STEER_SCALES,
                f"steer_scale must be one of {', '.join(STEER_SCALES)}, not {self.steer_scale!r}",
            ),
            (
                self.projection_mode in PROJECTION_MODES,
                f"projection_mode must be one of {', '.join(PROJECTION_MODES)}, "
                f"not {self.projection_mode!r}",
            ),
            (
                self.orthogonal_scope in ORTHOGONAL_SCOPES,
                f"orthogonal_scope must be one of {', '.join(ORTHOGONAL_SCOPES)}, "
                f"not {self.orthogonal_scope!r}",
            ),
            (self.concepts is None or len(self.concepts) > 0, "guard concepts list is empty"),
            (self.layers is None or len(self.layers) > 0, "guard layers list is empty"),
            (
                self.schedule in SCHEDULES,
                f"guard schedule must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}",
            ),
            (
                self.schedule_steps is None or self.schedule_steps >= 1,
                f"schedule_steps must be >= 1, not {self.schedule_steps}",
            ),
            (
                0.0 <= self.schedule_floor <= 1.0,
                f"schedule_floor must be in [0, 1], not {self.schedule_floor}",
            ),
            (
                self.source in GUARD_SOURCES,
                f"guard source must be one of {', '.join(GUARD_SOURCES)}, not {self.source!r}",
            ),
            (bool(str(self.kl_data).strip()), "kl_data is empty: builtin, training or a file"),
        ]
        for ok, message in checks:
            if not ok:
                raise GeomsafeError(message)
        self.pilot.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Guard:
    """Base class of every guard; the defaults do nothing."""

    name: str = "guard"
    strength: float = 1.0  # share of the guard's knob applied this step (schedule.py)

    def install(self, model: nn.Module) -> contextlib.AbstractContextManager[None]:
        """Hooks active during training forward passes. Default: none."""
        return contextlib.nullcontext()

    @classmethod
    def install_together(
        cls, guards: Sequence[Guard], model: nn.Module
    ) -> contextlib.AbstractContextManager[None]:
        """Install several guards of this family at once (:func:`combined` calls it). Default:
        each guard's :meth:`install` in turn; atlas guards share one hook per layer instead."""
        return _each_installed(guards, model)

    def penalty(self, model: nn.Module, inputs: dict[str, Tensor]) -> Tensor | None:
        """A weighted scalar added to the loss before backward, or None."""
        return None

    def prepare(self, tokenizer: Any, seed: int = 0) -> None:
        """Called once before training with the run's tokenizer and seed (the kl guard
        tokenises its reference data here). Default: nothing."""

    def after_step(self, model: nn.Module) -> None:
        """Called after each optimiser step."""

    def log(self) -> dict[str, float]:
        """The last values for the geometry log."""
        return {}

    def set_strength(self, value: float) -> None:
        """Scale the guard's knob by ``value`` in [0, 1] from now on (see
        :mod:`geomsafe.guard.schedule` for what it scales in each guard)."""
        if not 0.0 <= float(value) <= 1.0:
            raise GeomsafeError(f"{self.name} guard: strength must be in [0, 1], not {value}")
        self.strength = float(value)

    def begin_step(self, step: int, total: int) -> None:
        """Called before the first forward of optimiser step ``step`` (0-based) of ``total``.
        Default: a guard built on a :class:`GuardConfig` (``self.config``) sets its strength
        from the config's schedule; others do nothing."""
        cfg = getattr(self, "config", None)
        if isinstance(cfg, GuardConfig):
            self.set_strength(scheduled_strength(cfg, step, total))


GUARDS: dict[str, type[Guard]] = {}
_ORDER = ("orthogonal", "steer", "ablate", "projection", "covariance", "kl")  # cheapest first


def register(cls: type[Guard]) -> type[Guard]:
    """Class decorator: add a guard kind to :data:`GUARDS` under ``cls.name``. The class is
    built as ``cls(atlas, config, layer_template)`` (see :class:`~geomsafe.guard.AtlasGuard`);
    a class attribute ``needs_atlas = False`` lets it be built without an atlas or concepts
    (``atlas`` is then None; the kl guard)."""
    GUARDS[cls.name] = cls
    ordered = sorted(GUARDS.items(), key=lambda kv: _ORDER.index(kv[0]) if kv[0] in _ORDER else 99)
    GUARDS.clear()
    GUARDS.update(ordered)
    return cls


def guard_kinds(names: Sequence[str] | str | None) -> list[str]:
    """Registered guard kinds from ``names`` (a list or ``"orthogonal,steer"``): lower-cased,
    in order, each once. Raises GeomsafeError on a name that is not in :data:`GUARDS`."""
    kinds: list[str] = []
    for item in split_csv(names):
        kind = item.lower()
        if kind not in GUARDS:
            raise GeomsafeError(f"unknown guard {item!r}; use one of {', '.join(GUARDS)}")
        if kind not in kinds:
            kinds.append(kind)
    return kinds


def needs_atlas(kind: str) -> bool:
    """Whether the registered guard kind ``kind`` is built on an atlas (default: yes)."""
    return bool(getattr(GUARDS[kind], "needs_atlas", True))


def build_guards(
    names: Sequence[str] | str,
    atlas: FeatureAtlas | None,
    config: GuardConfig | None = None,
    layer_template: str | None = None,
    *,
    tokenizer: Any = None,
    seed: int = 0,
) -> list[Guard]:
    """One guard per kind in ``names`` (a list or ``"orthogonal,steer"``), in that order.
    ``atlas`` may be None when no kind needs one; with ``tokenizer``, each guard's
    :meth:`~Guard.prepare` is called with it and ``seed``."""
    kinds = guard_kinds(names)
    config = (config or GuardConfig()).validate()
    missing = [k for k in kinds if atlas is None and needs_atlas(k)]
    if missing:
        raise GeomsafeError(f"guard {', '.join(missing)} needs an atlas")
    guards = [GUARDS[k](atlas, config, layer_template) for k in kinds]  # type: ignore[call-arg]
    if tokenizer is not None:
        for guard in guards:
            guard.prepare(tokenizer, seed)
    return guards


@contextlib.contextmanager
def _each_installed(guards: Sequence[Guard], model: nn.Module) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for guard in guards:
            stack.enter_context(guard.install(model))
        yield


def _family(guard: Guard) -> type[Guard]:
    """The class whose :meth:`Guard.install_together` installs ``guard``."""
    return next(c for c in type(guard).__mro__ if "install_together" in vars(c))


@contextlib.contextmanager
def combined(guards: Sequence[Guard], model: nn.Module) -> Iterator[None]:
    """Install every guard's hooks on ``model`` for the duration of the block. Guards of one
    family go in together (all atlas guards share one forward hook per guarded layer)."""
    families: dict[type[Guard], list[Guard]] = {}
    for guard in guards:
        families.setdefault(_family(guard), []).append(guard)
    with contextlib.ExitStack() as stack:
        for family, members in families.items():
            stack.enter_context(family.install_together(members, model))
        yield


def begin_steps(guards: Sequence[Guard], step: int, total: int) -> None:
    """Every guard's :meth:`Guard.begin_step` (call it before each optimiser step's first
    forward: scheduled strengths are set here)."""
    for guard in guards:
        guard.begin_step(step, total)


def total_penalty(
    guards: Sequence[Guard], model: nn.Module, inputs: dict[str, Tensor]
) -> Tensor | None:
    """The sum of the guards' penalties for the batch just forwarded (None when none has one).
    Call it for every batch: the guards also compute their projection logs here."""
    total: Tensor | None = None
    for guard in guards:
        p = guard.penalty(model, inputs)
        if p is not None:
            total = p if total is None else total + p
    return total


def step_logs(guards: Sequence[Guard], bare: bool = False) -> dict[str, float]:
    """Every guard's ``log()`` namespaced as ``<guard>/<key>``. With ``bare``, each key also
    un-namespaced, from the first guard that logs it (the geometry log's ``removed``,
    ``proj/<concept>@<layer>``, ...)."""
    out: dict[str, float] = {}
    for guard in guards:
        for key, value in guard.log().items():
            out[f"{guard.name}/{key}"] = float(value)
            if bare:
                out.setdefault(key, float(value))
    return out
