from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from geomsafe.firewall.serve import EXTENSION, ServeConfig, create_app, start_server  # noqa: E402
from geomsafe.testing import tiny_firewall, tiny_model  # noqa: E402


@pytest.fixture
def server():
    """Start servers on 127.0.0.1 (free ports); yields a factory ``(mode, tau) -> (client,
    engine, base_url)``; every server is stopped at the end."""
    started = []

    def make(mode: str = "monitor", tau: float = 0.5, slow: float = 0.0):
        lm = tiny_model("llama")
        if slow:
            lm.model.register_forward_pre_hook(lambda *_: time.sleep(slow))
        app = create_app(
            lm,
            tiny_firewall(lm.d_model, tau, layer=1).select(["harmful_request", "pow"]),
            ServeConfig(mode=mode, max_tokens=12),
        )
        srv, port, thread = start_server(app, "127.0.0.1", 0)
        started.append((srv, thread))
        base = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=60)
        return client, app.state.engine, base

    yield make
    for srv, thread in started:
        srv.should_exit = True
        thread.join(timeout=10)


def _ask(client, text: str, **kw):
    return client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": text}], **kw
    )


def test_models_and_a_completion_with_firewall_scores(server):
    client, _, _ = server("monitor")
    assert [m.id for m in client.models.list().data] == ["tiny-llama"]
    out = _ask(client, "Say hello.", max_tokens=8, temperature=0)
    choice = out.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert out.usage.completion_tokens <= 8 and out.usage.prompt_tokens > 0
    fw = out.model_extra[EXTENSION]
    assert fw["mode"] == "monitor" and fw["blocked"] is False
    assert set(fw["prompt_scores"]) == {"harmful_request@1", "pow@2"}
    assert set(fw["thresholds"]) == set(fw["prompt_scores"])


def test_concurrent_requests_match_sequential_ones(server):
    client, engine, _ = server("clamp", tau=0.0)
    questions = [f"Question number {i}?" for i in range(8)]

    def ask(i: int):
        out = _ask(client, questions[i], max_tokens=10, seed=i)
        return out.choices[0].message.content, out.model_extra[EXTENSION]["prompt_scores"]

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, range(8)))
    one_by_one = [ask(i) for i in range(8)]
    assert together == one_by_one
    assert engine.stats["completed"] == 16


def test_malformed_requests_get_a_clear_4xx(server):
    client, _, base = server("monitor")
    r = httpx.post(f"{base}/chat/completions", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "invalid request" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/chat/completions", json={"model": "tiny-llama"}, timeout=30)
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="only n=1"):
        _ask(client, "hi", n=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        _ask(client, "hi", temperature=-1)
    with pytest.raises(openai.BadRequestError, match="assistant"):
        client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "assistant", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        _ask(client, "hi", max_tokens=5000)
    with pytest.raises(openai.NotFoundError, match="not found"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert httpx.get(f"{base}/nothing", timeout=30).status_code == 404


def test_block_answers_with_the_refusal_and_the_reason(server):
    client, engine, _ = server("block", tau=-1e9)
    out = _ask(client, "Anything at all.", max_tokens=8)
    assert out.choices[0].message.content == engine.firewall.refusal
    assert out.choices[0].finish_reason == "content_filter"
    verdict = out.model_extra[EXTENSION]["verdict"]
    assert verdict["stage"] == "prompt" and verdict["concept"] in ("harmful_request", "pow")
    assert verdict["score"] > verdict["threshold"]


def test_stream_matches_the_plain_answer(server):
    client, _, _ = server("monitor")
    plain = _ask(client, "Tell me something.", max_tokens=12, temperature=0)
    parts, last = [], None
    for chunk in _ask(client, "Tell me something.", max_tokens=12, temperature=0, stream=True):
        parts.append(chunk.choices[0].delta.content or "")
        last = chunk
    assert "".join(parts) == plain.choices[0].message.content
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert (
        last.model_extra[EXTENSION]["prompt_scores"]
        == (plain.model_extra[EXTENSION]["prompt_scores"])
    )


def test_client_disconnect_mid_stream_cancels_the_generation(server):
    client, engine, _ = server("monitor", slow=0.03)  # 300 tokens would take ~9 s
    stream = _ask(client, "Go on and on.", max_tokens=300, temperature=1.0, stream=True)
    for i, _chunk in enumerate(stream):
        if i == 3:
            break
    stream.close()
    t0 = time.time()
    while engine.stats["cancelled"] == 0 and time.time() - t0 < 8:
        time.sleep(0.05)
    assert engine.stats["cancelled"] == 1 and engine.stats["completed"] == 0
    out = _ask(client, "Still there?", max_tokens=3)  # the worker is free again
    assert out.usage.completion_tokens <= 3
