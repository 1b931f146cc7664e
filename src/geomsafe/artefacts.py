"""Every file geomsafe writes: names, the format stamp of its JSON, atomic writes, output folders.

A JSON result carries ``"format": "geomsafe.<kind>/<version>"`` and ``"geomsafe_version"``;
:func:`read_json` checks the stamp, so a foreign file, a file of another kind or one written
by a newer geomsafe is a one-line :class:`~geomsafe.errors.GeomsafeError`, never a traceback.
Files written before the stamp existed (no ``"format"``) are read as the kind their name says.

An output folder is written as one set (:func:`prepare_out`): the command checks ``--out``
before any work, writes its files into a hidden sibling folder and renames that to ``--out`` at
the end, so a killed run never leaves a new atlas beside an old ``audit.json``.

This module imports only the standard library (the report and ``import geomsafe`` use it).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomsafe.diskfull import writing
from geomsafe.errors import GeomsafeError
from geomsafe.textfile import decode_text, json_lines

# ---- file names -------------------------------------------------------------------------------
ATLAS_DIR = "atlas"  # the atlas of an output folder: <out>/atlas/
ATLAS_WEIGHTS = "atlas.safetensors"
ATLAS_META = "atlas.json"
AUDIT_JSON = "audit.json"
RISK_JSON = "risk.json"
FILTERED_JSONL = "filtered.jsonl"
ATTACK_JSONL = "attack.jsonl"
RUN_JSON = "run.json"
GEOMETRY_LOG = "geometry_log.jsonl"
CHECKPOINTS = "checkpoints"
EVAL_JSON = "eval.json"
GENERATIONS_JSONL = "generations.jsonl"
BENCH_JSON = "bench.json"
BENCH_TABLE = "table.md"
TOY_JSON = "toy.json"
PILOT_JSON = "pilot.json"
DIFF_JSON = "diff.json"  # geomsafe diff (its atlas in atlas/)
FIREWALL_JSON = "firewall.json"
FIREWALL_WEIGHTS = "firewall.safetensors"
FIREWALL_RUN_JSON = "firewall_run.json"
PARETO_JSON = "pareto.json"
VALIDATION_JSON = "validation.json"  # experiments/predict_validation.py
REPORT_HTML = "report.html"
CONTROL = "random_labels"  # the audit's label-shuffled control concept (atlas and audit.json)

# ---- format stamps ----------------------------------------------------------------------------
#: The newest version of each kind this geomsafe writes (and the newest it reads). Version 2 of
#: eval, bench and audit: every CI is serialised as :meth:`geomsafe.stats.CI.to_dict`
#: (``{value, low, high, n, n_boot, level}``); older files are read through ``CI.from_dict``.
VERSIONS: dict[str, int] = {
    "atlas": 1,
    "audit": 2,
    "predict": 1,
    "run": 1,
    "eval": 2,
    "bench": 2,
    "toy": 1,
    "pilot": 1,
    "diff": 1,
    "firewall": 1,
    "firewall_run": 1,
    "pareto": 1,
    "predict_validation": 1,
}
#: The kind of each result file by name: how files written before the stamp are read.
KIND_OF_FILE: dict[str, str] = {
    ATLAS_META: "atlas",
    AUDIT_JSON: "audit",
    RISK_JSON: "predict",
    RUN_JSON: "run",
    EVAL_JSON: "eval",
    BENCH_JSON: "bench",
    TOY_JSON: "toy",
    PILOT_JSON: "pilot",
    DIFF_JSON: "diff",
    FIREWALL_JSON: "firewall",
    FIREWALL_RUN_JSON: "firewall_run",
    PARETO_JSON: "pareto",
    VALIDATION_JSON: "predict_validation",
}
_TAG = re.compile(r"^geomsafe\.([a-z_]+)/(\d+)$")


def format_tag(kind: str) -> str:
    """``"geomsafe.<kind>/<version>"`` for the newest version of ``kind``."""
    if kind not in VERSIONS:
        raise ValueError(f"unknown artefact kind {kind!r}")
    return f"geomsafe.{kind}/{VERSIONS[kind]}"


def geomsafe_version() -> str:
    """The installed geomsafe's version, as every artefact and provenance block records it
    (the one place ``geomsafe.__version__`` is read)."""
    from geomsafe import __version__

    return __version__


def stamp(payload: dict[str, Any], kind: str) -> dict[str, Any]:
    """``payload`` with ``format`` and ``geomsafe_version`` first (any old stamp replaced)."""
    rest = {k: v for k, v in payload.items() if k not in ("format", "geomsafe_version")}
    return {"format": format_tag(kind), "geomsafe_version": geomsafe_version(), **rest}


def write_json(path: str | Path, payload: dict[str, Any], kind: str, **dump: Any) -> Path:
    """Write ``payload`` stamped as ``kind`` (:func:`stamp`) to ``path`` atomically."""
    return write_plain_json(path, stamp(payload, kind), **dump)


def write_plain_json(path: str | Path, obj: Any, *, indent: int = 1, **dump: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically, unstamped: for files geomsafe does not
    read back as a result (a checkpoint's run record, a lock holder, a model cache's index,
    a model's ``config.json``). Results go through :func:`write_json`."""
    path = Path(path)
    text = json.dumps(obj, indent=indent, **dump)
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))
    return path


