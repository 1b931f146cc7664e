"""Atomic text writes for the toy outputs (on top of :func:`geomsafe.atlas.atomic_write`)."""

from __future__ import annotations

from pathlib import Path

from geomsafe.atlas import atomic_write


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    atomic_write(path, write)
