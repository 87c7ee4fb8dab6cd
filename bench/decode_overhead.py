"""What does a decode step cost beyond reading its weights, per layer: the model's Python forward
against the native decode step (every layer in one C++ call), at batch 1 and at a server-like
batch, on a checkpoint of real shapes?

Per round and system: the median step time t over --steps greedy steps after a --prompt-token
prompt, the bytes a step reads B (dense weights once, one embedding row per token, every distinct
expert the batch routes to, from the routing the step really took) and the STREAM triad R
measured in the same round. The streaming floor is B / R; what the step spends beyond it,
(t - B / R) / layers, is the fixed cost per layer (norms, routing, RoPE, attention, cache
appends, residuals, op entry and Python), plus whatever the kernels lose to the triad. On a
4-layer checkpoint that quotient also spreads the step's once-per-token work (embedding, final
norm, the LM head and its op entry, argmax) over only 4 layers; a 48-layer model spreads it over
12x more. So the native step is also timed in two parts: the stack (NativeDecoder.step, every
layer in one C++ call), whose (t - B_layers / R) / layers is the fixed cost each layer adds, and
the rest of the step against the floor of its own bytes (LM head, final norm, embedding rows).
Ratios are medians of within-round ratios (this VM's speed moves by up to 2x within minutes).

    python bench/decode_overhead.py                       # Qwen3-30B-A3B shapes, 4 layers
    python bench/decode_overhead.py --preset mixtral-8x7b --layers 1
"""

import argparse
import statistics
import time

import torch
from common import Report, Row, bench_checkpoint, stream_triad_gbps

from moeweave.models import KVCache, load
from moeweave.models.experts import FusedExperts

SYSTEMS = {"Python forward": False, "native step": True}


class RoutingLog:
    """Wraps the model's experts on a Python-forward step, recording which experts each layer
    touched."""

    def __init__(self, provider: FusedExperts):
        self.provider = provider
        self.touched: dict[int, set[int]] = {}

    def __call__(self, layer, x, topk_ids, topk_weights):
        self.touched.setdefault(layer, set()).update(topk_ids.flatten().tolist())
        return self.provider(layer, x, topk_ids, topk_weights)


def expert_bytes(model, touched: dict[int, set[int]]) -> float:
    """Bytes of the distinct experts the step read, per layer."""
    tables = model.layers[-1].mlp.experts.tables
    return sum(len(ids) * tables[layer].nbytes / len(tables[layer]) for layer, ids in touched.items())


class StackTimer:
    """Stands in for a NativeDecoder's step and adds the seconds each call takes to `seconds`."""

    def __init__(self, decoder):
        self.step = decoder.step
        self.seconds = 0.0

    def __call__(self, *args):
        start = time.perf_counter()
        self.step(*args)
        self.seconds += time.perf_counter() - start


