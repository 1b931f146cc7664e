"""The one reader of fine-tuning data: JSONL files, built-in task sets and in-memory examples.

``predict``, ``finetune`` and ``bench`` all read data through :func:`load_dataset` /
:func:`as_dataset`, so a file accepted by one command is accepted by all, and a file rejected
by one is rejected by all with the same message. One JSON object per line; blank lines are
skipped (but counted, so ``file:line`` points at the right line). Two record forms:

- chat: ``{"messages": [{"role": ..., "content": str}, ...]}``. The last message must be an
  assistant turn: it is the response, and every earlier turn (system, user, earlier assistant
  and tool turns) is the prompt. Turns after the last assistant turn are an error.
- prompt/completion: ``{"prompt": str | [message, ...], "completion": str |
  [one assistant message]}``.

Roles are those of :data:`ROLES`; other keys of a record are ignored. A record with both
forms, an empty prompt (every prompt turn blank), an empty response, bytes that are not UTF-8,
bad JSON and an empty file are errors: a one-line :class:`GeomsafeError` that starts with
``file:line:`` (the file alone for a missing or empty file). ``task:NAME`` names a built-in
benign task set. Each record keeps its raw line, so a filtered data set is written back byte
for byte.

Public data sets (RealToxicityPrompts, XSTest, the emergent-misalignment files, ...) are read
from the data root: ``--data-root``, else ``$GEOMSAFE_DATA``, else ``../shared/data`` next to
the source tree or the working directory (:func:`resolve_data_root`, :func:`need_root`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, Message
from geomsafe.textfile import decode_text, json_lines

ROLES = ("system", "user", "assistant", "tool", "developer")
MEMORY = "<memory>"  # the source name of in-memory examples

DataSpec = str | Path  # a JSONL path or ``task:NAME``
ExampleLike = Example | tuple[Any, str] | Mapping[str, Any]


@dataclass(frozen=True)
class Record:
    """One example, where it came from (``file:line``, or ``<memory>:i`` for the i-th in-memory
    example, 1-based) and its JSON line as it was read (without the newline)."""

    example: Example
    where: str
    raw: str

    @property
    def line(self) -> int:
        """The line number in ``where`` (the 1-based position for in-memory examples)."""
        return int(self.where.rsplit(":", 1)[1])


@dataclass
class Dataset:
    """Validated records of one source.

    ``path``: the file (``<memory>`` for in-memory examples). ``sha256``: sha256 of the file's
    bytes (for in-memory examples, of the JSONL their records would write); a :meth:`sample`
    or :meth:`head` keeps the source's hash and :attr:`records_sha256` tells subsets apart.
    """

    path: str
    records: list[Record]
    sha256: str

    @classmethod
    def from_examples(cls, examples: Sequence[ExampleLike], source: str = MEMORY) -> Dataset:
        """In-memory examples (:class:`Example`, ``(prompt, response)`` or a JSON record as a
        dict) checked by the same rules as a file; each record's ``raw`` is its JSON line."""
        records = []
        for i, item in enumerate(examples, 1):
            where = f"{source}:{i}"
            obj = _as_object(item, where)
            example = parse_record(obj, where)
            records.append(Record(example, where, json.dumps(obj, ensure_ascii=False, default=str)))
        if not records:
            raise GeomsafeError(f"{source}: no examples")
        return cls(source, records, _jsonl_sha256(records))

    @property
    def examples(self) -> list[Example]:
        return [r.example for r in self.records]

    @property
    def records_sha256(self) -> str:
        """sha256 of the JSONL holding exactly these records (each raw line + ``"\\n"``)."""
        return _jsonl_sha256(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def head(self, n: int | None) -> Dataset:
        """The first ``n`` records (all when ``n`` is None)."""
        if n is None or n >= len(self.records):
            return self
        if n < 1:
            raise GeomsafeError(f"{self.path}: asked for {n} examples; need at least 1")
        return dataclasses.replace(self, records=self.records[:n])

    def sample(self, n: int | None, seed: int = 0) -> Dataset:
        """A fixed random sample of ``n`` records, in file order (all when ``n`` is None)."""
        if n is None or n >= len(self.records):
            return self
        keep = sorted(random.Random(seed).sample(range(len(self.records)), n))
        return dataclasses.replace(self, records=[self.records[i] for i in keep])


def _jsonl_sha256(records: Sequence[Record]) -> str:
    return hashlib.sha256("".join(r.raw + "\n" for r in records).encode()).hexdigest()


def _as_object(item: ExampleLike, where: str) -> dict[str, Any]:
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, tuple) and len(item) == 2:
        item = Example(item[0], item[1])
    if not isinstance(item, Example):
        raise GeomsafeError(f"{where}: expected an Example, (prompt, response) or a JSON record")
    if item.response is None:
        raise GeomsafeError(f"{where}: example without an assistant response")
    prompt = item.prompt if isinstance(item.prompt, str) else [dict(m) for m in item.prompt]
    return {"prompt": prompt, "completion": item.response}


