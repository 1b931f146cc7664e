"""What every command's config dataclass shares: field help, ``with_options``, ``to_dict``.

A config is a ``@dataclass`` whose fields carry ``metadata={"help": ...}`` (:func:`option`),
checked in ``__post_init__`` (bad values raise :class:`~geomsafe.errors.GeomsafeError` with one
line naming the field), so a config that exists is valid. The CLI takes its defaults and help
from the same fields (:func:`default_of`, :func:`help_of`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from geomsafe.errors import GeomsafeError

C = TypeVar("C")


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its help text (peft style ``metadata={"help": ...}``)."""
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(
            default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs
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


__all__ = ["at_least", "default_of", "help_of", "option", "require", "with_options"]
