"""Many ESFT adapters over one base: what do they cost in decode speed and memory, and how close
does continuous batching come to the memory-bandwidth bound of a step?

Base: DeepSeek-V2-Lite's shapes (64 routed experts of 1408 + 2 shared, top-6, MLA, 102400-token
vocabulary) with random weights and --layers layers (the first dense, as in the model), INT4
experts, INT8 projections (the server's default), bf16 elsewhere. Adapters: synthetic
(perturbed copies) over the expert selections of DeepSeek's four released ESFT adapters
(../shared/data/esft_expert_configs, layers this base has), round robin. The scheduler runs
in-process (the HTTP layer adds the same to every row), its decode steps on the native step as
the server runs them: `concurrency` requests at once, spread round robin over `adapters`
adapters (0: all on the base), each generating --tokens tokens after a --prompt-token prompt of
its own (random tokens), greedy.

Per row: decode tokens/s (tokens over the decode steps' time), per-token latency p50 / p99 (a
decode step's duration: each request gets one token per step), the latency overhead against the
base alone at the same concurrency, and two bounds of a decode step, both measured in this run:
bytes (the dense weights once, one row of the embedding; every distinct expert the batch touches,
counted in a separate pass on the Python forward, which routes alike; the KV cache it reads) over
the STREAM triad's bandwidth, and multiply-adds (2 x the weights
each token uses: dense, its top-k experts per layer) over the FLOP/s of a large bf16 matmul.
The ratio reported is the larger bound over the measured step. In each of 7 rounds (the triad
and the matmul between rounds), the four adapter counts of one concurrency run side by side, one
scheduler each, stepped in turn one decode step at a time; the overhead is the median of each
step's duration against the base's step of the same index and round (with a 95 % interval of
that median), so that the VM's drift, which moves a whole run by 20-30 %, cancels. Latency and
tokens/s pool the rounds' steps. Memory: the adapters' pools as
committed, against their tuned experts' bytes, one merged model per adapter, and the padded
[E + N * E_max] layout.

    python bench/serve_adapters.py                 # 4 layers (3 MoE), 16 tokens
    python bench/serve_adapters.py --layers 3 --tokens 8
"""

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS_DIR, machine, stream_triad_gbps

from moeweave.adapters.pool import slot_bytes

CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "esft_expert_configs"
ADAPTER_COUNTS = (0, 1, 4, 20)
CONCURRENCY = (1, 8, 32)
ROUNDS = 7


def checkpoint(layers: int) -> Path:
    from moeweave import envs
    from moeweave.recipes.demo_model.random_checkpoint import preset_config, write_random_checkpoint

    path = envs.cache_dir() / f"bench-deepseek-v2-lite-shapes-{layers}l"
    if not (path / "config.json").exists():
        config = preset_config("deepseek-v2-lite", layers, bos_token_id=None, eos_token_id=None)
        write_random_checkpoint(config, path)
    return path


def load_adapters(path: Path, adapter_set, count: int) -> dict[str, int]:
    """Loads `count` synthetic adapters over the released selections; name -> tuned experts."""
    from moeweave.adapters import read_selection, synth_adapter

    configs = sorted(CONFIGS.glob("*.json"))
    moe_layers = [i for i, moe in enumerate(adapter_set.spec.moe_layers) if moe]
    tuned = {}
    for index in range(count):
        released = read_selection(configs[index % len(configs)])
        selection = {layer: released[layer] for layer in moe_layers if layer in released}
        name = f"{configs[index % len(configs)].stem}-{index}"
        adapter_set.load(synth_adapter(path, selection, seed=index, name=name))
        tuned[name] = sum(len(experts) for experts in selection.values())
    return tuned


class TouchedExperts:
    """Wraps a layer's expert provider to record the distinct experts (table slots) each call uses."""

    def __init__(self, provider, log: list):
        self.provider, self.log = provider, log

    def __call__(self, layer, x, topk_ids, topk_weights):
        self.log.append((layer, topk_ids.unique().tolist()))
        return self.provider(layer, x, topk_ids, topk_weights)


def serve(model, adapter_set, names, concurrency, prompts, tokens):
    """`concurrency` greedy requests round robin over the adapters `names` (none: the base), one
    scheduler step per next(); yields the number of requests each step served (the first step
    is the prompts')."""
    from moeweave.serve.scheduler import Request, Sampling, Scheduler

    scheduler = Scheduler(model, 4096, adapter_set, max_batch=64, max_queue=64)
    for index in range(concurrency):
        adapter = names[index % len(names)] if names else None
        scheduler.submit(
            Request(list(prompts[index]), Sampling(tokens, temperature=0.0), lambda event: None, adapter)
        )
    scheduler._admit()
    while scheduler.running:
        requests = len(scheduler.running)
        scheduler._step()
        yield requests


