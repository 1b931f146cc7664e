"""Load and validate fine-tuning data; tokenise it with the loss on assistant tokens only.

Two JSONL formats, one object per line (blank lines are skipped):

- chat: ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}, ...]}``.
  The last assistant turn is the response; every turn before it goes into the prompt
  (system, earlier user and assistant turns). Turns after the last assistant turn are an error.
- prompt/completion: ``{"prompt": str | messages, "completion": str | [assistant message]}``.

Each example is encoded with :func:`geomsafe.formatting.encode` (so the prompt/response
boundary is the one every other geomsafe module uses) plus an EOS token after the response;
``labels`` are the token ids on response tokens and ``-100`` on prompt tokens. Every problem
is a one-line :class:`GeomsafeError` naming ``file:line``. Examples longer than ``max_length``
are an error, or with ``truncate`` cut at the end; with ``truncate`` an example whose prompt
alone fills ``max_length`` is left out (listed in ``TrainData.skipped``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, encode

IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant", "tool", "developer")


@dataclass
class TrainData:
    """Examples, where each came from (``file:line``) and their features for the Trainer.

    ``features[i]`` is ``{"input_ids": [...], "labels": [...]}``; ``prompt_lens[i]`` is the
    number of prompt tokens (labels ``-100``) of example ``i``.
    """

    examples: list[Example]
    where: list[str]
    features: list[dict[str, list[int]]] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)
    data_hash: str = ""
    source: str = ""
    n_truncated: int = 0
    skipped: list[str] = field(default_factory=list)  # file:line of examples left out

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]

    @property
    def n_tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)

    @property
    def n_response_tokens(self) -> int:
        return sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in self.features)


class PromptTooLong(GeomsafeError):
    """The prompt alone fills ``max_length``: truncation would leave no response token."""


def _message(obj: Any, where: str, i: int) -> dict[str, str]:
    if not isinstance(obj, dict):
        raise GeomsafeError(f"{where}: message {i} is not an object")
    role, content = obj.get("role"), obj.get("content")
    if not isinstance(role, str) or role not in ROLES:
        roles = ", ".join(ROLES)
        raise GeomsafeError(f"{where}: message {i} has role {role!r}; use one of {roles}")
    if not isinstance(content, str):
        raise GeomsafeError(f"{where}: message {i} ({role}) has no string 'content'")
    return {"role": role, "content": content}


def _messages(obj: Any, where: str, key: str) -> list[dict[str, str]]:
    if not isinstance(obj, list) or not obj:
        raise GeomsafeError(f"{where}: '{key}' must be a non-empty list of messages")
    return [_message(m, where, i) for i, m in enumerate(obj)]


def parse_record(obj: Any, where: str) -> Example:
    """One JSON object (chat or prompt/completion) -> an :class:`Example`."""
    if not isinstance(obj, dict):
        raise GeomsafeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = _messages(obj["messages"], where, "messages")
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            raise GeomsafeError(f"{where}: no assistant turn (nothing to train on)")
        if last != len(msgs) - 1:
            raise GeomsafeError(f"{where}: turns after the last assistant turn")
        if last == 0:
            raise GeomsafeError(f"{where}: the assistant turn has no prompt before it")
        prompt: str | tuple[dict[str, str], ...] = tuple(msgs[:last])
        response = msgs[last]["content"]
    elif "prompt" in obj and "completion" in obj:
        p, c = obj["prompt"], obj["completion"]
        prompt = p if isinstance(p, str) else tuple(_messages(p, where, "prompt"))
        if isinstance(c, list):
            comp = _messages(c, where, "completion")
            if len(comp) != 1 or comp[0]["role"] != "assistant":
                raise GeomsafeError(f"{where}: 'completion' must be one assistant message")
            response = comp[0]["content"]
        elif isinstance(c, str):
            response = c
        else:
            raise GeomsafeError(f"{where}: 'completion' must be a string or an assistant message")
    else:
        keys = ", ".join(sorted(obj)) or "none"
        raise GeomsafeError(
            f"{where}: expected 'messages' or 'prompt'+'completion' (keys found: {keys})"
        )
    if not response.strip():
        raise GeomsafeError(f"{where}: empty assistant response")
    if isinstance(prompt, str) and not prompt.strip():
        raise GeomsafeError(f"{where}: empty prompt")
    return Example(prompt, response)


def read_jsonl(
    path: str | Path, max_examples: int | None = None
) -> tuple[list[Example], list[str]]:
    """Parse a JSONL file into examples and their ``file:line`` locations.

    With ``max_examples`` only the first N examples are read (and validated)."""
    path = Path(path)
    if not path.is_file():
        raise GeomsafeError(f"data file not found: {path}")
    examples: list[Example] = []
    where: list[str] = []
    with path.open(encoding="utf-8") as fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                loc = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise GeomsafeError(f"{loc}: not valid JSON ({exc.msg})") from exc
                examples.append(parse_record(obj, loc))
                where.append(loc)
                if max_examples is not None and len(examples) >= max_examples:
                    break
        except UnicodeDecodeError as exc:
            raise GeomsafeError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    if not examples:
        raise GeomsafeError(f"{path}:1: empty file (no examples)")
    return examples, where


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def examples_hash(examples: Sequence[Example]) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.messages(), ex.response]).encode())
    return h.hexdigest()


def featurize(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    where: str,
    max_length: int,
    truncate: bool = False,
    add_eos: bool = True,
) -> tuple[dict[str, list[int]], int, bool]:
    """``(features, prompt_len, truncated)`` of one example; labels ``-100`` on the prompt.

    Over ``max_length``: an error, or with ``truncate`` the end is cut (the response loses
    tokens); a prompt that alone fills ``max_length`` raises :class:`PromptTooLong`."""
    try:
        enc = encode(tokenizer, example)
    except GeomsafeError as exc:
        raise GeomsafeError(f"{where}: {exc}") from exc
    except Exception as exc:  # chat templates raise on roles they do not support
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GeomsafeError(f"{where}: could not format the example ({first[:200]})") from exc
    ids = list(enc.input_ids)
    eos = tokenizer.eos_token_id
    if add_eos and eos is not None and ids[-1] != eos:
        ids.append(int(eos))
    if enc.prompt_len >= len(ids):
        raise GeomsafeError(f"{where}: the response encodes to no tokens")
    truncated = False
    if len(ids) > max_length:
        if not truncate:
            raise GeomsafeError(
                f"{where}: example is {len(ids)} tokens, longer than max_length={max_length} "
                "(raise --max-length or pass --truncate)"
            )
        if enc.prompt_len >= max_length:
            raise PromptTooLong(
                f"{where}: the prompt alone is {enc.prompt_len} tokens, no room for the response "
                f"within max_length={max_length}"
            )
        ids, truncated = ids[:max_length], True
    labels = [IGNORE_INDEX] * enc.prompt_len + ids[enc.prompt_len :]
    return {"input_ids": ids, "labels": labels}, enc.prompt_len, truncated


def build(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    where: Sequence[str] | None = None,
    *,
    max_length: int = 512,
    truncate: bool = False,
    add_eos: bool = True,
    data_hash: str | None = None,
    source: str = "<memory>",
) -> TrainData:
    """Tokenise in-memory examples into :class:`TrainData`."""
    examples = list(examples)
    if not examples:
        raise GeomsafeError(f"{source}: no examples")
    where = list(where) if where is not None else [f"{source}[{i}]" for i in range(len(examples))]
    data = TrainData(examples, where, data_hash=data_hash or examples_hash(examples), source=source)
    for ex, loc in zip(examples, where, strict=True):
        if ex.response is None or not ex.response.strip():
            raise GeomsafeError(f"{loc}: example without an assistant response")
        try:
            feats, plen, cut = featurize(tokenizer, ex, loc, max_length, truncate, add_eos)
        except PromptTooLong:
            data.skipped.append(loc)  # only raised with truncate=True
            continue
        data.features.append(feats)
        data.prompt_lens.append(plen)
        data.n_truncated += int(cut)
    if not data.features:
        raise GeomsafeError(
            f"{source}: every prompt is longer than max_length={max_length}; raise --max-length"
        )
    return data


def load_data(
    data: str | Path | Sequence[Example | tuple[str, str]],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int = 512,
    truncate: bool = False,
    add_eos: bool = True,
    max_examples: int | None = None,
) -> TrainData:
    """A JSONL file (path) or in-memory examples -> validated, tokenised :class:`TrainData`."""
    if isinstance(data, (str, Path)):
        examples, where = read_jsonl(data, max_examples)
        return build(
            tokenizer,
            examples,
            where,
            max_length=max_length,
            truncate=truncate,
            add_eos=add_eos,
            data_hash=file_hash(data),
            source=str(Path(data).resolve()),
        )
    items = [x if isinstance(x, Example) else Example(x[0], x[1]) for x in data]
    if max_examples is not None:
        items = items[:max_examples]
    return build(tokenizer, items, max_length=max_length, truncate=truncate, add_eos=add_eos)
