"""The fine-tuning tasks of the benchmark: the built-in benign task sets and the narrow harmful
sets of the public emergent-misalignment data (read from the data root at run time)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from geomsafe.datasets import builtin_task, need_root, resolve_data_root
from geomsafe.errors import GeomsafeError

EXTERNAL = {
    "insecure": "emergent-misalignment/data/insecure.jsonl",
    "jailbroken": "emergent-misalignment/data/jailbroken.jsonl",
    "insecure_small": "emergent-misalignment/small/insecure_small.jsonl",
    "secure_small": "emergent-misalignment/small/secure_small.jsonl",
}
BUILTIN = ("factual_qa", "instruction_following", "code", "summarisation")


@dataclass(frozen=True)
class Task:
    name: str
    path: Path
    kind: str  # "benign" (built-in) | "narrow" (public emergent-misalignment set) | "file"


def resolve_task(spec: str, data_root: str | Path | None = None) -> Task:
    """A task by name (built-in or public set) or a JSONL file given as ``NAME=PATH``."""
    if "=" in spec:
        name, path = spec.split("=", 1)
        if not Path(path).is_file():
            raise GeomsafeError(f"task {name!r}: file not found: {path}")
        return Task(name, Path(path), "file")
    if spec in BUILTIN:
        return Task(spec, builtin_task(spec), "benign")
    if spec in EXTERNAL:
        return Task(spec, need_root(resolve_data_root(data_root), EXTERNAL[spec]), "narrow")
    known = ", ".join((*BUILTIN, *EXTERNAL))
    raise GeomsafeError(f"unknown task {spec!r} (known: {known}; or NAME=FILE.jsonl)")


def resolve_tasks(specs: tuple[str, ...], data_root: str | Path | None = None) -> list[Task]:
    """Every task resolved before any work starts, so that a bad name fails at once."""
    return [resolve_task(s, data_root) for s in specs]
