"""What every command's config dataclass shares: field help, ``with_options``, ``to_dict``.

A config is a ``@dataclass`` whose fields carry ``metadata={"help": ...}`` (:func:`option`),
checked in ``__post_init__`` (bad values raise :class:`~geomsafe.errors.GeomsafeError` with one
line naming the field), so a config that exists is valid. The CLI takes its defaults and help
from the same fields (:func:`default_of`, :func:`help_of`).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, TypeVar

from geomsafe.errors import GeomsafeError

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its help text (peft style ``metadata={"help": ...}``). A mutable
    default (a list, dict, set or a non-frozen dataclass) is copied for every instance."""
    if default is not dataclasses.MISSING and getattr(type(default), "__hash__", None) is None:
        value = default
        return dataclasses.field(
            default_factory=lambda: copy.deepcopy(value), metadata={"help": help}, **kwargs
        )
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


def help_of(cls: type, name: str) -> str:
    """The help text of field ``name`` of config class ``cls``."""
    return next(f.metadata.get("help", "") for f in dataclasses.fields(cls) if f.name == name)


def default_of(cls: type, name: str) -> Any:
    """The default value of field ``name`` of config class ``cls``."""
    return getattr(cls(), name)


def with_options(config: C, command: str, **options: Any) -> C:
    """A copy of ``config`` with ``options`` replacing fields (validated again by the class's
    ``__post_init__``); an unknown name is a one-line error naming ``command``."""
    names = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - names)
    if unknown:
        raise GeomsafeError(f"unknown {command} option(s): {', '.join(unknown)}")
    return dataclasses.replace(config, **options)  # type: ignore[type-var]


def require(ok: bool, message: str) -> None:
    """Raise ``GeomsafeError(message)`` unless ``ok`` (the one validation style of configs)."""
    if not ok:
        raise GeomsafeError(message)


def at_least(config: Any, low: float, *names: str, allow_none: bool = False) -> None:
    """Every field in ``names`` is ``>= low`` (or None when ``allow_none``)."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise GeomsafeError(f"{name} must be a number, not {value!r}")
        require(value >= low, f"{name} must be >= {low:g}, not {value}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GeomsafeError(f"{name} must be a number, not {value!r}")
    return value


def above(config: Any, low: float, *names: str) -> None:
    """Every field in ``names`` is a number ``> low``."""
    for name in names:
        value = _number(name, getattr(config, name))
        require(value > low, f"{name} must be > {low:g}, not {value}")


def in_range(
    config: Any,
    name: str,
    low: float,
    high: float,
    *,
    open_low: bool = False,
    open_high: bool = False,
) -> None:
    """Field ``name`` is a number in ``[low, high]`` (``(`` / ``)`` where open)."""
    value = _number(name, getattr(config, name))
    ok = (value > low if open_low else value >= low) and (
        value < high if open_high else value <= high
    )
    shown = f"{'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"
    require(ok, f"{name} must be in {shown}, not {value}")


def integers(config: Any, low: int, *names: str, allow_none: bool = False) -> None:
    """Every field in ``names`` is an integer ``>= low`` (or None when ``allow_none``)."""
    for name in names:
        value = getattr(config, name)
        if value is None and allow_none:
            continue
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        require(ok, f"{name} must be an integer >= {low}, not {value!r}")


def one_of(config: Any, name: str, choices: Any, what: str | None = None) -> None:
    """Field ``name`` is one of ``choices`` (one line naming them otherwise)."""
    value = getattr(config, name)
    require(
        value in choices,
        f"{what or name} must be one of {', '.join(choices)}, not {value!r}",
    )


__all__ = [
    "above",
    "at_least",
    "default_of",
    "help_of",
    "in_range",
    "integers",
    "one_of",
    "option",
    "require",
    "with_options",
]
