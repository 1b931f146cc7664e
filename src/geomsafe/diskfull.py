"""A full disk (or a full quota) while writing outputs, as one line instead of a traceback.

The writers (:func:`geomsafe.artefacts.atomic_write`, the fine-tuning run) wrap their writes in
:func:`writing`, which turns a full-disk error into the :class:`GeomsafeError`
``no space left on device writing PATH``; the command line turns any other full-disk error
that escapes into ``no space left on device`` (with the file when the error names one).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from geomsafe.errors import GeomsafeError

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# libraries that write from native code (safetensors' Rust writer) report it only in words
NO_SPACE_TEXT = ("No space left on device", "Disk quota exceeded", "os error 28")


def is_disk_full(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from or while handling, is a full
    disk: an :class:`OSError` with errno ENOSPC or EDQUOT, or an error whose message says so
    (:data:`NO_SPACE_TEXT`)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        if any(text in str(exc) for text in NO_SPACE_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_error(path: str | Path | None) -> GeomsafeError:
    """The one-line error for a full disk while writing ``path`` (None: unknown file)."""
    return GeomsafeError("no space left on device" + (f" writing {path}" if path else ""))


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Inside the block, a full-disk error becomes :func:`disk_full_error` naming ``path``;
    the caller removes what it had half-written (its ``finally`` still runs)."""
    try:
        yield
    except GeomsafeError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise disk_full_error(path) from exc
        raise