def jsonl_text(rows: Iterable[Any], **dump: Any) -> str:
    """``rows`` as JSONL text: one JSON value per line, each line ending in a newline."""
    return "".join(json.dumps(r, **dump) + "\n" for r in rows)


def write_jsonl(path: str | Path, rows: Iterable[Any], **dump: Any) -> Path:
    """Write ``rows`` to ``path`` as JSONL (:func:`jsonl_text`) atomically."""
    path = Path(path)
    atomic_write_text(path, jsonl_text(rows, **dump))
    return path


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of the result file ``path``: a missing or binary file is a one-line error, and
    the text follows the one rule for text files (:func:`geomsafe.textfile.decode_text`)."""
    path = Path(path)
    if not path.is_file():
        raise GeomsafeError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeomsafeError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\x00" in data[:4096]:
        raise GeomsafeError(f"{path} is a binary file, not {what}")
    return decode_text(data, str(path))


def kind_of(data: Any, path: str | Path) -> tuple[str | None, int | None]:
    """``(kind, version)`` of a loaded JSON object: from its ``format`` stamp, else from the
    file's name (a file written before the stamp); ``(None, None)`` when neither says."""
    if isinstance(data, dict) and "format" in data:
        m = _TAG.match(str(data["format"]))
        return (m.group(1), int(m.group(2))) if m else (None, None)
    return KIND_OF_FILE.get(Path(path).name), None


def read_json(path: str | Path, kind: str) -> dict[str, Any]:
    """The JSON object in ``path``, checked to be a ``kind`` file this geomsafe can read.

    Errors (one line, naming the file): missing, binary or non-UTF-8 file, invalid JSON, a
    top-level value that is not an object, another kind's or a foreign ``format`` stamp, and a
    version newer than :data:`VERSIONS` (``written by a newer geomsafe``). An unstamped object
    is accepted (an older geomsafe) unless its ``kind`` field names another kind."""
    path = Path(path)
    text = read_text(path, f"a geomsafe {kind} file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeomsafeError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise GeomsafeError(
            f"{path} is not a geomsafe {kind} file (a JSON {type(data).__name__}, not an object)"
        )
    if "format" in data:
        m = _TAG.match(str(data["format"]))
        if m is None or m.group(1) != kind:
            raise GeomsafeError(
                f"{path} is not a geomsafe {kind} file (format {data['format']!r}, "
                f"expected {format_tag(kind)!r})"
            )
        if int(m.group(2)) > VERSIONS[kind]:
            raise GeomsafeError(
                f"{path} was written by a newer geomsafe ({data['format']}; this one reads "
                f"up to {format_tag(kind)}); upgrade geomsafe"
            )
    elif "kind" in data and data["kind"] != kind:
        raise GeomsafeError(f"{path} is not a geomsafe {kind} file (kind {data['kind']!r})")
    return data


