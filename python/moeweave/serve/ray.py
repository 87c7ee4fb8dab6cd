"""`moeweave serve --ray`: the OpenAI-compatible server as a Ray Serve application, for when one
machine is not enough. N replicas each hold the base model, a scheduler and an expert pool
(exactly `moeweave serve`'s app, run in the replica's process); a gateway takes the HTTP requests.

- Adapter affinity: the gateway reads the request's `model` and sends it with that adapter as
  Ray Serve's multiplexed model id. Ray's router prefers a replica that already holds the adapter;
  when those are saturated it picks another, which loads the adapter into its pool; a replica
  holding `max_adapters` evicts its least recently used one first (Ray Serve's model
  multiplexing, https://docs.ray.io/en/latest/serve/model-multiplexing.html), and unloads it
  once no request there, queued or running, still uses it.
- Autoscaling by queue depth: with max_replicas > replicas, Ray Serve adds replicas while more
  than `max_batch` requests per replica are in flight and removes them when idle.
- A replica that dies: a request it held that had not begun its response (a non-streaming one
  still generating, a streaming one before its first token) is sent again to another replica;
  Ray Serve starts a replacement. A stream already under way ends with an error event.

Adapters are the --adapter NAME=PATH and --adapter-dir DIR ones; their paths must be readable
from every node. /metrics is the gateway's (requests, retries, latency); Ray Serve exports each
replica's own metrics through Ray's metrics endpoint.
"""

import asyncio
import collections
import functools
import json
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from moeweave.serve import asgi
from moeweave.serve.app import ApiError, key_refused, model_cards, no_such_model, openai_error, sse
from moeweave.serve.metrics import LATENCY_BUCKETS

# Sending a request to another replica after its replica died, at most this many times.
ATTEMPTS = 3
REPLICA_HEADER = "x-moeweave-replica"


