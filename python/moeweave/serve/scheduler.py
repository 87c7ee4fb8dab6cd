"""Continuous (iteration-level) batching: one thread runs the model a step at a time over every
running request (moeweave.serve.ragged), new requests joining and finished ones leaving between
steps, each request with its own KV cache, adapter, sampling and stop rules. Requests wait in a
bounded queue (QueueFull when it is full: the server answers 429). Adapters are loaded and
unloaded between steps; an adapter being unloaded takes no new request, and goes once the
requests on it have finished, so no request ever mixes two adapters' weights.

A failed step fails the requests in it, not the scheduler; a request whose adapter was unloaded
while it waited fails cleanly when it would join.
"""

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from moeweave.adapters import BASE, AdapterSet, EsftAdapter
from moeweave.models.generate import TextStream, next_token
from moeweave.serve.ragged import Chunk, forward_chunks

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """The scheduler's waiting queue is full."""


class UnknownModel(KeyError):
    """No such adapter is loaded (or it is being unloaded)."""


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


@dataclass
class Event:
    """What a request's sink receives: text pieces, then one "done" (finish_reason "stop" or
    "length") or "error" (message)."""

    kind: str  # "text", "done" or "error"
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Request:
    prompt: list[int]
    sampling: Sampling
    sink: Callable[[Event], None]  # called on the scheduler thread
    adapter: str | None = None  # None: the base model
    cancelled: threading.Event = field(default_factory=threading.Event)
    tokens: list[int] = field(default_factory=list)
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    # Set when the request joins the batch:
    chunk: Chunk | None = None
    stream: TextStream | None = None
    generator: torch.Generator | None = None
    text: str = ""  # generated so far
    sent: int = 0  # characters of `text` sent to the sink

    def cancel(self) -> None:
        """Stops the request at the next step (a client that went away); its slot is freed."""
        self.cancelled.set()


