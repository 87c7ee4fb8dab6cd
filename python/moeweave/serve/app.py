"""The OpenAI-compatible HTTP API (FastAPI; server-sent events for streaming) over the
continuous-batching scheduler: /v1/models, /v1/completions, /v1/chat/completions, adapter
loading and unloading, /metrics (Prometheus) and /health. The `model` field picks the base or an
adapter; errors come in OpenAI's shape ({"error": {"message", "type", "param", "code"}}).
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from moeweave.adapters import AdapterError, load_esft
from moeweave.models.prompting import render_chat
from moeweave.serve.metrics import Metrics
from moeweave.serve.scheduler import Event, QueueFull, Sampling, Scheduler, UnknownModel
from moeweave.serve.scheduler import Request as Job


class _Generation(BaseModel):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0)  # vLLM's extension; 0: off
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: dict | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class CompletionBody(_Generation):
    prompt: str | list[str]


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatBody(_Generation):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class AdapterBody(BaseModel):
    lora_name: str = Field(min_length=1)
    lora_path: str | None = None


def openai_error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None):
    body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
    return JSONResponse(body, status_code=status)


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.kind, self.code = status, message, kind, code


def no_such_model(model: str) -> ApiError:
    return ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model_not_found")


def key_refused(request: Request, api_key: str | None) -> ApiError | None:
    """The 401 for a request without the server's bearer token (None: it may pass)."""
    if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
        return ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error",
                        "invalid_api_key")  # fmt: skip
    return None


def model_cards(base_name: str, adapters: list[str]) -> dict:
    """/v1/models: the base, then each adapter with the base as its parent."""
    created = int(time.time())
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": "moeweave", "root": name,
         "parent": None if name == base_name else base_name}
        for name in [base_name, *adapters]
    ]}  # fmt: skip