def step_seconds(model, native: bool, prompt: torch.Tensor, steps: int) -> tuple[list[float], list[float]]:
    """Durations of greedy decode steps for the batch of prompts [B, S], and of the native
    stack's call within each (empty for the Python forward)."""
    model.use_native_decode = native
    cache = KVCache(capacity=prompt.shape[1] + steps)
    token = model(prompt, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
    decoder = model.native_decoder() if native else None
    timer = None if decoder is None else StackTimer(decoder)
    if timer is not None:
        decoder.step = timer
    durations, stack = [], []
    try:
        for _ in range(steps):
            start, inside = time.perf_counter(), timer.seconds if timer else 0.0
            token = model(token, cache=cache).logits[:, -1].argmax(-1, keepdim=True)
            durations.append(time.perf_counter() - start)
            if timer is not None:
                stack.append(timer.seconds - inside)
    finally:
        if timer is not None:
            del decoder.step
    return durations, stack


def bytes_per_step(model, prompt: torch.Tensor) -> float:
    """Weights one decode step reads: dense once, an embedding row per token, and the distinct
    experts of its routing (taken from a Python-forward step of the same batch)."""
    provider = model.layers[-1].mlp.experts
    log = RoutingLog(provider)
    for layer in model.layers:
        layer.mlp.experts = log
    model.use_native_decode = False
    cache = KVCache()
    token = model(prompt, cache=cache, logits_to_keep=1).logits[:, -1].argmax(-1, keepdim=True)
    log.touched.clear()
    model(token, cache=cache)
    for layer in model.layers:
        layer.mlp.experts = provider
    row = model.spec.hidden_size * model.embed.element_size()
    return model.dense_bytes_per_token() + (prompt.shape[0] - 1) * row + expert_bytes(model, log.touched)


def outside_stack_bytes(model, batch: int) -> float:
    """Weights a decode step reads outside its layers: the LM head, the final norm and one
    embedding row per token."""
    row = model.spec.hidden_size * model.embed.element_size()
    return model.lm_head.nbytes + model.norm.nbytes + batch * row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=("qwen3-30b-a3b", "mixtral-8x7b"), default="qwen3-30b-a3b")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    path = bench_checkpoint(args.layers, args.vocab, args.preset)
    model = load(path, experts="int4", dtype=torch.bfloat16)  # default projections: INT8
    assert model.native_decoder() is not None, "the native step does not cover this model"
    generator = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(0, args.vocab, (b, args.prompt), generator=generator) for b in args.batches}
    reads = {b: bytes_per_step(model, prompts[b]) for b in args.batches}
    for b in args.batches:  # warm-up: first-call allocations on both paths
        for native in SYSTEMS.values():
            step_seconds(model, native, prompts[b], 2)

    triads, times = [], {(s, b): [] for s in SYSTEMS for b in args.batches}
    stack_times = {b: [] for b in args.batches}  # per round: median step and median stack call
    for _ in range(args.rounds):
        triads.append(stream_triad_gbps())
        for b in args.batches:
            for system, native in SYSTEMS.items():
                steps, stack = step_seconds(model, native, prompts[b], args.steps)
                times[system, b].append(statistics.median(steps))
                if native:
                    stack_times[b].append((statistics.median(steps), statistics.median(stack)))

    report = Report(__file__, {"stream_triad_GBps (median of rounds)": statistics.median(triads)})
    cpu = report.machine
    config = f"{args.preset} shapes {args.layers}L, INT4 experts, INT8 projections"
    print(f"# {cpu['cpu']}, {cpu['cpus']} CPUs, ISA {cpu['isa']}; {config}; prompt {args.prompt}")
    print(f"# triad per round (GB/s): {' '.join(f'{t:.1f}' for t in triads)}\n")
    columns = ["step ms", "MB read", "floor ms (B / R)", "step / floor", "fixed ms per layer", "vs Python"]
    print(f"| system | batch | {' | '.join(columns)} |\n|---|---|{'---|' * len(columns)}")
    for b in args.batches:
        floors = [reads[b] / (triad * 1e9) for triad in triads]
        python = times["Python forward", b]
        for system in SYSTEMS:
            t = times[system, b]
            fixed = statistics.median((s - f) / args.layers for s, f in zip(t, floors, strict=True))
            bound = statistics.median(f / s for s, f in zip(t, floors, strict=True))
            speedup = statistics.median(p / s for p, s in zip(python, t, strict=True))
            cells = [f"{statistics.median(t) * 1e3:.2f}", f"{reads[b] / 1e6:.0f}"]
            cells += [f"{statistics.median(floors) * 1e3:.2f}", f"{1 / bound:.2f}", f"{fixed * 1e3:.3f}"]
            cells += [f"{speedup:.2f}x"]
            print(f"| {system} | {b} | {' | '.join(cells)} |", flush=True)
            report.rows.append(
                Row(
                    f"{system} batch {b}",
                    config,
                    statistics.median(t) * 1e3,
                    "ms",
                    "Python forward",
                    speedup,
                    bound,
                )
            )
    print_stack_split(model, args.layers, reads, triads, stack_times)
    report.finish()


def print_stack_split(model, layers: int, reads: dict, triads: list[float], stack_times: dict) -> None:
    """The native step in two parts: the stack of layers against its bytes' floor (the fixed
    cost per layer) and the once-per-token rest against its own."""
    columns = ["stack ms", "stack MB", "stack floor ms", "stack / floor", "fixed ms per layer"]
    columns += ["rest ms", "rest MB", "rest floor ms"]
    print(f"\nNative step split\n\n| batch | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for b, rounds in stack_times.items():
        rest_bytes = outside_stack_bytes(model, b)
        stack_bytes = reads[b] - rest_bytes
        stack = [inside for _, inside in rounds]
        rest = [step - inside for step, inside in rounds]
        floors = [stack_bytes / (triad * 1e9) for triad in triads]
        fixed = statistics.median((s - f) / layers for s, f in zip(stack, floors, strict=True))
        ratio = statistics.median(s / f for s, f in zip(stack, floors, strict=True))
        rest_floor = statistics.median(rest_bytes / (triad * 1e9) for triad in triads)
        cells = [f"{statistics.median(stack) * 1e3:.2f}", f"{stack_bytes / 1e6:.0f}"]
        cells += [f"{statistics.median(floors) * 1e3:.2f}", f"{ratio:.2f}", f"{fixed * 1e3:.3f}"]
        cells += [
            f"{statistics.median(rest) * 1e3:.2f}",
            f"{rest_bytes / 1e6:.0f}",
            f"{rest_floor * 1e3:.2f}",
        ]
        print(f"| {b} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
