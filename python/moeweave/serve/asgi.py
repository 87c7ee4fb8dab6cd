"""One HTTP request through an ASGI app inside this process, its response streamed back piece by
piece: how a Ray Serve replica answers a request its gateway forwards, with the same app (routes,
validation, server-sent events, errors) as `moeweave serve` on one machine. The app sees a
client disconnect when the caller stops reading, as it would from uvicorn, and frees the
request's slot."""

import asyncio
import logging
from collections.abc import AsyncIterator


async def call(app, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> AsyncIterator:
    """Yields (status, headers) once, then the body's chunks (bytes) as the app sends them."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 0),
    }
    messages: asyncio.Queue = asyncio.Queue()
    gone = asyncio.Event()
    request = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        if request:
            return request.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await messages.put(None)  # the app returned or raised: no more messages

    task = asyncio.ensure_future(run())
    started = False
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                started = True
                yield (
                    message["status"],
                    [(k.decode("latin-1"), v.decode("latin-1")) for k, v in message["headers"]],
                )
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        try:
            await task
        except Exception:
            if not started:
                raise  # no response carries it: the caller answers for it
            # The app answered it (Starlette sends a 500, then re-raises): keep it in the log.
            logging.getLogger(__name__).exception("%s %s failed after its response started", method, path)
    finally:
        gone.set()
        if not task.done():
            await asyncio.wait({task}, timeout=5)  # let the app see the disconnect and clean up
            task.cancel()
