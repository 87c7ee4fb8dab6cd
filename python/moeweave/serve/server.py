"""`moeweave serve`: the base model in RAM with its adapters, the continuous-batching scheduler
and the OpenAI-compatible API, on uvicorn.

    moeweave serve [BASE] [--adapter NAME=PATH ...] [--adapter-dir DIR] [--host 127.0.0.1]
                   [--port 8000] [--api-key KEY] [--memory-budget SIZE]

With --memory-budget the base's routed experts are read from an expert store through the
on-device engine (moeweave.engine) under that budget, the adapters' experts held in RAM beside it.
"""

from pathlib import Path

from moeweave.adapters import AdapterSet, load_esft
from moeweave.adapters.esft import CONFIG_FILE
from moeweave.engine.engine import dense_dtype
from moeweave.formats.hf_checkpoint import read_config
from moeweave.models import load
from moeweave.serve.scheduler import Scheduler

DEFAULT_CONTEXT = 4096  # when config.json gives no max_position_embeddings


def build(
    base: Path,
    adapters: list[str],
    adapter_dir: Path | None,
    api_key: str | None,
    experts: str,
    max_adapters: int,
    max_batch: int,
    max_queue: int,
    memory_budget: str | None = None,
):
    """The app and its started scheduler (stop it when the server ends, then close
    app.state.engine when there is one)."""
    # Here, not at the top: the CLI imports this module to build its parser, and only serving
    # needs the `serve` extra (fastapi, prometheus-client).
    from moeweave.serve.app import create_app

    config = read_config(base)
    engine = None
    if memory_budget is None:
        model = load(base, experts=experts, dtype=dense_dtype(config))
    else:
        from moeweave.engine import Engine
        from moeweave.run_engine import STORE_BITS

        engine = Engine.open(base, memory_budget=memory_budget, bits=STORE_BITS[experts])
        model = engine.model
    adapter_set = AdapterSet(model, max_adapters)
    named = named_adapters(base, adapters, adapter_dir)
    for name, path in named.items():
        adapter_set.load(load_esft(path, model.spec, name))
    context = config.get("max_position_embeddings") or DEFAULT_CONTEXT
    scheduler = Scheduler(model, context, adapter_set, max_batch, max_queue).start()
    app = create_app(scheduler, base.name, base, api_key, adapter_dir)
    app.state.engine = engine
    for name in named:
        app.state.metrics.adapter_loaded.labels(name).set(1)
    return app, scheduler


def named_adapters(base: Path, specs: list[str], adapter_dir: Path | None) -> dict[str, Path]:
    """The adapters to serve by name: --adapter NAME=PATH, then each adapter in --adapter-dir."""
    named = dict(_named(spec) for spec in specs)
    if adapter_dir is not None:
        if not adapter_dir.is_dir():
            raise ValueError(f"--adapter-dir {adapter_dir}: not a directory")
        named |= {sub.name: sub for sub in sorted(adapter_dir.iterdir()) if (sub / CONFIG_FILE).is_file()}
    if base.name in named:
        raise ValueError(f"adapter {base.name!r}: the base model has that name")
    return named


def _named(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--adapter {spec!r}: expected NAME=PATH")
    return name, Path(path)


def serve(args) -> None:
    import uvicorn

    from moeweave.models.bundled import default_model_dir

    base = Path(args.base) if args.base else default_model_dir()
    if args.ray:
        from moeweave.serve.ray import run

        run(args, base)
        return
    app, scheduler = build(
        base, args.adapter, None if args.adapter_dir is None else Path(args.adapter_dir), args.api_key,
        args.experts, args.max_adapters, args.max_batch, args.max_queue, args.memory_budget,
    )  # fmt: skip
    print(
        f"# serving {base.name} with adapters {scheduler.models()} on http://{args.host}:{args.port}/v1",
        flush=True,
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        scheduler.stop()
        if app.state.engine is not None:
            app.state.engine.close()


def add_arguments(parser) -> None:
    from moeweave.quant.policy import FUSED_FORMATS

    parser.add_argument("base", nargs="?", help="base checkpoint directory (default: the bundled model)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH",
                        help="an ESFT adapter to serve as model NAME (repeatable)")  # fmt: skip
    parser.add_argument(
        "--adapter-dir", help="serve every adapter in DIR; /v1/load_adapter may load from DIR only"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1 requests")
    parser.add_argument("--experts", choices=FUSED_FORMATS, default="int4", help="routed expert format")
    parser.add_argument("--max-adapters", type=int, default=16, help="adapters loaded at once at most")
    parser.add_argument("--max-batch", type=int, default=32, help="requests per model step at most")
    parser.add_argument("--max-queue", type=int, default=64, help="waiting requests at most (then 429)")
    parser.add_argument("--ray", action="store_true",
                        help="serve on Ray Serve: replicas with adapter-affinity routing (needs ray[serve])")  # fmt: skip
    parser.add_argument(
        "--replicas", type=int, default=1, help="with --ray: replicas (the minimum when autoscaling)"
    )
    parser.add_argument("--max-replicas", type=int,
                        help="with --ray: autoscale up to this many replicas by requests in flight")  # fmt: skip
    parser.add_argument("--address", help="with --ray: the Ray cluster to join (default: start a local one)")
    parser.add_argument("--memory-budget", metavar="SIZE",
                        help="read the base's experts from SSD through the on-device engine, holding at most SIZE")  # fmt: skip
