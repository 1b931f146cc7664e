"""An optional peft adapter for the firewall commands: attached for the ``with`` block (see
:func:`geomsafe.adapters.attach_adapter`) and described in provenance."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geomsafe.adapters import adapter_sha256, attach_adapter
from geomsafe.errors import GeomsafeError
from geomsafe.models import LoadedModel


def check_adapter(adapter: str | Path | None) -> None:
    if adapter is not None and not Path(adapter).is_dir():
        raise GeomsafeError(f"adapter folder not found: {adapter}")


@contextlib.contextmanager
def maybe_adapter(lm: LoadedModel, adapter: str | Path | None) -> Iterator[None]:
    """``lm`` runs with ``adapter`` inside the block (nothing happens when it is None)."""
    if adapter is None:
        yield
        return
    with attach_adapter(lm, adapter):
        yield


def adapter_provenance(adapter: str | Path | None) -> dict[str, Any]:
    return {
        "adapter": str(Path(adapter).resolve()) if adapter is not None else None,
        "adapter_sha256": adapter_sha256(adapter) if adapter is not None else None,
    }
