"""The hashes geomsafe records in provenance: a file's bytes and a sequence of rows.

Standard library only. A hash recorded in an artefact must not change between versions, so
each kind of hash is computed here, once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with Path(path).open("rb") as fh:
        if hasattr(hashlib, "file_digest"):  # Python 3.11+: no copy per chunk, about 2x faster
            return hashlib.file_digest(fh, "sha256").hexdigest()
        digest = hashlib.sha256()
        while chunk := fh.read(1 << 24):
            digest.update(chunk)
        return digest.hexdigest()


def rows_sha256(rows: Iterable[Sequence[Any]]) -> str:
    """Hex sha256 of rows of JSON values (e.g. a pair set's texts), each row hashed as its
    JSON list (``json.dumps(list(row))``), in order."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(list(row)).encode())
    return h.hexdigest()


__all__ = ["file_sha256", "rows_sha256"]
