"""Tokenise fine-tuning data with the loss on assistant tokens only.

Reading and validating data (JSONL files, ``task:NAME``, in-memory examples) is
:mod:`geomsafe.datasets`; this module turns a :class:`~geomsafe.datasets.Dataset` into
Trainer features. Each example is encoded with :func:`geomsafe.formatting.encode` (so the
prompt/response boundary is the one every other geomsafe module uses) plus an EOS token after
the response; ``labels`` are the token ids on response tokens and ``-100`` on prompt tokens.
Every problem is a one-line :class:`GeomsafeError` naming ``file:line``. Examples longer than
``max_length`` are an error, or with ``truncate`` cut at the end; with ``truncate`` an example
whose prompt alone fills ``max_length`` is left out (listed in ``TrainData.skipped``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from geomsafe.datasets import Dataset, DataSpec, ExampleLike, Record, as_dataset
from geomsafe.errors import GeomsafeError
from geomsafe.formatting import Example, encode

IGNORE_INDEX = -100


@dataclass
class TrainData:
    """The tokenised records of a :class:`Dataset`, for the Trainer.

    ``records[i]`` (kept records, in order) has features ``features[i]`` = ``{"input_ids":
    [...], "labels": [...]}`` and ``prompt_lens[i]`` prompt tokens (labels ``-100``).
    ``skipped``: ``file:line`` of records left out (prompt alone fills ``max_length``, only
    with ``truncate``); ``n_truncated``: records whose end was cut.
    """

    dataset: Dataset
    records: list[Record] = field(default_factory=list)
    features: list[dict[str, list[int]]] = field(default_factory=list)
    prompt_lens: list[int] = field(default_factory=list)
    n_truncated: int = 0
    skipped: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        return self.features[i]

    @property
    def examples(self) -> list[Example]:
        return [r.example for r in self.records]

    @property
    def where(self) -> list[str]:
        return [r.where for r in self.records]

    @property
    def source(self) -> str:
        return self.dataset.path

    @property
    def data_hash(self) -> str:
        """sha256 of the source file (see :attr:`Dataset.sha256`)."""
        return self.dataset.sha256

    @property
    def n_tokens(self) -> int:
        return sum(len(f["input_ids"]) for f in self.features)

    @property
    def n_response_tokens(self) -> int:
        return sum(sum(1 for t in f["labels"] if t != IGNORE_INDEX) for f in self.features)


class PromptTooLong(GeomsafeError):
    """The prompt alone fills ``max_length``: truncation would leave no response token."""


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
    dataset: Dataset,
    *,
    max_length: int = 512,
    truncate: bool = False,
    add_eos: bool = True,
) -> TrainData:
    """Tokenise every record of ``dataset`` into :class:`TrainData`."""
    data = TrainData(dataset)
    for rec in dataset.records:
        try:
            feats, plen, cut = featurize(
                tokenizer, rec.example, rec.where, max_length, truncate, add_eos
            )
        except PromptTooLong:
            data.skipped.append(rec.where)  # only raised with truncate=True
            continue
        data.records.append(rec)
        data.features.append(feats)
        data.prompt_lens.append(plen)
        data.n_truncated += int(cut)
    if not data.features:
        raise GeomsafeError(
            f"{dataset.path}: every prompt is longer than max_length={max_length}; "
            "raise --max-length"
        )
    return data


def load_data(
    data: DataSpec | Dataset | Sequence[ExampleLike],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_length: int = 512,
    truncate: bool = False,
    add_eos: bool = True,
    max_examples: int | None = None,
) -> TrainData:
    """A JSONL path, ``task:NAME``, a Dataset or in-memory examples (read by
    :func:`geomsafe.datasets.as_dataset`), first ``max_examples`` records, tokenised."""
    dataset = as_dataset(data).head(max_examples)
    return build(tokenizer, dataset, max_length=max_length, truncate=truncate, add_eos=add_eos)
