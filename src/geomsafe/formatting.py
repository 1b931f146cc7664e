"""Turn chat examples into token ids with the prompt/response boundary known exactly.

The prompt is rendered with the tokenizer's chat template (``add_generation_prompt=True``);
the response is tokenised on its own and appended, so that the response tokens are exactly
what the model would produce after the prompt. Tokenizers without a chat template get a
plain ``User: ...\\nAssistant: `` format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from geomsafe.errors import GeomsafeError

Message = dict[str, str]


@dataclass(frozen=True)
class Example:
    """A chat prompt (a user string or a list of messages) and an optional assistant response."""

    prompt: str | tuple[Message, ...]
    response: str | None = None

    def messages(self) -> list[Message]:
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [dict(m) for m in self.prompt]


@dataclass(frozen=True)
class Encoded:
    """Token ids of an example; tokens ``[0, prompt_len)`` are the prompt, the rest the response."""

    input_ids: tuple[int, ...]
    prompt_len: int

    @property
    def length(self) -> int:
        return len(self.input_ids)


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]) -> str:
    """The prompt text up to where the assistant's reply begins. A chat template that raises
    (``raise_exception``, roles it does not support, the jinja sandbox refusing unsafe code)
    is a one-line :class:`GeomsafeError` ``the chat template failed: <its first line>``."""
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=True
            )
        except Exception as exc:  # jinja2 errors, and whatever a template's filters raise
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise GeomsafeError(f"the chat template failed: {first[:200]}") from exc
        return str(text)
    parts = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(parts) + "\nAssistant:"


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode(
    tokenizer: PreTrainedTokenizerBase, example: Example, max_length: int | None = None
) -> Encoded:
    """Encode one example. A BOS token is prepended when the tokenizer defines one and the
    rendered prompt does not already start with it. An over-long example keeps the end of its
    prompt (the turn being answered and the assistant header) and the start of its response:
    the response keeps at least half of ``max_length`` (all of it when it fits), the prompt
    loses tokens from its start."""
    prompt_ids = _ids(tokenizer, render_prompt(tokenizer, example.messages()))
    bos = tokenizer.bos_token_id
    if bos is not None and getattr(tokenizer, "add_bos_token", False) and prompt_ids[:1] != [bos]:
        prompt_ids = [bos, *prompt_ids]
    if not prompt_ids:
        raise GeomsafeError("an example rendered to an empty prompt")
    response_ids = []
    if example.response is not None:
        # Without a chat template the prompt ends in "Assistant:", so the reply gets a space.
        sep = "" if getattr(tokenizer, "chat_template", None) else " "
        response_ids = _ids(tokenizer, sep + example.response)
    if max_length is not None and len(prompt_ids) + len(response_ids) > max_length:
        keep_r = min(len(response_ids), max(max_length - len(prompt_ids), max_length // 2))
        response_ids = response_ids[:keep_r]
        prompt_ids = prompt_ids[len(prompt_ids) - (max_length - keep_r) :]
    return Encoded(tuple(prompt_ids + response_ids), len(prompt_ids))


def encode_all(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example], max_length: int | None = None
) -> list[Encoded]:
    return [encode(tokenizer, ex, max_length) for ex in examples]
