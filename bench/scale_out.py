"""Beyond one process: what expert parallelism and Ray Serve cost and give, measured with 1, 2
and 4 local processes (the machine has 2 cores: from 4 processes on they compete for them, and
the table says so), plus a projection of expert parallelism to a real cluster from the costs
measured here.

Expert parallelism: Qwen3-30B-A3B's layer shapes (128 experts of 768, top-8, hidden 2048) with
--layers layers and random weights, INT4 experts, bf16 dense weights. Each of W gloo ranks on
loopback runs --batch sequences: a --prompt-token prefill, then --steps greedy decode steps of
the whole batch. Per rank and decode step: the step's time, the time inside the all_to_all
exchanges and in the rank's own expert computation, and the bytes it sent. Limits measured in the
same run: the loopback all_to_all bandwidth (one 64 MiB exchange between two ranks) and a tiny
exchange's latency; the exchange's time is compared with bytes / bandwidth + 4 latencies per MoE
layer (the header and three payload exchanges).

Projection (modelled, not measured): a decode step on W nodes, each with its own batch = the
W = 1 step's dense time + its expert time scaled by the distinct experts a node reads (decode is
memory-bound; uniform routing) + per MoE layer 4 latencies + the bytes one node sends / the link
bandwidth, for links of --link-gbps and --link-us.

Ray Serve: the bundled model with four synthetic adapters; --requests requests of 16 greedy
tokens, round robin over the adapters and the base, --concurrency at a time from client threads;
throughput and p50 / p99 request latency through `moeweave serve` (one process, uvicorn) and
through `moeweave serve --ray` with 1 and 2 replicas on a local Ray cluster.

    python bench/scale_out.py                       # both parts
    python bench/scale_out.py --part ep --layers 2 --batch 16
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import torch
import torch.distributed as dist
from common import RESULTS_DIR, bench_checkpoint, machine

BIN = Path(sys.executable).parent


def _ep_rank(rank: int, world: int, path: str, args, init: str, out: str) -> None:
    threads = max(1, os.cpu_count() // world)
    os.environ["MOEWEAVE_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from moeweave.models import KVCache, load

    group = dist.group.WORLD if world > 1 else None
    model = load(path, experts="int4", dtype=torch.bfloat16, expert_parallel=group)
    model.use_native_decode = False  # the same Python forward for every W, so only the split differs
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(0, model.spec.vocab_size, (args.batch, args.prompt_tokens), generator=generator)
    cache = KVCache(capacity=args.prompt_tokens + args.steps + 1)
    token = model(ids, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
    provider = model.expert_parallel()
    stats = None if provider is None else provider.stats
    before = None if stats is None else dict(vars(stats))
    dist.barrier()
    start = time.perf_counter()
    for _ in range(args.steps):
        token = model(token, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
    seconds = time.perf_counter() - start
    result = {"step_seconds": seconds / args.steps}
    if stats is not None:
        result |= {key: (getattr(stats, key) - before[key]) / args.steps for key in before}
    if world == 1:  # the expert stage's share of a step, to model W nodes from
        result["expert_seconds"] = _expert_seconds(model, token, cache, args.steps)
        result |= {"num_experts": model.spec.num_experts, "top_k": model.spec.top_k}
    if world == 2:
        result |= _loopback(rank)
    model.serve_experts_until_all_done()
    Path(f"{out}.{rank}").write_text(json.dumps(result))
    dist.destroy_process_group()


def _expert_seconds(model, token, cache, steps: int) -> float:
    """Seconds per decode step inside the routed-expert stage (every MoE layer), single process."""
    blocks = [layer.mlp for layer in model.layers if hasattr(layer.mlp, "experts")]
    spent = [0.0]
    inner = blocks[0].experts

    def timed(*call):
        start = time.perf_counter()
        y = inner(*call)
        spent[0] += time.perf_counter() - start
        return y

    for block in blocks:
        block.experts = timed
    for _ in range(steps):
        token = model(token, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
    for block in blocks:
        block.experts = inner
    return spent[0] / steps


def _loopback(rank: int) -> dict:
    """The all_to_all bandwidth (64 MiB each way) and a 1-element exchange's latency, 2 ranks."""
    big, tiny = torch.empty(32 << 20, dtype=torch.bfloat16), torch.zeros(2)
    out_big, out_tiny = torch.empty_like(big), torch.empty_like(tiny)
    for _ in range(2):
        dist.all_to_all_single(out_big, big)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(5):
        dist.all_to_all_single(out_big, big)
    bandwidth = 5 * big.nbytes / 2 / (time.perf_counter() - start)  # half of it crosses ranks
    start = time.perf_counter()
    for _ in range(200):
        dist.all_to_all_single(out_tiny, tiny)
    return {"loopback_bytes_per_s": bandwidth, "latency_s": (time.perf_counter() - start) / 200}


