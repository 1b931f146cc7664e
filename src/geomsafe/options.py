"""Option values given as text, parsed the same way by the Python API and the CLI."""

from __future__ import annotations

from collections.abc import Sequence


def split_csv(value: str | Sequence[str] | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the stripped, non-empty items of a comma-separated
    string, or of a list of strings (``None`` -> ``[]``)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if isinstance(item, str) and item.strip()]