def application(base: Path, adapters: dict[str, Path], experts: str = "int4", max_adapters: int = 16,
                max_batch: int = 32, max_queue: int = 64, replicas: int = 1, max_replicas: int | None = None,
                api_key: str | None = None, memory_budget: str | None = None):  # fmt: skip
    """The Ray Serve application (bind()-ed gateway over the replicas) for serve.run."""
    autoscaling = {
        "min_replicas": replicas,
        "max_replicas": max_replicas,
        "target_ongoing_requests": max_batch,
    }
    scaling = (
        {"num_replicas": replicas}
        if max_replicas is None or max_replicas <= replicas
        else {"autoscaling_config": autoscaling}
    )

    # num_cpus=0: a replica's compute threads are its own business; Ray's CPU accounting would
    # otherwise refuse more replicas than cores, which is what small machines and tests have.
    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=max_batch + max_queue,
                      max_queued_requests=max_queue, **scaling)  # fmt: skip
    class Replica:
        def __init__(self):
            from moeweave.cpu import keep_freed_memory
            from moeweave.serve.server import build

            keep_freed_memory()  # as the moeweave command does in its own process
            # An adapter Ray evicts stays until its requests here have finished, so the pool has
            # room for twice the adapters Ray keeps; a load that finds every place taken (by
            # evicted adapters still answering) waits for an unload to finish.
            self.places = 2 * max_adapters
            self.app, self.scheduler = build(base, [], None, None, experts, self.places, max_batch,
                                             max_queue, memory_budget)  # fmt: skip
            self.kept: set[str] = set()  # adapters Ray's multiplexing keeps here
            self.loaded: set[str] = set()  # adapters in this replica's scheduler
            self.loading = 0  # places taken by loads under way
            self.unloading: dict[str, Future] = {}
            self.place_freed = asyncio.Condition()
            # Requests per adapter here, from the adapter's load to the request's end.
            self.requests: collections.Counter = collections.Counter()

        @serve.multiplexed(max_num_models_per_replica=max_adapters)
        async def adapter(self, name: str) -> "_Kept":
            from moeweave.adapters import load_esft

            if name not in self.loaded:
                if name in self.unloading:  # evicted before: its unload must finish first
                    await asyncio.wrap_future(self.unloading.pop(name))
                adapter = await asyncio.to_thread(load_esft, adapters[name], self.scheduler.model.spec, name)
                async with self.place_freed:
                    await self.place_freed.wait_for(lambda: self._places_taken() < self.places)
                    self.loading += 1
                try:
                    await asyncio.wrap_future(self.scheduler.load_adapter(adapter))
                    self.loaded.add(name)
                finally:
                    self.loading -= 1
                    await self._notify_place_freed()
            self.kept.add(name)
            return _Kept(functools.partial(self._evicted, name))

        def _places_taken(self) -> int:
            unloads = sum(not future.done() for future in self.unloading.values())
            return len(self.loaded) + self.loading + unloads

        async def _notify_place_freed(self) -> None:
            async with self.place_freed:
                self.place_freed.notify_all()

        async def _evicted(self, name: str) -> None:
            self.kept.discard(name)
            self._unload_unused(name)

        def _unload_unused(self, name: str) -> None:
            if name in self.loaded and name not in self.kept and not self.requests[name]:
                self.loaded.discard(name)
                self.unloading[name] = unload = self.scheduler.unload_adapter(name)
                loop = asyncio.get_running_loop()
                unload.add_done_callback(
                    lambda _: asyncio.run_coroutine_threadsafe(self._notify_place_freed(), loop)
                )

        async def forward(self, path: str, headers: list[tuple[str, str]], body: bytes):
            """Yields (status, headers), then the response body's chunks. The headers name this
            replica (x-moeweave-replica: its Ray Serve replica id). The start waits for the
            body's first chunk, which a stream sends with its first token: until then the
            gateway may send the request to another replica if this one dies."""
            name = serve.get_multiplexed_model_id()
            self.requests[name] += 1
            responses = asgi.call(self.app, "POST", path, headers, body)
            try:
                if name:
                    await self.adapter(name)
                status, headers = await anext(responses)
                first = await anext(responses, b"")
                yield status, [*headers, (REPLICA_HEADER, serve.get_replica_context().replica_id.unique_id)]
                yield first
                async for chunk in responses:
                    yield chunk
            finally:
                await responses.aclose()  # the client left: the app sees it disconnect
                self.requests[name] -= 1
                self._unload_unused(name)

    web = FastAPI(title="moeweave (Ray Serve)", docs_url=None, redoc_url=None)
    registry = CollectorRegistry()
    requests = Counter("moeweave_gateway_requests", "Requests answered, by model and status", ["model", "status"],
                       registry=registry)  # fmt: skip
    retries = Counter(
        "moeweave_gateway_retries", "Requests sent again after their replica died", registry=registry
    )
    latency = Histogram("moeweave_gateway_response_start_seconds", "Request to the start of its response",
                        buckets=LATENCY_BUCKETS, registry=registry)  # fmt: skip

    # The gateway holds every request the replicas may hold: the replicas' queues do the limiting.
    @serve.deployment(ray_actor_options={"num_cpus": 0},
                      max_ongoing_requests=(max_replicas or replicas) * (max_batch + max_queue))  # fmt: skip
    @serve.ingress(web)
    class Gateway:
        def __init__(self, replica):
            self.replica = replica

        @web.get("/health")
        async def health(self):
            return {"status": "ok"}

        @web.get("/metrics")
        async def metrics(self):
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        @web.get("/v1/models")
        async def models(self, request: Request):
            if refused := key_refused(request, api_key):
                return _as_response(refused)
            return model_cards(base.name, sorted(adapters))

        @web.post("/v1/load_adapter")
        @web.post("/v1/unload_adapter")
        async def adapter_loading(self):
            return openai_error(400, "under Ray Serve, replicas load and unload adapters by demand; serve "
                                     "them with --adapter or --adapter-dir")  # fmt: skip

        @web.post("/v1/completions")
        @web.post("/v1/chat/completions")
        async def generate(self, request: Request):
            if refused := key_refused(request, api_key):
                return _as_response(refused)
            body = await request.body()
            model = _model_of(body)
            if model is not None and model != base.name and model not in adapters:
                return _as_response(no_such_model(model))
            adapter = "" if model in (None, base.name) else model
            started = time.perf_counter()
            for attempt in range(ATTEMPTS):
                stream = self.replica.options(stream=True, multiplexed_model_id=adapter).forward.remote(
                    request.url.path, [("content-type", "application/json")], body
                )
                try:
                    status, headers = await stream.__anext__()
                except BackPressureError:
                    requests.labels(str(model), "429").inc()
                    return openai_error(429, "server busy: every replica's queue is full", "rate_limit_error")
                except RayActorError:  # died, or unreachable: the request may have run there
                    stream.cancel()
                    if attempt < ATTEMPTS - 1:
                        retries.inc()
                        continue
                    requests.labels(str(model), "503").inc()
                    return openai_error(503, f"no replica answered in {ATTEMPTS} attempts", "server_error")
                except Exception as error:  # the replica failed it before any response
                    requests.labels(str(model), "500").inc()
                    return openai_error(500, f"the replica failed: {error}", "server_error")
                latency.observe(time.perf_counter() - started)
                requests.labels(str(model), str(status)).inc()
                kept = {k: v for k, v in headers if k.lower() in ("content-type", REPLICA_HEADER)}
                return StreamingResponse(_rest(stream), status_code=status, headers=kept)

    return Gateway.bind(Replica.bind())