def expert_parallel(args) -> list[dict]:
    path = str(bench_checkpoint(args.layers, 32000))
    rows = []
    for world in (1, 2, 4):
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/rank"
            torch.multiprocessing.start_processes(_ep_rank, args=(world, path, args, f"{tmp}/init", out),
                                                  nprocs=world, start_method="spawn")  # fmt: skip
            ranks = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world)]
        mean = {key: statistics.mean(r[key] for r in ranks) for key in ranks[0]}
        mean["world"] = world
        mean["tokens_per_s"] = world * args.batch / mean["step_seconds"]
        rows.append(mean)
    return rows


def _print_ep(rows: list[dict], args) -> None:
    single, pair = rows[0], rows[1]
    bandwidth, latency = pair["loopback_bytes_per_s"], pair["latency_s"]
    moe_layers = pair["layer_calls"]
    print(f"\n## Expert parallelism (measured): {args.layers} layers, batch {args.batch} per rank, "
          f"loopback all_to_all {bandwidth / 1e9:.2f} GB/s, latency {latency * 1e6:.0f} us")  # fmt: skip
    print("| ranks | tokens/s (all ranks) | vs 1 rank | step ms | exchange ms | expert ms | bytes sent / token | "
          "exchange (peers' waits included) / (bytes/bw + 4 lat/layer) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if row["world"] == 1:
            print(f"| 1 | {row['tokens_per_s']:.1f} | 1.00 | {row['step_seconds'] * 1e3:.1f} | - | "
                  f"{row['expert_seconds'] * 1e3:.1f} | 0 | - |")  # fmt: skip
            continue
        bound = row["bytes_sent"] / bandwidth + 4 * moe_layers * latency
        print(f"| {row['world']} | {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / single['tokens_per_s']:.2f} | "
              f"{row['step_seconds'] * 1e3:.1f} | {row['communication_seconds'] * 1e3:.1f} | "
              f"{row['compute_seconds'] * 1e3:.1f} | {row['bytes_sent'] / args.batch:.0f} | "
              f"{row['communication_seconds'] / bound:.1f}x |")  # fmt: skip
    # Projection: bytes per token per MoE layer scale as (W - 1) / W of the top-k assignments.
    per_token_layer_bytes = (
        pair["bytes_sent"] / args.batch / moe_layers / (1 / 2)
    )  # at W = 2, half go off-rank
    dense = single["step_seconds"] - single["expert_seconds"]
    link = args.link_gbps * 1e9 / 8
    print(f"\n## Projection (modelled from the W = 1 and W = 2 measurements; links of {args.link_gbps} Gb/s, "
          f"{args.link_us} us per exchange)")  # fmt: skip
    print("| nodes | batch per node | step ms (modelled) | of which experts | of which exchange | "
          "tokens/s (all nodes, modelled) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for nodes in (8, 16, 64):
        sent = per_token_layer_bytes * (nodes - 1) / nodes * args.batch * moe_layers
        exchange = sent / link + 4 * moe_layers * args.link_us * 1e-6
        experts = single["expert_seconds"] * _touched_share(
            nodes, args.batch * single["top_k"], single["num_experts"]
        )
        step = dense + experts + exchange
        print(f"| {nodes} | {args.batch} | {step * 1e3:.1f} | {experts * 1e3:.1f} | {exchange * 1e3:.2f} | "
              f"{nodes * args.batch / step:.0f} |")  # fmt: skip


def _touched_share(nodes: int, assignments: int, experts: int) -> float:
    """A node's expert time against one process's, when decode reads each touched expert once
    (memory-bound) and routing is uniform: the distinct experts of a node's E / W slice that
    W x `assignments` assignments touch, over those `assignments` touch among all E."""
    untouched = 1 - 1 / experts
    return (1 - untouched ** (nodes * assignments)) / nodes / (1 - untouched**assignments)


def _load(url: str, requests: int, concurrency: int, models: list[str]) -> dict:
    """Sends `requests` completions, `concurrency` at a time; throughput and latency percentiles."""
    latencies: list[float] = []
    lock, next_index = threading.Lock(), [0]

    def client() -> None:
        while True:
            with lock:
                index = next_index[0]
                next_index[0] += 1
            if index >= requests:
                return
            body = json.dumps({"model": models[index % len(models)], "prompt": "In 1905, the", "max_tokens": 16,
                               "temperature": 0}).encode()  # fmt: skip
            request = urllib.request.Request(f"{url}/completions", body, {"content-type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as response:
                json.loads(response.read())
            with lock:
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {"requests_per_s": requests / wall, "p50_s": ordered[len(ordered) // 2],
            "p99_s": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]}  # fmt: skip


def _server(argv: list[str], port: int) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    process = subprocess.Popen([str(BIN / "moeweave"), "serve", *argv, "--port", str(port)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for line in process.stdout:
        if line.startswith("# serving"):
            threading.Thread(target=lambda: [None for _ in process.stdout], daemon=True).start()
            break
    for _ in range(600):  # uvicorn binds its port after the line
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10).close()
            return process
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moeweave serve {' '.join(argv)} did not start")


def ray_serve(args) -> list[dict]:
    from moeweave.adapters import random_selection, save_esft, synth_adapter
    from moeweave.formats.hf_checkpoint import read_config
    from moeweave.models.bundled import DEMO_MODEL_DIR
    from moeweave.models.spec import spec_from_config

    spec = spec_from_config(read_config(DEMO_MODEL_DIR))
    adapters = Path(tempfile.mkdtemp()) / "adapters"
    for seed in range(4):
        save_esft(synth_adapter(DEMO_MODEL_DIR, random_selection(spec, 0.25, seed), seed, f"a{seed}"),
                  adapters / f"a{seed}")  # fmt: skip
    models = ["demo_model", *(f"a{seed}" for seed in range(4))]
    common = ["--adapter-dir", str(adapters), "--max-batch", "8"]
    rows = []
    ray = str(BIN / "ray")
    subprocess.run([ray, "start", "--head", "--port", "6391", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
                    "--include-dashboard=false", "--disable-usage-stats"], check=True, capture_output=True)  # fmt: skip
    try:
        for name, argv in [("one server (uvicorn)", common),
                           ("Ray Serve, 1 replica", [*common, "--ray", "--address", "127.0.0.1:6391"]),
                           ("Ray Serve, 2 replicas", [*common, "--ray", "--address", "127.0.0.1:6391",
                                                      "--replicas", "2"])]:  # fmt: skip
            process = _server(argv, 8124)
            try:
                url = "http://127.0.0.1:8124/v1"
                _load(url, 2 * args.concurrency, args.concurrency, models)  # warm: adapters loaded everywhere
                rows.append({"system": name, **_load(url, args.requests, args.concurrency, models)})
            finally:
                process.terminate()
                process.wait(timeout=120)
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True)
    return rows


def _print_ray(rows: list[dict], args) -> None:
    print(f"\n## Ray Serve (measured): {args.requests} requests of 16 tokens, {args.concurrency} at a time, "
          "5 models round robin")  # fmt: skip
    print("| system | requests/s | vs one server | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['system']} | {row['requests_per_s']:.2f} | {row['requests_per_s'] / rows[0]['requests_per_s']:.2f} | "
              f"{row['p50_s'] * 1e3:.0f} | {row['p99_s'] * 1e3:.0f} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=["ep", "ray", "all"], default="all")
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--link-gbps", type=float, default=100.0)
    parser.add_argument("--link-us", type=float, default=20.0)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(f"# scale_out: {machine()['cpu']}, {os.cpu_count()} CPUs")
    results = {}
    if args.part in ("ep", "all"):
        results["expert_parallel"] = expert_parallel(args)
        _print_ep(results["expert_parallel"], args)
    if args.part in ("ray", "all"):
        results["ray"] = ray_serve(args)
        _print_ray(results["ray"], args)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / "scale_out.jsonl", "a") as out:
        out.write(json.dumps({"args": vars(args), "machine": machine(), **results}) + "\n")


if __name__ == "__main__":
    main()
