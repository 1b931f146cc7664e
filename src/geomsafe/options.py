"""Option values given as text, parsed the same way by the Python API and the CLI."""

from __future__ import annotations

from collections.abc import Sequence

from geomsafe.errors import GeomsafeError


def split_csv(value: str | Sequence[str] | None) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the stripped, non-empty items of a comma-separated
    string, or of a list of strings (``None`` -> ``[]``)."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if isinstance(item, str) and item.strip()]


def parse_layers(value: str | Sequence[int] | None) -> list[int] | None:
    """Layer indices from ``"0,5,10"``, a band ``"4:8"`` (4, 5, 6, 7: end excluded, as in
    Python) or a list; ``None``, ``""`` or ``"best"`` -> ``None`` (each concept at its best
    layer). Raises GeomsafeError on anything else."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "best")):
        return None
    if not isinstance(value, str):
        return [int(v) for v in value]
    text = value.strip()
    try:
        if ":" in text:
            lo, hi = text.split(":")
            layers = list(range(int(lo), int(hi)))
        else:
            layers = [int(v) for v in split_csv(text)]
    except ValueError:
        raise GeomsafeError(
            f"bad layers {value!r}: use e.g. '3,4,5', a band '3:6' or 'best'"
        ) from None
    if not layers:
        raise GeomsafeError(f"bad layers {value!r}: the band is empty")
    return layers