def create_app(
    scheduler: Scheduler,
    base_name: str,
    base_dir: Path,
    api_key: str | None = None,
    adapter_dir: Path | None = None,
) -> FastAPI:
    """base_dir: the base checkpoint (its chat template); adapter_dir: where load_adapter may
    read from (None: loading over HTTP is off)."""
    app = FastAPI(title="moeweave", docs_url=None, redoc_url=None)
    metrics = Metrics()
    tokenizer = scheduler.model.tokenizer
    app.state.metrics = metrics

    def on_step(sched: Scheduler, requests: int) -> None:
        metrics.step_requests.observe(requests)
        metrics.running.set(len(sched.running))
        metrics.waiting.set(sched.waiting)

    scheduler.on_step = on_step

    @app.exception_handler(ApiError)
    async def api_error(_, error: ApiError):
        return openai_error(error.status, error.message, error.kind, error.code)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, error: RequestValidationError):
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        return openai_error(400, f"{where}: {first.get('msg', 'invalid request')}" if where else str(error))

    @app.exception_handler(HTTPException)
    async def http_error(_, error: HTTPException):
        return openai_error(error.status_code, str(error.detail))

    async def authorised(request: Request) -> None:
        if refused := key_refused(request, api_key):
            raise refused

    guarded = [Depends(authorised)]

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        metrics.waiting.set(scheduler.waiting)
        metrics.running.set(len(scheduler.running))
        if scheduler.adapters is not None:
            metrics.adapter_bytes.set(scheduler.adapters.resident_bytes())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", dependencies=guarded)
    async def models():
        return model_cards(base_name, scheduler.models())

    def adapter_of(model: str) -> str | None:
        if model == base_name:
            return None
        if model not in scheduler.models():
            raise no_such_model(model)
        return model

    def sampling(body: _Generation, max_tokens: int | None, prompt: list[int]) -> Sampling:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        limit = max_tokens if max_tokens is not None else scheduler.max_context - len(prompt)
        return Sampling(max(1, limit), body.temperature, body.top_k, body.top_p, body.seed, stop)

    async def run(
        body: _Generation, prompt_text: str, max_tokens: int | None, render, http: Request
    ) -> Response:
        adapter = adapter_of(body.model)
        prompt = tokenizer.encode(prompt_text).ids
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        job = Job(prompt, sampling(body, max_tokens, prompt), lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
                  adapter)  # fmt: skip
        try:
            scheduler.submit(job)
        except QueueFull as error:
            raise ApiError(429, f"server busy: {error}", "rate_limit_error") from None
        except UnknownModel:
            raise no_such_model(body.model) from None
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        metrics.waiting.set(scheduler.waiting)
        ident = f"{render.prefix}-{uuid.uuid4().hex}"
        if body.stream:
            usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(
                stream(job, events, ident, body.model, render, usage), media_type="text/event-stream"
            )
        collecting = asyncio.ensure_future(collect(events))
        leaving = asyncio.ensure_future(disconnected(http))
        try:
            await asyncio.wait({collecting, leaving}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            leaving.cancel()
            gone = not collecting.done()
            if gone:  # the client went away (or this handler was cancelled): free its slot
                job.cancel()
                collecting.cancel()
                record(job, body.model, None)
        if gone:
            return Response(status_code=499)  # nobody reads it
        text, done = collecting.result()
        record(job, body.model, done)
        if done.kind == "error":
            raise ApiError(500, done.text, "server_error")
        return render.whole(ident, body.model, text, done)

    async def disconnected(http: Request) -> None:
        """Returns once the client has gone (the body is read, so the next message is that)."""
        while (await http.receive())["type"] != "http.disconnect":
            pass

    async def collect(events: asyncio.Queue) -> tuple[str, Event]:
        pieces = []
        while True:
            event = await events.get()
            if event.kind == "text":
                pieces.append(event.text)
            else:
                return "".join(pieces), event

    async def stream(job: Job, events, ident, model, render, usage) -> AsyncIterator[str]:
        done = None
        role = render is CHAT  # the assistant's role comes first, as OpenAI sends it
        try:
            while True:
                event = await events.get()
                # With the first event, not before: until then nothing has left, and a server in
                # front (moeweave serve --ray) may still send the request elsewhere.
                if role:
                    role = False
                    yield sse(render.chunk(ident, model, "", None, first=True))
                if event.kind == "text":
                    yield sse(render.chunk(ident, model, event.text, None))
                    continue
                done = event
                if event.kind == "error":
                    yield sse(
                        {
                            "error": {
                                "message": event.text,
                                "type": "server_error",
                                "param": None,
                                "code": None,
                            }
                        }
                    )
                else:
                    yield sse(render.chunk(ident, model, "", event.finish_reason))
                    if usage:
                        yield sse(
                            {**render.chunk(ident, model, "", None), "choices": [], "usage": usage_of(event)}
                        )
                yield "data: [DONE]\n\n"
                return
        finally:
            job.cancel()  # the client went away mid-stream: free its slot
            record(job, model, done)

    def record(job: Job, model: str, done: Event | None) -> None:
        outcome = "cancelled" if done is None else ("error" if done.kind == "error" else "ok")
        metrics.requests.labels(model, outcome).inc()
        metrics.prompt_tokens.labels(model).inc(len(job.prompt))
        metrics.generated_tokens.labels(model).inc(len(job.tokens))
        if done is not None and done.kind == "done":
            metrics.latency.labels(model).observe(time.perf_counter() - job.submitted)
            if job.first_token is not None:
                metrics.first_token.labels(model).observe(job.first_token - job.submitted)

    @app.post("/v1/completions", dependencies=guarded)
    async def completions(body: CompletionBody, http: Request):
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise ApiError(400, "prompt: one prompt per request")
        return await run(
            body, prompts[0], body.max_tokens if body.max_tokens is not None else 16, COMPLETION, http
        )

    @app.post("/v1/chat/completions", dependencies=guarded)
    async def chat(body: ChatBody, http: Request):
        try:
            prompt = render_chat(base_dir, [m.model_dump() for m in body.messages])
        except ValueError as error:
            raise ApiError(400, str(error)) from None
        return await run(body, prompt, body.max_completion_tokens or body.max_tokens, CHAT, http)

    @app.post("/v1/load_adapter", dependencies=guarded)
    async def load_adapter(body: AdapterBody):
        if adapter_dir is None:
            raise ApiError(403, "loading adapters over HTTP is off: start the server with --adapter-dir")
        if body.lora_path is None:
            raise ApiError(400, "lora_path: required")
        root = adapter_dir.resolve()
        path = (root / body.lora_path).resolve()
        if not path.is_relative_to(root):
            raise ApiError(400, f"lora_path: {body.lora_path!r} lies outside the adapter directory")
        if body.lora_name == base_name:
            raise ApiError(400, f"lora_name: {base_name!r} is the base model's name")
        try:
            adapter = await asyncio.to_thread(load_esft, path, scheduler.model.spec, body.lora_name)
            await asyncio.wrap_future(scheduler.load_adapter(adapter))
        except (AdapterError, ValueError, OSError) as error:
            raise ApiError(400, str(error)) from None
        metrics.adapter_loaded.labels(body.lora_name).set(1)
        return {"status": "ok", "model": body.lora_name}

    @app.post("/v1/unload_adapter", dependencies=guarded)
    async def unload_adapter(body: AdapterBody):
        try:
            await asyncio.wrap_future(scheduler.unload_adapter(body.lora_name))
        except UnknownModel:
            raise no_such_model(body.lora_name) from None
        metrics.adapter_loaded.labels(body.lora_name).set(0)
        return {"status": "ok", "model": body.lora_name}

    return app


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def usage_of(done: Event) -> dict:
    return {"prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
            "total_tokens": done.prompt_tokens + done.completion_tokens}  # fmt: skip


class _Completion:
    prefix = "cmpl"

    @staticmethod
    def whole(ident, model, text, done) -> dict:
        return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": done.finish_reason}],
                "usage": usage_of(done)}  # fmt: skip

    @staticmethod
    def chunk(ident, model, text, finish_reason, first=False) -> dict:
        return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}]}  # fmt: skip


class _Chat:
    prefix = "chatcmpl"

    @staticmethod
    def whole(ident, model, text, done) -> dict:
        message = {"role": "assistant", "content": text}
        return {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": done.finish_reason}],
                "usage": usage_of(done)}  # fmt: skip

    @staticmethod
    def chunk(ident, model, text, finish_reason, first=False) -> dict:
        delta = (
            {"role": "assistant", "content": ""}
            if first
            else ({"content": text} if finish_reason is None else {})
        )
        return {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}  # fmt: skip


COMPLETION, CHAT = _Completion(), _Chat()
