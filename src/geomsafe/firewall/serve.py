"""`geomsafe serve`: an OpenAI-compatible chat endpoint with the firewall active.

A FastAPI app served by uvicorn (optional dependencies: ``pip install geomsafe[serve]``),
bound to 127.0.0.1 unless told otherwise:

- ``GET /v1/models``: the one model served.
- ``POST /v1/chat/completions``: ``messages`` (system, developer, user and assistant turns;
  text content), ``max_tokens``/``max_completion_tokens``, ``temperature`` (0 = greedy),
  ``top_p``, ``seed``, ``stream``; ``n`` must be 1 and ``stop`` is not supported. Each
  answer is generated under the firewall (:func:`geomsafe.firewall.screening.screen`) and
  carries its scores in the extension field ``geomsafe_firewall`` (mode, blocked, verdict,
  prompt and response scores per check, thresholds, clamped tokens). A blocked answer is the
  firewall's refusal with ``finish_reason`` ``content_filter``. Bad requests get a 400 (404 for
  an unknown model) with an OpenAI-style ``{"error": {...}}`` body.

**Concurrency.** There is one model, so generation is serialised through a queue: every
request is submitted to a single worker thread (a one-thread executor), which runs them one at
a time in arrival order, while the event loop keeps accepting connections and streaming.

**Streaming** (``stream: true``, server-sent events): a token is sent only after the firewall
has scored it (the residual stream of the token, fed back, passed every check), except the last
token of an answer, which the model never reads back. A prompt-stage block sends the refusal
only. A mid-response block ends the stream with ``finish_reason`` ``content_filter``; the text
sent before it stays with the client, so do not stream when no harmful token may leave the
server. When the client disconnects, the generation is cancelled at its next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from geomsafe.config import at_least, in_range, option
from geomsafe.errors import GeomsafeError
from geomsafe.evaluate.generate import SamplingConfig
from geomsafe.firewall.adapter import check_adapter, maybe_adapter
from geomsafe.firewall.config import MODES, Firewall
from geomsafe.firewall.screening import Screened, screen
from geomsafe.formatting import Example, encode
from geomsafe.models import LoadedModel, eos_ids, load

EXTENSION = "geomsafe_firewall"


@dataclass
class Answer:
    """A screened response and the text already streamed from it."""

    screened: Screened
    sent: str = ""


@dataclass(frozen=True)
class ServeConfig:
    """How the server answers (each field's ``metadata["help"]`` says what it sets)."""

    mode: str = option("block", "Firewall mode: monitor, clamp or block.")
    model_name: str | None = option(
        None, "The model id clients use (default: the model spec)."
    )
    max_tokens: int = option(128, "New tokens when a request gives none.")
    max_tokens_limit: int = option(1024, "The most new tokens a request may ask for.")
    temperature: float = option(1.0, "Temperature when a request gives none (0: greedy).")
    top_p: float = option(1.0, "Nucleus mass when a request gives none.")
    seed: int = option(
        0, "Seed when a request gives none; the same request and seed give the same answer."
    )
    refusal: str | None = option(
        None, "Text of a blocked answer (default: the firewall's)."
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise GeomsafeError(f"unknown firewall mode {self.mode!r}; use {', '.join(MODES)}")
        if not 1 <= self.max_tokens <= self.max_tokens_limit:
            raise GeomsafeError(
                f"max_tokens must be in [1, {self.max_tokens_limit}], not {self.max_tokens}"
            )
        at_least(self, 0, "temperature")
        in_range(self, "top_p", 0, 1, open_low=True)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    n: int = 1
    seed: int | None = None
    stream: bool = False
    stop: str | list[str] | None = None


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str | None = None, param=None):
        super().__init__(message)
        self.status, self.code, self.param = status, code, param


class _Cancelled(Exception):
    """Raised inside generation when the client has gone."""


def _error(message: str, status: int, code: str | None = None, param: Any = None):
    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param,
            "code": code,
        }
    }
    return JSONResponse(body, status_code=status)


