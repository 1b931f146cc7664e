"""`report`: one self-contained HTML page for the results in a folder.

Results are found by their format stamp (``"format": "geomsafe.<kind>/N"``,
:mod:`geomsafe.artefacts`): every ``*.json`` in the folder and in its direct sub-folders (not
below a bench folder, whose own section shows its runs) is read, and each kind goes to its
section. Files written before the stamp are known by their name. A folder with several results
of one kind shows the first (top level first, then sub-folders by name) and lists the others.
A result file that is not what its name or stamp says, or whose content has the wrong shape, is
a one-line error naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from geomsafe.artefacts import (
    BENCH_JSON,
    CONTROL,
    GEOMETRY_LOG,
    KIND_OF_FILE,
    REPORT_HTML,
    VERSIONS,
    atomic_write_text,
    geomsafe_version,
    kind_of,
    read_json,
    read_jsonl,
)
from geomsafe.errors import GeomsafeError
from geomsafe.report import firewall, pareto, validation
from geomsafe.report.recommend import recommend
from geomsafe.report.sections import (
    audit_section,
    bench_section,
    evaluation_section,
    log_section,
    risk_section,
    run_section,
)

# kind -> (template variable, section builder)
SECTIONS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "audit": ("audit", audit_section),
    "predict": ("risk", risk_section),
    "eval": ("evaluation", evaluation_section),
    "run": ("run", run_section),
    "bench": ("bench", bench_section),
    "firewall_run": ("firewall_run", firewall.run_section),
    "firewall": ("firewall_cal", firewall.calibration_section),
    "pareto": ("pareto", pareto.section),
    "predict_validation": ("validation", validation.section),
}
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError)
_PEEK_BYTES = 50_000_000  # unknown-named JSON files larger than this are not results


@dataclass(frozen=True)
class Found:
    """One result file: its path, its kind and its content."""

    path: Path
    kind: str
    data: dict[str, Any]


def find_results(folder: Path) -> list[Found]:
    """Every geomsafe result in ``folder`` and its direct sub-folders (only the folder itself
    when it holds a bench), top level first, in name order."""
    nested = not (folder / BENCH_JSON).is_file()
    files = sorted(p for p in folder.glob("*.json") if p.is_file())
    if nested:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            files += sorted(p for p in sub.glob("*.json") if p.is_file())
    found = []
    for path in files:
        kind = _kind(path)
        if kind is not None and kind in SECTIONS:
            found.append(Found(path, kind, read_json(path, kind)))
    return found


def _kind(path: Path) -> str | None:
    """The kind of a result file: its name when geomsafe writes that name, else its stamp."""
    if path.name in KIND_OF_FILE:
        return KIND_OF_FILE[path.name]
    try:
        if path.stat().st_size > _PEEK_BYTES:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # not a geomsafe file (a tokenizer, an adapter config, ...)
    kind, _ = kind_of(data, path)
    return kind if kind in VERSIONS else None


def _training_log(folder: Path, run: Found | None) -> Path | None:
    """The run's training log, else the first one in the folder or one folder down."""
    places = [run.path.parent] if run is not None else []
    places += [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    return next((p / GEOMETRY_LOG for p in places if (p / GEOMETRY_LOG).is_file()), None)


def _build(found: Found) -> Any:
    _, section = SECTIONS[found.kind]
    try:
        return section(found.data)
    except _SHAPE_ERRORS as exc:
        raise GeomsafeError(
            f"{found.path} is not a well-formed {found.kind} result ({_why(exc)})"
        ) from None


def _why(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing {exc.args[0]!r}" if exc.args else "a key is missing"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Render ``report.html`` (or ``out``) for the results found in ``folder``; returns its
    path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GeomsafeError(f"not a folder: {folder}")
    results = find_results(folder)
    if not results and _training_log(folder, None) is None:
        raise GeomsafeError(
            f"no geomsafe results in {folder} (looked for the result files of "
            f"{', '.join(sorted(SECTIONS))} and for {GEOMETRY_LOG} there and one folder down)"
        )
    chosen: dict[str, Found] = {}
    notes = []
    for r in results:
        if r.kind in chosen:
            notes.append(
                f"{r.path.relative_to(folder)} ({r.kind}) not shown: this page shows "
                f"{chosen[r.kind].path.relative_to(folder)}; render its folder on its own"
            )
        else:
            chosen[r.kind] = r
    raw = {kind: f.data for kind, f in chosen.items()}
    values: dict[str, Any] = {var: None for var, _ in SECTIONS.values()} | {"log": None}
    for kind, f in chosen.items():
        values[SECTIONS[kind][0]] = _build(f)
    log_path = _training_log(folder, chosen.get("run"))
    if log_path is not None:
        log = read_jsonl(log_path)
        try:
            values["log"] = log_section(log) if log else None
        except _SHAPE_ERRORS as exc:
            raise GeomsafeError(
                f"{log_path} is not a well-formed training log ({_why(exc)})"
            ) from None
    try:
        recommendations = recommend(
            raw.get("audit"), raw.get("predict"), raw.get("eval"), raw.get("run"), raw.get("bench")
        )
    except _SHAPE_ERRORS as exc:
        names = ", ".join(str(f.path.relative_to(folder)) for f in chosen.values())
        why = _why(exc)
        raise GeomsafeError(f"results in {folder} are not well-formed ({names}: {why})") from None
    env = Environment(
        loader=PackageLoader("geomsafe.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )
    env.filters["f3"] = lambda v: f"{v:.3f}" if isinstance(v, (int, float)) else "–"
    try:
        page = env.get_template("report.html.j2").render(
            folder=str(folder),
            version=geomsafe_version(),
            control=CONTROL,
            audit_raw=raw.get("audit"),
            recommendations=recommendations,
            notes=notes,
            provenance=next(
                (
                    d.get("provenance")
                    for d in raw.values()
                    if isinstance(d.get("provenance"), dict)
                ),
                None,
            ),
            **values,
        )
    except _SHAPE_ERRORS as exc:
        raise GeomsafeError(f"results in {folder} are not well-formed ({_why(exc)})") from None
    target = Path(out) if out else folder / REPORT_HTML
    if target.is_dir():
        raise GeomsafeError(f"--out {target} is a folder; give the HTML file to write")
    atomic_write_text(target, page)
    return target
