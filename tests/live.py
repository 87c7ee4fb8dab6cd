"""A live moeweave server on loopback for the tests: uvicorn in a thread, serving on a socket
bound and listening before the thread starts, so a client's first connection waits in the
backlog instead of racing the server's start."""

import contextlib
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import uvicorn


@contextlib.contextmanager
def live_server(app):
    """Yields the base URL ("http://127.0.0.1:PORT/v1") while `app` serves on it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


def wait_for(predicate, timeout: float = 120.0) -> None:
    """Until predicate() holds; the timeout only ends a hung test, it judges no speed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition never held")
        threading.Event().wait(0.01)


def post(url: str, body: bytes | dict) -> tuple[int, dict]:
    """POSTs JSON (or raw bytes) without the openai client: (status, parsed body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=300) as response:
        return response.read().decode()
