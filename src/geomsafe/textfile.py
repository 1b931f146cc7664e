"""The one rule for reading a user's text file (JSONL, YAML, CSV, plain lines).

A text file must be UTF-8; a UTF-8 byte-order mark at its start is dropped. Anything else (a
Latin-1 or UTF-16 file, an image renamed ``.jsonl``) is a one-line :class:`GeomsafeError`
``FILE:LINE: not UTF-8 text (REASON at byte N of the line)``, where ``LINE`` is the 1-based
line holding the first undecodable byte and ``N`` that byte's 1-based position in its line.
Every reader of user files (training data, concept pairs, evaluation prompts, pair sets,
firewall prompts and traffic) goes through :func:`read_text` or :func:`decode_text`, and every
JSONL reader through :func:`json_lines`: lines are split at ``\n`` only (a JSON string may hold
U+2028 and other characters that ``str.splitlines`` would split at), blank lines are skipped,
and a line that is not JSON is ``FILE:LINE: not valid JSON (REASON, column N)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from geomsafe.errors import GeomsafeError


def decode_text(data: bytes, where: str) -> str:
    """``data`` decoded by the module's rule; errors start with ``where:LINE:``."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0  # utf-8-sig offsets skip the BOM
        start = exc.start + bom
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise GeomsafeError(
            f"{where}:{line}: not UTF-8 text ({exc.reason} at byte {column} of the line)"
        ) from exc


def read_text(path: str | Path) -> str:
    """The text of the file ``path`` by the module's rule (errors name the file and line)."""
    path = Path(path)
    return decode_text(path.read_bytes(), str(path))


def json_lines(text: str, where: str) -> Iterator[tuple[int, str, Any]]:
    """``(line number, line, parsed value)`` of each non-blank line of a JSONL text (module
    docstring); errors start with ``where:LINE:``."""
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GeomsafeError(
                f"{where}:{lineno}: not valid JSON ({exc.msg}, column {exc.colno})"
            ) from exc
        yield lineno, line, obj