def interleaved_steps(model, adapter_set, names, counts, concurrency, prompts, tokens, first: int) -> dict:
    """One scheduler per adapter count in `counts`, stepped in turn, one decode step each, the
    order rotating every step (starting at counts[first]): a step of every configuration runs
    within a few hundred milliseconds of its twins', so the VM's drift, which wanders by 20-30 %
    over seconds to minutes, cancels in their paired ratios. count -> [(seconds, requests)] of
    the decode steps, aligned by step across the counts."""
    schedulers = {
        count: serve(model, adapter_set, names[:count], concurrency, prompts, tokens) for count in counts
    }
    for steps in schedulers.values():
        next(steps)  # the prompts: not a decode step
    order = list(counts[first:]) + list(counts[:first])
    timed = {count: [] for count in counts}
    while True:
        for count in order:
            start = time.perf_counter()
            requests = next(schedulers[count], None)
            if requests is None:  # one scheduler is done: keep the steps every one has taken
                shortest = min(len(steps) for steps in timed.values())
                return {count: steps[:shortest] for count, steps in timed.items()}
            timed[count].append((time.perf_counter() - start, requests))
        order = order[1:] + order[:1]


def summary(steps: list[tuple[float, int]]) -> dict:
    """Decode speed of timed steps [(seconds, requests)]."""
    seconds = [duration for duration, _ in steps]
    return {
        "tokens_per_second": sum(requests for _, requests in steps) / sum(seconds),
        "p50_ms": statistics.median(seconds) * 1e3,
        "p99_ms": sorted(seconds)[min(len(seconds) - 1, int(0.99 * len(seconds)))] * 1e3,
        "step_seconds": statistics.mean(seconds),
    }


def median_interval(values: list[float]) -> tuple[float, float]:
    """A distribution-free 95 % confidence interval of the median: the order statistics whose
    ranks bracket n / 2 by 1.96 binomial standard deviations."""
    ordered, n = sorted(values), len(values)
    k = max(0, math.floor(n / 2 - 1.96 * math.sqrt(n) / 2))
    return ordered[k], ordered[min(n - 1, n - 1 - k)]


def expert_bytes_per_step(model, adapter_set, names, concurrency, prompts, tokens) -> float:
    """Mean bytes of the distinct expert slots a decode step reads. Counted on the Python forward
    (the expert providers wrapped), which routes as the native step does: greedy tokens, and so
    the experts of every step, are the same on both (tests/models/test_native_decode.py)."""
    from moeweave.models.moe_block import MoEBlock

    blocks = [layer.mlp for layer in model.layers if isinstance(layer.mlp, MoEBlock)]
    providers = [block.experts for block in blocks]
    touched, marks = [], []
    for block in blocks:
        block.experts = TouchedExperts(block.experts, touched)
    try:
        for _ in serve(model, adapter_set, names, concurrency, prompts, tokens):
            marks.append(len(touched))
    finally:
        for block, provider in zip(blocks, providers, strict=True):
            block.experts = provider
    per_step = [
        sum(
            slot_bytes(adapter_set.tables[layer].experts[slot])
            for layer, slots in touched[a:b]
            for slot in slots
        )
        for a, b in itertools.pairwise(marks)
    ]
    return statistics.mean(per_step)