class Engine:
    """One model behind a one-thread executor: generations run one at a time, in order."""

    def __init__(self, lm: LoadedModel, firewall: Firewall, config: ServeConfig) -> None:
        firewall.check_width(lm.d_model)
        self.lm, self.firewall, self.config = lm, firewall, config
        self.name = config.model_name or lm.spec
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="geomsafe-serve")
        self.stats = {"completed": 0, "cancelled": 0, "blocked": 0}
        self._stop = set(eos_ids(lm.model, lm.tokenizer))
        self._max_positions = int(
            getattr(lm.model.config, "max_position_embeddings", None)
            or getattr(lm.model.config, "n_positions", 0)
            or 0
        )

    def prepare(self, req: ChatRequest) -> tuple[Example, SamplingConfig, int]:
        if req.model != self.name:
            raise BadRequest(
                f"model {req.model!r} not found; this server has {self.name!r}",
                404,
                "model_not_found",
                "model",
            )
        if req.n != 1:
            raise BadRequest("only n=1 is supported", param="n")
        if req.stop is not None:
            raise BadRequest("stop sequences are not supported", param="stop")
        if req.messages[-1].role == "assistant":
            raise BadRequest("the last message must not be the assistant's", param="messages")
        roles = {"developer": "system"}
        turns = tuple(
            {"role": roles.get(m.role, m.role), "content": m.text()} for m in req.messages
        )
        example = Example(turns)
        try:
            n_prompt = len(encode(self.lm.tokenizer, example).input_ids)
        except Exception as exc:  # an empty prompt, a chat template that rejects the turns
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            message = f"could not render the messages: {first[:200]}"
            raise BadRequest(message, param="messages") from exc

        limit = self.config.max_tokens_limit
        max_new = req.max_completion_tokens or req.max_tokens or self.config.max_tokens
        if max_new > limit:
            raise BadRequest(f"max_tokens must be at most {limit}", param="max_tokens")
        if self._max_positions and n_prompt + max_new > self._max_positions:
            raise BadRequest(
                f"prompt ({n_prompt} tokens) plus max_tokens ({max_new}) exceeds the model's "
                f"context of {self._max_positions} tokens",
                param="messages",
            )
        temperature = self.config.temperature if req.temperature is None else req.temperature
        sampling = SamplingConfig(
            samples_per_prompt=1,
            max_new_tokens=max_new,
            temperature=temperature,
            top_p=self.config.top_p if req.top_p is None else req.top_p,
            batch_size=1,
            seed=self.config.seed if req.seed is None else req.seed,
        )
        return example, sampling, n_prompt

    def submit(
        self,
        example: Example,
        sampling: SamplingConfig,
        cancel: threading.Event | None = None,
        emit=None,
    ) -> Future:
        return self.executor.submit(self._run, example, sampling, cancel, emit)

    def _run(self, example, sampling, cancel, emit) -> Answer:
        if cancel is not None and cancel.is_set():
            self.stats["cancelled"] += 1
            raise _Cancelled
        ids: list[int] = []
        sent = [""]
        tok = self.lm.tokenizer

        def on_step(session, input_ids) -> None:
            if cancel is not None and cancel.is_set():
                raise _Cancelled
            trace = session.last
            if emit is None or len(trace.steps) < 2 or input_ids is None:
                return  # the prompt pass: nothing generated yet
            if trace.verdicts[0] is not None and session.mode == "block":
                return
            token = int(input_ids[0, -1])
            if token in self._stop:
                return
            ids.append(token)
            text = str(tok.decode(ids, skip_special_tokens=True)).lstrip()
            if text.endswith("\ufffd") or not text.startswith(sent[0]):
                return
            if len(text) > len(sent[0]):
                emit(text[len(sent[0]) :])
                sent[0] = text

        try:
            (result,) = screen(
                self.lm,
                self.firewall,
                [example],
                self.config.mode,
                sampling,
                refusal=self.config.refusal,
                progress=False,
                on_step=on_step,
            )
        except _Cancelled:
            self.stats["cancelled"] += 1
            raise
        self.stats["completed"] += 1
        self.stats["blocked"] += int(result.blocked)
        return Answer(result, sent[0])

    def report(self, s: Screened) -> dict[str, Any]:
        """The ``geomsafe_firewall`` field of an answer."""
        kept = ("blocked", "verdict", "prompt_score", "response_score", "prompt_scores")
        record = s.to_dict(self.firewall.keys, tokens=False)
        return {
            "mode": self.config.mode,
            **{k: record[k] for k in kept},
            "response_max": record["response_max"],
            "thresholds": self.firewall.thresholds(),
            "n_clamped": s.n_clamped,
        }