class Scheduler:
    def __init__(
        self,
        model,
        max_context: int,
        adapters: AdapterSet | None = None,
        max_batch: int = 32,
        max_queue: int = 64,
        on_step: Callable[["Scheduler", int], None] | None = None,
    ):
        """max_context: tokens a sequence may reach (config.json's max_position_embeddings);
        on_step(scheduler, requests): after each step (metrics)."""
        self.model, self.adapters = model, adapters
        self.max_batch, self.max_context = max_batch, max_context
        self.on_step = on_step
        self._waiting: queue.Queue = queue.Queue(maxsize=max_queue)
        self._commands: queue.Queue = queue.Queue()
        self._wake = threading.Semaphore(0)
        self.running: list[Request] = []
        self._draining: dict[str, Future] = {}  # adapters to unload once idle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="moeweave-scheduler", daemon=True)
        eos = model.eos_token_id
        self._eos = set(eos) if isinstance(eos, list) else {eos}

    def start(self) -> "Scheduler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.release()
        self._thread.join()

    @property
    def waiting(self) -> int:
        return self._waiting.qsize()

    def models(self) -> list[str]:
        """The adapters that take requests."""
        return [] if self.adapters is None else sorted(set(self.adapters.index) - set(self._draining))

    def submit(self, request: Request) -> None:
        """Queues a request; QueueFull when the queue is full, UnknownModel for an adapter that is
        not loaded, ValueError for a prompt longer than the context."""
        if request.adapter is not None and request.adapter not in self.models():
            raise UnknownModel(request.adapter)
        if not request.prompt:
            raise ValueError("the prompt is empty")
        if len(request.prompt) + request.sampling.max_tokens > self.max_context:
            raise ValueError(
                f"the prompt ({len(request.prompt)} tokens) plus max_tokens ({request.sampling.max_tokens}) "
                f"exceed the model's context of {self.max_context} tokens"
            )
        try:
            self._waiting.put_nowait(request)
        except queue.Full:
            raise QueueFull(f"{self._waiting.maxsize} requests are already waiting") from None
        self._wake.release()

    def load_adapter(self, adapter: EsftAdapter) -> Future:
        """Loads between steps; the future gives the adapter's id or its error."""
        return self._command("load", adapter)

    def unload_adapter(self, name: str) -> Future:
        """Stops new requests for `name` now; unloads once its requests, running or waiting,
        have finished."""
        return self._command("unload", name)

    def _command(self, kind: str, argument) -> Future:
        if self.adapters is None:
            raise ValueError("this scheduler serves no adapters")
        future: Future = Future()
        self._commands.put((kind, argument, future))
        self._wake.release()
        return future

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._run_commands()
                self._admit()
                self._drop_cancelled()
                self._unload_idle()
                if not self.running:
                    self._wake.acquire()  # until a request or a command comes
                    continue
                self._step()
            except Exception:  # a bug must not stop the server: the running requests fail
                log.exception("scheduler: a step failed outside the model")
                for request in list(self.running):
                    self._finish(request, Event("error", text="internal error"))

    def _run_commands(self) -> None:
        while True:
            try:
                kind, argument, future = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "load":
                    if argument.name in self._draining:
                        raise ValueError(f"adapter {argument.name!r} is being unloaded")
                    future.set_result(self.adapters.load(argument))
                elif argument not in self.adapters.index or argument in self._draining:
                    raise UnknownModel(argument)
                else:
                    self._draining[argument] = future
            except Exception as error:  # reported to the caller; the scheduler goes on
                future.set_exception(error)

    def _unload_idle(self) -> None:
        if not self._draining:  # every step passes here: nothing to look at most of the time
            return
        with self._waiting.mutex:  # requests accepted for a draining adapter finish on it too
            waiting = list(self._waiting.queue)
        busy = {request.adapter for request in [*self.running, *waiting] if not request.cancelled.is_set()}
        for name in [name for name in self._draining if name not in busy]:
            self.adapters.unload(name)
            self._draining.pop(name).set_result(None)

    def _admit(self) -> None:
        while len(self.running) < self.max_batch:
            try:
                request = self._waiting.get_nowait()
            except queue.Empty:
                return
            if request.cancelled.is_set():
                continue
            if request.adapter is not None and request.adapter not in self.adapters.index:
                self._emit(request, Event("error", text=f"adapter {request.adapter!r} was unloaded"))
                continue
            adapter = BASE if request.adapter is None else self.adapters.index[request.adapter]
            request.chunk = Chunk(list(request.prompt), adapter=adapter)
            # Without a tokenizer (token-level use: benchmarks) there is no text and no stop string.
            request.stream = None if self.model.tokenizer is None else TextStream(self.model.tokenizer)
            if request.sampling.seed is not None:
                request.generator = torch.Generator().manual_seed(request.sampling.seed)
            self.running.append(request)

    def _drop_cancelled(self) -> None:
        self.running = [request for request in self.running if not request.cancelled.is_set()]

    def _step(self) -> None:
        batch = list(self.running)
        try:
            logits = forward_chunks(self.model, [request.chunk for request in batch])
        except Exception as error:  # this step's requests fail; the server keeps serving
            for request in batch:
                self._finish(request, Event("error", text=f"{type(error).__name__}: {error}"))
            return
        for request, row in zip(batch, logits, strict=True):
            sampling = request.sampling
            token = next_token(row, sampling.temperature, sampling.top_k, sampling.top_p, request.generator)
            request.first_token = request.first_token or time.perf_counter()
            request.tokens.append(token)
            request.chunk.ids = [token]
            if token in self._eos:
                self._finish(request, self._done(request, "stop"))
                continue
            if request.stream is not None:
                request.text += request.stream.push(token)
            if self._stopped_by_string(request):
                continue
            if len(request.tokens) >= sampling.max_tokens:
                self._finish(request, self._done(request, "length"))
                continue
            # Hold back a tail that may begin a stop string.
            hold = max((len(stop) - 1 for stop in sampling.stop), default=0)
            self._send(request, len(request.text) - hold)
        if self.on_step is not None:
            self.on_step(self, len(batch))

    def _stopped_by_string(self, request: Request) -> bool:
        found = [request.text.find(stop) for stop in request.sampling.stop if stop]
        found = [at for at in found if at >= 0]
        if not found:
            return False
        request.text = request.text[: min(found)]
        self._finish(request, self._done(request, "stop"))
        return True

    def _send(self, request: Request, upto: int) -> None:
        if upto > request.sent:
            self._emit(request, Event("text", text=request.text[request.sent : upto]))
            request.sent = upto

    def _done(self, request: Request, reason: str) -> Event:
        self._send(request, len(request.text))
        return Event("done", finish_reason=reason, prompt_tokens=len(request.prompt),
                     completion_tokens=len(request.tokens))  # fmt: skip

    def _finish(self, request: Request, event: Event) -> None:
        self.running.remove(request)
        self._emit(request, event)

    @staticmethod
    def _emit(request: Request, event: Event) -> None:
        """Hands an event to the request's sink; a sink that fails (its client's event loop has
        closed) cancels that request only."""
        try:
            request.sink(event)
        except Exception:
            request.cancel()