def read_jsonl(path: str | Path) -> list[Any]:
    """The JSON values of a ``.jsonl`` file, one per non-blank line (one-line errors)."""
    path = Path(path)
    return [obj for _, _, obj in json_lines(read_text(path, "a JSONL file"), str(path))]


# ---- atomic writes ----------------------------------------------------------------------------
def atomic_write(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``, so readers never see half a file;
    a full disk is the one-line error ``no space left on device writing PATH``."""
    path = Path(path)
    with writing(path):
        _atomic_write(path, write)


def _atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda p: Path(p).write_text(text, encoding="utf-8"))


# ---- output folders ---------------------------------------------------------------------------
def describe(folder: Path) -> str:
    """What a folder holds, for an error message: its geomsafe results by kind, else its
    first entries."""
    entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    known = [f"{n} ({KIND_OF_FILE[n]})" for n in entries if n in KIND_OF_FILE]
    if (folder / ATLAS_DIR / ATLAS_META).is_file():
        known.append(f"{ATLAS_DIR}/ (atlas)")
    shown = known or entries[:4]
    more = len(entries) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 and not known else "")


@dataclass(frozen=True)
class OutFolder:
    """An output folder checked by :func:`prepare_out`; :meth:`writing` yields the hidden work
    folder the command writes into and renames it to ``out`` when the block succeeds."""

    out: Path
    kind: str
    overwrite: bool = False

    def check(self) -> None:
        """Fail when ``out`` is a file, not writable, or a non-empty folder (unless
        ``overwrite``); the error names what is there."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise GeomsafeError(f"--out {out} is a file, not a folder")
        parent = _existing_parent(out)
        if not os.access(parent, os.W_OK | os.X_OK):
            raise GeomsafeError(f"--out {out}: {parent} is not writable")
        if out.is_dir() and not self.overwrite and _visible(out):
            raise GeomsafeError(
                f"--out {out} is not empty (holds {describe(out)}); choose a new folder or "
                f"pass --overwrite to replace it with this {self.kind}"
            )

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield an empty work folder beside ``out``; on success it replaces ``out`` (the old
        contents are removed only after the new set is in place); on failure it is removed."""
        self.check()  # again: another run may have written there meanwhile
        self.out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=f".{self.out.name}.partial-"))
        try:
            yield work
            os.chmod(work, 0o777 & ~_umask())
            _swap(work, self.out)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def prepare_out(out: str | Path, kind: str, *, overwrite: bool = False) -> OutFolder:
    """Check ``out`` for a ``kind`` result before any work (see :meth:`OutFolder.check`) and
    return the handle whose :meth:`~OutFolder.writing` writes the folder as one set.

    Contract: nothing is created or removed here; ``writing()`` re-checks, writes into
    ``<parent>/.<name>.partial-*`` and renames it to ``out`` (an existing ``out`` only with
    ``overwrite``: it is moved aside and removed after the rename)."""
    if kind not in VERSIONS:
        raise ValueError(f"unknown artefact kind {kind!r}")
    handle = OutFolder(Path(out), kind, overwrite)
    handle.check()
    return handle


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _existing_parent(path: Path) -> Path:
    p = path if path.exists() else path.parent
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _visible(folder: Path) -> bool:
    return any(not p.name.startswith(".") for p in folder.iterdir())


def _swap(work: Path, out: Path) -> None:
    old = None
    if out.exists():
        if not _visible(out) and not any(out.iterdir()):
            out.rmdir()
        else:
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            old.rmdir()
            os.rename(out, old)
    try:
        os.rename(work, out)
    except OSError as exc:
        if old is not None:
            os.rename(old, out)
        raise GeomsafeError(f"could not move the results into {out}: {exc.strerror}") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = [
    "ATLAS_DIR",
    "OutFolder",
    "atomic_write",
    "geomsafe_version",
    "kind_of",
    "prepare_out",
    "read_json",
    "stamp",
    "write_json",
    "write_jsonl",
]