def _finish(s: Screened) -> str:
    return {"blocked": "content_filter", "length": "length"}.get(s.finish, "stop")


def create_app(lm: LoadedModel, firewall: Firewall, config: ServeConfig | None = None):
    """The FastAPI app serving ``lm`` under ``firewall`` (see the module docstring)."""
    engine = Engine(lm, firewall, config or ServeConfig())

    @contextlib.asynccontextmanager
    async def lifespan(_app) -> AsyncIterator[None]:
        try:
            yield
        finally:
            engine.executor.shutdown(wait=True, cancel_futures=True)

    app = FastAPI(title="geomsafe firewall", lifespan=lifespan)
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return _error(f"invalid request: {loc + ': ' if loc else ''}{first['msg']}", 400, None, loc)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        return _error(str(exc.detail), exc.status_code)

    @app.exception_handler(BadRequest)
    async def bad(_request: Request, exc: BadRequest):
        return _error(str(exc), exc.status, exc.code, exc.param)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "geomsafe"}],
        }

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest):
        example, sampling, n_prompt = engine.prepare(req)
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return StreamingResponse(
                _stream(engine, example, sampling, cid, created, n_prompt),
                media_type="text/event-stream",
            )
        try:
            s = (await asyncio.wrap_future(engine.submit(example, sampling))).screened
        except GeomsafeError as exc:
            raise BadRequest(str(exc)) from exc
        return {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": engine.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": s.response},
                    "finish_reason": _finish(s),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": n_prompt,
                "completion_tokens": s.n_tokens,
                "total_tokens": n_prompt + s.n_tokens,
            },
            EXTENSION: engine.report(s),
        }

    return app


async def _stream(
    engine: Engine, example: Example, sampling: SamplingConfig, cid: str, created: int, n: int
) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str] = asyncio.Queue()
    cancel = threading.Event()

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": engine.name,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {json.dumps(body)}\n\n"

    future = engine.submit(
        example, sampling, cancel, lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
    )
    done = asyncio.wrap_future(future)
    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            getter = asyncio.ensure_future(queue.get())
            await asyncio.wait({getter, done}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield chunk({"content": getter.result()})
                continue
            getter.cancel()
            break
        while not queue.empty():
            yield chunk({"content": queue.get_nowait()})
        try:
            answer = done.result()
        except Exception as exc:  # the generation failed: say so in the stream
            error = {"error": {"message": str(exc), "type": "server_error"}}
            yield f"data: {json.dumps(error)}\n\n"
            return
        s, sent = answer.screened, answer.sent
        rest = ""
        if s.blocked and not sent:
            rest = s.response
        elif not s.blocked and s.response.startswith(sent):
            rest = s.response[len(sent) :]
        if rest:
            yield chunk({"content": rest})
        usage = {
            "prompt_tokens": n,
            "completion_tokens": s.n_tokens,
            "total_tokens": n + s.n_tokens,
        }
        yield chunk({}, _finish(s), usage=usage, **{EXTENSION: engine.report(s)})
        yield "data: [DONE]\n\n"
    finally:
        cancel.set()  # the client is gone (or the answer is complete): stop generating
        done.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieve it


def start_server(app, host: str = "127.0.0.1", port: int = 0):
    """Run ``app`` with uvicorn in a background thread; returns ``(server, port, thread)``.
    ``port=0`` picks a free port. Stop it with ``server.should_exit = True``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if not thread.is_alive() or time.time() > deadline:
            raise GeomsafeError("the server did not start")
        time.sleep(0.02)
    return server, sock.getsockname()[1], thread


def serve(
    model: str | LoadedModel,
    firewall: str | Path | Firewall,
    *,
    adapter: str | Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    config: ServeConfig | None = None,
) -> None:
    """Serve ``model`` (with ``adapter``) under ``firewall`` until interrupted."""

    fw = firewall if isinstance(firewall, Firewall) else Firewall.load(firewall)
    check_adapter(adapter)
    lm = model if isinstance(model, LoadedModel) else load(model)
    with maybe_adapter(lm, adapter):
        app = create_app(lm, fw, config)
        uvicorn.run(app, host=host, port=port, log_level="info")