class _Kept:
    """An adapter while Ray's multiplexing keeps it on a replica. Ray awaits a model's `__del__`
    when it evicts it; here that is an attribute of the instance, so the garbage collector, which
    looks `__del__` up on the class, never calls it a second time."""

    def __init__(self, evicted):
        self.__del__ = evicted


def _model_of(body: bytes) -> str | None:
    """The request's `model`, or None where the body has none (the replica's app then answers 400)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    model = parsed.get("model") if isinstance(parsed, dict) else None
    return model if isinstance(model, str) else None


def _as_response(error: ApiError) -> JSONResponse:
    return openai_error(error.status, error.message, error.kind, error.code)


async def _rest(stream):
    """The response body after its start; cancels the replica's work when the client leaves."""
    try:
        async for chunk in stream:
            yield chunk
    except RayActorError:
        # Only a stream can lose its replica after its start: end it as the server ends a failed one.
        yield sse({"error": {"message": "the replica serving this stream died", "type": "server_error",
                             "param": None, "code": None}})  # fmt: skip
        yield "data: [DONE]\n\n"
    finally:
        stream.cancel()


def run(args, base: Path) -> None:
    """`moeweave serve --ray`: joins (--address) or starts a Ray cluster and serves until Ctrl-C."""
    import ray

    from moeweave.serve.server import named_adapters

    if args.replicas < 1:
        raise ValueError(f"--replicas must be >= 1, got {args.replicas}")
    if args.max_replicas is not None and args.max_replicas < args.replicas:
        raise ValueError(f"--max-replicas {args.max_replicas} is below --replicas {args.replicas}")
    adapters = named_adapters(
        base, args.adapter, None if args.adapter_dir is None else Path(args.adapter_dir)
    )
    app = application(base.resolve(), {name: path.resolve() for name, path in adapters.items()}, args.experts,
                      args.max_adapters, args.max_batch, args.max_queue, args.replicas, args.max_replicas,
                      args.api_key, args.memory_budget)  # fmt: skip
    ray.init(address=args.address, log_to_driver=False)
    try:
        # One HTTP entry on the head node: nodes sharing a machine would otherwise race for the port.
        serve.start(proxy_location="HeadOnly", http_options={"host": args.host, "port": args.port})
        serve.run(app, name="moeweave", route_prefix="/")
        print(f"# serving {base.name} with adapters {sorted(adapters)} on Ray Serve ({args.replicas} replicas) "
              f"at http://{args.host}:{args.port}/v1", flush=True)  # fmt: skip
        # SIGTERM (a service manager's stop) leaves through the same cleanup as Ctrl-C.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        threading.Event().wait()
    finally:
        if args.address is None:
            serve.shutdown()  # the cluster is this process's own
        else:
            serve.delete("moeweave")  # others' applications on a shared cluster stay
        ray.shutdown()
