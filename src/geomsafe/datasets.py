"""Fine-tuning data sets as chat examples: chat JSONL (``{"messages": [...]}``, the format of
the emergent-misalignment data) or prompt/completion JSONL (``{"prompt", "completion"}``).

The last assistant turn is the response; every earlier turn is the prompt. Each record
keeps its raw line so that a filtered data set is written back byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example

ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Record:
    example: Example
    line: int
    raw: str


@dataclass
class Dataset:
    path: str
    records: list[Record]
    sha256: str

    @property
    def examples(self) -> list[Example]:
        return [r.example for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def sample(self, n: int | None, seed: int = 0) -> Dataset:
        """A fixed random sample of ``n`` records, in file order (all when ``n`` is None)."""
        if n is None or n >= len(self.records):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self.records)), n))
        return Dataset(self.path, [self.records[i] for i in keep], self.sha256)


def _parse(obj: object, where: str) -> Example:
    if not isinstance(obj, dict):
        raise GeomsafeError(f"{where}: expected a JSON object")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise GeomsafeError(f"{where}: 'messages' must be a non-empty list")
        for m in msgs:
            if (
                not isinstance(m, dict)
                or m.get("role") not in ROLES
                or not isinstance(m.get("content"), str)
            ):
                raise GeomsafeError(f"{where}: each message needs a role and a string content")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise GeomsafeError(f"{where}: no assistant turn after a prompt")
        prompt = tuple({"role": m["role"], "content": m["content"]} for m in msgs[:last])
        return Example(prompt, msgs[last]["content"])
    if isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
        return Example(obj["prompt"], obj["completion"])
    raise GeomsafeError(f"{where}: needs 'messages' or 'prompt' + 'completion'")


def load_dataset(path: str | Path) -> Dataset:
    """Read and validate a JSONL data set; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise GeomsafeError(f"data file not found: {path}")
    raw = path.read_bytes()
    records = []
    for lineno, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GeomsafeError(f"{where}: not valid JSON ({exc.msg})") from exc
        ex = _parse(obj, where)
        if not ex.response or not ex.response.strip():
            raise GeomsafeError(f"{where}: the assistant response is empty")
        records.append(Record(ex, lineno, line))
    if not records:
        raise GeomsafeError(f"{path}: no examples (empty file)")
    return Dataset(str(path), records, hashlib.sha256(raw).hexdigest())


def builtin_task(name: str) -> Path:
    """Path of a built-in benign task set (``factual_qa``, ``instruction_following``, ``code``,
    ``summarisation``)."""
    from importlib import resources

    path = resources.files("geomsafe") / "data" / "tasks" / f"{name}.jsonl"
    if not path.is_file():
        raise GeomsafeError(f"unknown built-in task {name!r}")
    return Path(str(path))


def resolve_data(spec: str | Path) -> Path:
    """A JSONL path, or ``task:NAME`` for a built-in benign task set."""
    s = str(spec)
    return builtin_task(s.removeprefix("task:")) if s.startswith("task:") else Path(s)