def matmul_flops(size: int = 2048) -> float:
    """FLOP/s of a [size, size] x [size, size] bf16 matmul, the best of 5."""
    a, b = torch.randn(size, size).bfloat16(), torch.randn(size, size).bfloat16()
    a @ b
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def kv_bytes_per_step(model, concurrency: int, prompt: int, tokens: int) -> float:
    """Mean KV-cache bytes a decode step reads: MLA caches the latent and the rotary key per token
    and layer (bf16), over the prompt and the tokens generated so far, for every request."""
    spec = model.spec
    per_token = (spec.kv_lora_rank + spec.qk_rope_head_dim) * 2 * spec.num_layers
    mean_length = prompt + tokens / 2
    return concurrency * mean_length * per_token


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=16)
    args = parser.parse_args()

    import moeweave.models
    from moeweave.adapters import AdapterSet

    path = checkpoint(args.layers)
    model = moeweave.models.load(path, experts="int4", dtype=torch.bfloat16)
    adapter_set = AdapterSet(model, max_adapters=max(ADAPTER_COUNTS))
    base_resident = adapter_set.resident_bytes()
    tuned = load_adapters(path, adapter_set, max(ADAPTER_COUNTS))
    names = list(tuned)
    # A prompt of its own per request: identical requests would decode identical tokens, route
    # them to the same experts and make a batch of any size read one token's experts.
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randint(
        0, model.spec.vocab_size, (max(CONCURRENCY), args.prompt), generator=generator
    ).tolist()
    dense = model.dense_bytes_per_token()
    triad = stream_triad_gbps() * 1e9
    peak = matmul_flops()
    spec = model.spec
    expert_elements = 3 * spec.hidden_size * spec.moe_intermediate_size
    dense_elements = sum(math.prod(w.shape) for w in model.dense_weights())
    flops_per_token = 2 * (dense_elements + sum(spec.moe_layers) * spec.top_k * expert_elements)
    print(f"# {machine()['cpu']}: DeepSeek-V2-Lite shapes, {args.layers} layers, dense {dense >> 20} MiB read per step, "
          f"triad {triad / 1e9:.1f} GB/s, bf16 matmul {peak / 1e9:.0f} GFLOP/s")  # fmt: skip
    # Warm-up: first-touch page faults.
    for _ in serve(model, adapter_set, names[:4], 8, prompts, args.tokens):
        pass
    # ROUNDS rounds; in each, every concurrency with its adapter counts stepped in turn.
    runs = {(count, concurrency): [] for concurrency in CONCURRENCY for count in ADAPTER_COUNTS}
    triads, peaks = [triad], [peak]
    for round_index in range(ROUNDS):
        for concurrency in CONCURRENCY:
            first = round_index % len(ADAPTER_COUNTS)
            steps = interleaved_steps(
                model, adapter_set, names, ADAPTER_COUNTS, concurrency, prompts, args.tokens, first
            )
            for count, timed in steps.items():
                runs[count, concurrency].extend(timed)
        if round_index + 1 < ROUNDS:
            triads.append(stream_triad_gbps() * 1e9)
            peaks.append(matmul_flops())
    triad, peak = statistics.median(triads), statistics.median(peaks)
    rows = []
    for count in ADAPTER_COUNTS:
        for concurrency in CONCURRENCY:
            result = summary(runs[count, concurrency])
            result["expert_bytes_per_step"] = expert_bytes_per_step(
                model, adapter_set, names[:count], concurrency, prompts, args.tokens
            )
            kv = kv_bytes_per_step(model, concurrency, args.prompt, args.tokens)
            memory_bound = (dense + result["expert_bytes_per_step"] + kv) / triad
            compute_bound = concurrency * flops_per_token / peak
            bound = max(memory_bound, compute_bound)
            result.update(adapters=count, concurrency=concurrency, bound_ratio=bound / result["step_seconds"],
                          bound_by="memory" if memory_bound >= compute_bound else "compute")  # fmt: skip
            paired = [
                one / base - 1
                for (one, _), (base, _) in zip(runs[count, concurrency], runs[0, concurrency], strict=True)
            ]
            low, high = median_interval(paired)
            result.update(overhead=statistics.median(paired), overhead_interval=(low, high))
            rows.append(result)
            print(f"adapters {count:2d}  concurrency {concurrency:2d}  {result['tokens_per_second']:7.1f} tok/s  "
                  f"p50 {result['p50_ms']:7.1f} ms  p99 {result['p99_ms']:7.1f} ms  overhead {result['overhead']:+6.1%} "
                  f"(95 % {low:+.1%} .. {high:+.1%})  experts {result['expert_bytes_per_step'] / 2**20:.0f} MiB/step  "
                  f"bound {result['bound_ratio']:.2f} ({result['bound_by']})", flush=True)  # fmt: skip
    print(f"# medians of {len(triads)}: triad {triad / 1e9:.1f} GB/s, bf16 matmul {peak / 1e9:.0f} GFLOP/s")
    memory = memory_report(model, adapter_set, tuned, base_resident)
    print("# memory: " + ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in memory.items()))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with open(RESULTS_DIR / "serve_adapters.jsonl", "a") as out:
        out.write(json.dumps({"machine": machine(), "layers": args.layers, "tokens": args.tokens, "rows": rows,
                              "memory": memory}) + "\n")  # fmt: skip


def memory_report(model, adapter_set, tuned: dict[str, int], base_resident: int) -> dict:
    """Bytes: the pools as committed, the adapters' tuned experts, one merged model per adapter,
    and a padded layout giving every adapter E_max slots in every layer."""
    experts = model.spec.num_experts
    layers = list(adapter_set.tables)
    expert = slot_bytes(adapter_set.tables[layers[0]].experts[0])
    base_experts = expert * experts * len(layers)
    embedding = model.embed.numel() * model.embed.element_size()
    dense = model.dense_bytes_per_token() - model.spec.hidden_size * model.embed.element_size() + embedding
    per_layer_max = max(
        int((adapter_set.remap[layer][row] != torch.arange(experts)).sum())
        for layer in layers
        for row in range(1, len(tuned) + 1)
    )
    return {
        "pools committed": adapter_set.resident_bytes() - base_resident,
        "tuned experts": sum(tuned.values()) * expert,
        "merged models": len(tuned) * (dense + base_experts),
        "padded layout": len(tuned) * per_layer_max * len(layers) * expert,
        "base": dense + base_experts,
    }


if __name__ == "__main__":
    main()