def _message(obj: Any, where: str, key: str, i: int) -> Message:
    if not isinstance(obj, Mapping):
        raise GeomsafeError(f"{where}: {key}[{i}] is not an object")
    role, content = obj.get("role"), obj.get("content")
    if not isinstance(role, str) or role not in ROLES:
        raise GeomsafeError(f"{where}: {key}[{i}] has role {role!r}; use one of {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise GeomsafeError(f"{where}: {key}[{i}] ({role}) has no string 'content'")
    return {"role": role, "content": content}


def _messages(obj: Any, where: str, key: str) -> list[Message]:
    if not isinstance(obj, list) or not obj:
        raise GeomsafeError(f"{where}: '{key}' must be a non-empty list of messages")
    return [_message(m, where, key, i) for i, m in enumerate(obj)]


def _chat(obj: Any, where: str) -> tuple[list[Message], str]:
    msgs = _messages(obj, where, "messages")
    last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if last is None:
        raise GeomsafeError(f"{where}: no assistant turn (nothing to train on)")
    if last != len(msgs) - 1:
        n = len(msgs) - 1 - last
        raise GeomsafeError(
            f"{where}: {n} turn(s) after the last assistant turn; end with the assistant response"
        )
    if last == 0:
        raise GeomsafeError(f"{where}: the assistant turn has no prompt before it")
    return msgs[:last], msgs[last]["content"]


def _completion(obj: Any, where: str) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, list):
        comp = _messages(obj, where, "completion")
        if len(comp) == 1 and comp[0]["role"] == "assistant":
            return comp[0]["content"]
    raise GeomsafeError(f"{where}: 'completion' must be a string or one assistant message")


def parse_record(obj: Any, where: str) -> Example:
    """One JSON record (chat or prompt/completion) -> an :class:`Example`, by the rules in
    this module's docstring; errors start with ``where``."""
    if not isinstance(obj, Mapping):
        raise GeomsafeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj and ("prompt" in obj or "completion" in obj):
        raise GeomsafeError(f"{where}: has both 'messages' and 'prompt'/'completion'; use one")
    if "messages" in obj:
        turns, response = _chat(obj["messages"], where)
        prompt: str | tuple[Message, ...] = tuple(turns)
    elif "prompt" in obj and "completion" in obj:
        p = obj["prompt"]
        prompt = p if isinstance(p, str) else tuple(_messages(p, where, "prompt"))
        response = _completion(obj["completion"], where)
    else:
        keys = ", ".join(sorted(map(str, obj))) or "none"
        raise GeomsafeError(
            f"{where}: expected 'messages' or 'prompt'+'completion' (keys found: {keys})"
        )
    texts = [prompt] if isinstance(prompt, str) else [m["content"] for m in prompt]
    if not any(t.strip() for t in texts):
        raise GeomsafeError(f"{where}: empty prompt")
    if not response.strip():
        raise GeomsafeError(f"{where}: empty assistant response")
    return Example(prompt, response)


def default_data_root() -> Path | None:
    """``$GEOMSAFE_DATA``, else the first ``shared/data`` folder found beside the source tree
    or the working directory; None when there is none."""
    env = os.environ.get("GEOMSAFE_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for cand in (here.parents[3] / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if cand.is_dir():
            return cand
    return None


def resolve_data_root(data_root: str | Path | None) -> Path | None:
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise GeomsafeError(f"data root not found: {root}")
        return root
    return default_data_root()


def need_root(data_root: Path | None, sub: str) -> Path:
    if data_root is None:
        raise GeomsafeError(
            f"public data not found (needed: {sub}); pass --data-root or set GEOMSAFE_DATA"
        )
    path = data_root / sub
    if not path.exists():
        raise GeomsafeError(f"{path} not found under the data root")
    return path


def builtin_task(name: str) -> Path:
    """Path of a built-in benign task set (``factual_qa``, ``instruction_following``, ``code``,
    ``summarisation``)."""
    from importlib import resources

    path = resources.files("geomsafe") / "data" / "tasks" / f"{name}.jsonl"
    if not path.is_file():
        raise GeomsafeError(f"unknown built-in task {name!r}")
    return Path(str(path))


def resolve_data(spec: DataSpec) -> Path:
    """A JSONL path, or ``task:NAME`` for a built-in benign task set."""
    s = str(spec)
    return builtin_task(s.removeprefix("task:")) if s.startswith("task:") else Path(s)


def load_dataset(spec: DataSpec) -> Dataset:
    """Read and validate a JSONL file (or ``task:NAME``); ``sha256`` is that of its bytes."""
    path = resolve_data(spec)
    if not path.is_file():
        raise GeomsafeError(f"data file not found: {path}")
    data = path.read_bytes()
    records = []
    for lineno, line, obj in json_lines(decode_text(data, str(path)), str(path)):
        where = f"{path}:{lineno}"
        records.append(Record(parse_record(obj, where), where, line))
    if not records:
        raise GeomsafeError(f"{path}: empty file (no examples)")
    return Dataset(str(path), records, hashlib.sha256(data).hexdigest())


def as_dataset(data: DataSpec | Dataset | Sequence[ExampleLike]) -> Dataset:
    """A :class:`Dataset` from a path, ``task:NAME``, a Dataset or in-memory examples."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_dataset(data)
    return Dataset.from_examples(data)
