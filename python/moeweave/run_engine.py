"""`moeweave run` through the on-device engine (a store, or --memory-budget): tokens stream as
they are made, then the speed and, with --stats, the engine's telemetry per token and in sum."""

import sys
from pathlib import Path

from moeweave.engine import Engine
from moeweave.engine.sizes import format_size
from moeweave.engine.telemetry import Counters
from moeweave.quant.policy import QUANTISED_BITS
from moeweave.store.writer import PLAIN_BITS

# Expert formats of `moeweave run --experts` -> the store's bits.
STORE_BITS = {"bf16": PLAIN_BITS, **QUANTISED_BITS}


def run(args, path: Path, prompt: str, sampling: dict) -> None:
    if args.experts not in STORE_BITS:
        raise ValueError(
            f"--experts {args.experts}: the engine computes with {', '.join(STORE_BITS)} experts"
        )
    with Engine.open(
        path,
        memory_budget=args.memory_budget,
        predictor=args.predictor,
        cache=args.cache,
        bits=STORE_BITS[args.experts],
        fallback=args.low_bit_fallback,
        projections=args.projections,
    ) as engine:
        budget = engine.provider.cache.budget
        print(
            f"# {path} through the engine: store {engine.store.path}, expert budget {format_size(budget)}, "
            f"predictor {args.predictor}, cache {args.cache}, io {engine.store.backend}"
            + (", misses from the low-bit copy" if args.low_bit_fallback else "")
        )
        sys.stdout.write(prompt)
        sys.stdout.flush()
        for piece in engine.generate(prompt, **sampling, seed=args.seed):
            sys.stdout.write(piece)
            sys.stdout.flush()
        steps = engine.per_token
        decode = sum(step.step_seconds for step in steps[1:])
        speed = (len(steps) - 1) / decode if decode else 0.0
        print(
            f"\n# prompt in {steps[0].step_seconds * 1e3:.0f} ms; {len(steps)} new tokens at {speed:.1f} tokens/s"
        )
        if args.stats:
            print_stats(engine.stats(), steps)
            if len(steps) > 1:
                print_roofline(engine.roofline())


def _line(label: str, c: Counters) -> str:
    return (
        f"{label:>7} {c.bytes_read / 2**20:9.2f} {c.byte_hit_rate:6.1%} {c.prefetch_precision:6.1%} "
        f"{c.prefetch_recall:6.1%} {c.stall_seconds * 1e3:9.1f} {c.expert_seconds * 1e3:9.1f} {c.step_seconds * 1e3:9.1f}"
    )


def print_roofline(roofline: dict) -> None:
    print(
        f"# roofline: {roofline['ratio']:.2f} of the bound ({roofline['bound_seconds_per_token'] * 1e3:.2f} ms/token "
        f"against {roofline['seconds_per_token'] * 1e3:.2f}): per decode token "
        f"{format_size(roofline['bytes_read_per_token'])} read at {roofline['disk_bytes_per_second'] / 1e9:.2f} GB/s "
        f"(O_DIRECT), {format_size(roofline['bytes_moved_per_token'])} moved at "
        f"{roofline['memory_bytes_per_second'] / 1e9:.1f} GB/s (STREAM triad)"
    )


def print_stats(stats: dict, steps: list[Counters]) -> None:
    print("#   token   MiB read    hit   prec recall  stall ms expert ms   step ms")
    total = Counters()
    for index, step in enumerate(steps):
        total.add(step)
        print("# " + _line(str(index), step))
    print("# " + _line("all", total))
    print(
        f"# cache: budget {format_size(stats['budget_bytes'])}, peak {format_size(stats['cache_peak_bytes'])}, "
        f"{stats['evictions']} evictions; peak RSS {format_size(stats['peak_rss_bytes'])}"
    )
