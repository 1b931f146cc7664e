"""An exclusive lock on an output folder, so that two runs never work in one folder at once.

``lock_folder(out)`` takes ``<parent>/.<name>.lock`` with :mod:`filelock` (``flock`` on Unix:
the kernel drops the lock when its holder dies, even by SIGKILL) and, while it holds it, writes
``<parent>/.<name>.lock.json`` naming the holder (:class:`Holder`: pid, host, start time,
command). A run that cannot take the lock fails at once with :class:`FolderBusy`, whose
one-line message names the holder.

On release both files are removed, the lock file before it is unlocked: a process that opened
it in between then holds an unlinked file, which filelock refuses to count as the lock (it
checks the link count after ``flock``), and no process ever waits on the lock (``timeout=0``).
A holder killed without unwinding (SIGKILL, power loss) leaves both files behind but not the
lock (the kernel drops it): the next run takes the lock, finds the old holder file and warns
that it took over from a run that ended without releasing it (:func:`took_over`).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from geomsafe.artefacts import write_plain_json
from geomsafe.errors import GeomsafeError


class FolderBusy(GeomsafeError):
    """Another process holds the lock of the output folder."""


@dataclass(frozen=True)
class Holder:
    """Who holds a folder lock: process id, host name, start time (ISO 8601, local time with
    its UTC offset, seconds) and the command line (at most 200 characters)."""

    pid: int
    host: str
    started: str
    command: str

    @classmethod
    def me(cls, command: str | None = None) -> Holder:
        cmd = command if command is not None else " ".join(["geomsafe", *sys.argv[1:]])
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        return cls(os.getpid(), socket.gethostname(), started, cmd[:200])

    def alive(self) -> bool | None:
        """Whether the process still runs; None when it ran on another host (unknowable)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user
            return True
        return True

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}: {self.command}"


def lock_path(out: str | Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def holder_path(out: str | Path) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock.json"


def read_holder(out: str | Path) -> Holder | None:
    """The holder recorded next to ``out``'s lock (None when none or unreadable)."""
    try:
        raw = json.loads(holder_path(out).read_text(encoding="utf-8"))
        return Holder(int(raw["pid"]), str(raw["host"]), str(raw["started"]), str(raw["command"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _busy_message(out: Path, holder: Holder | None) -> str:
    if holder is None:  # it has the lock but has not written its name yet, or is not geomsafe
        return f"{out} is in use by another process (lock {lock_path(out)}); wait for it to finish"
    msg = f"{out} is in use by another geomsafe run ({holder.describe()}); wait for it to finish"
    if holder.alive() is False:
        msg += f" (pid {holder.pid} is not running, but a process it started still holds the lock)"
    return msg


def took_over(previous: Holder) -> str:
    """The warning given when a run takes the lock from one that ended without releasing it."""
    state = {False: "not running", True: "running, but no longer holding the lock"}.get(
        previous.alive(), "on another host"
    )
    return (
        "took over the lock from a run that ended without releasing it "
        f"({previous.describe()}; {state})"
    )


@contextmanager
def lock_folder(out: str | Path, command: str | None = None) -> Iterator[Holder]:
    """Hold the lock of output folder ``out`` for the ``with`` block (creating its parent).

    Raises :class:`FolderBusy` at once when another process holds it, :class:`GeomsafeError`
    when the parent folder cannot be created or written. Yields this process's :class:`Holder`.
    """
    out = Path(out).absolute()
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path(out)), timeout=0)
        lock.acquire()
    except Timeout:
        raise FolderBusy(_busy_message(out, read_holder(out))) from None
    except OSError as exc:
        _remove_empty(created)
        raise GeomsafeError(f"cannot lock --out {out}: {exc.strerror or exc}") from exc
    try:
        previous = read_holder(out)
        if previous is not None:
            warnings.warn(f"geomsafe: {out}: {took_over(previous)}", stacklevel=3)
        me = Holder.me(command)
        write_plain_json(holder_path(out), asdict(me))
        yield me
    finally:
        try:
            holder_path(out).unlink(missing_ok=True)
            lock_path(out).unlink(missing_ok=True)  # still locked: see the module docstring
        finally:
            lock.release()
            _remove_empty(created)  # the folders made for the lock, if the run left them empty


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:  # innermost first
        try:
            folder.rmdir()
        except OSError:  # not empty (the run wrote there) or already gone
            return
