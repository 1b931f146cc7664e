from __future__ import annotations

import torch

from geomsafe.evaluate.logodds import response_logps
from geomsafe.formatting import Example, encode
from geomsafe.predict.likelihood import length_batches
from geomsafe.testing import tiny_model


def _data(text: str, n: int = 6) -> list[Example]:
    return [Example(f"hello {i}", text * (1 + i % 3)) for i in range(n)]


def test_response_positions_only_equal_the_full_logits():
    lm = tiny_model("qwen2")
    data = _data("you idiot ") + [Example("a longer prompt here", "x")]
    enc = [encode(lm.tokenizer, ex, 256) for ex in data]
    tail = response_logps(lm, enc)
    full = []
    for e in enc:
        ids = torch.tensor([list(e.input_ids)])
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0].float(), -1)
        t = torch.arange(e.prompt_len, e.length)
        full.append(logp[t - 1, ids[0, t]].sum())
    assert torch.allclose(tail, torch.stack(full), atol=1e-4)


def test_batches_respect_the_token_budget():
    lm = tiny_model("llama")
    enc = [encode(lm.tokenizer, Example(f"q{i}", "ab " * (2 + 5 * i)), 256) for i in range(6)]
    free = list(length_batches(enc, 4))
    capped = list(length_batches(enc, 4, max_tokens=60))
    assert sorted(i for b in capped for i in b) == list(range(6))
    assert all(len(b) * enc[b[0]].length <= 60 or len(b) == 1 for b in capped)
    assert len(capped) > len(free) and all(len(b) <= 4 for b in capped)
