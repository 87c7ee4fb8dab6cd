"""Shared benchmark harness: timing (warm-up, median of N), the memory-bandwidth probe (STREAM
triad, measured in the same run as the thing it bounds), machine description, and the report
(a table on stdout plus one JSON line per configuration in bench/results/<script>.jsonl).

Absolute times on shared machines are noise; every script reports ratios against a baseline and
against the physical limit, both measured in the same run.
"""

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from moeweave.cpu import last_level_cache_bytes

RESULTS_DIR = Path(__file__).resolve().parent / "results"
L3_BYTES = last_level_cache_bytes()  # read off the machine; working sets of >= 4x it come from DRAM


def median_seconds(
    fn: Callable[[], object], repeat: int = 7, warmup: int = 2, min_time: float = 0.05
) -> float:
    """Median wall time of one call. Each sample loops until `min_time` passes, so sub-millisecond
    calls are timed over many iterations instead of at the clock's resolution."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(max(repeat, 5)):
        iterations, start = 0, time.perf_counter()
        while True:
            fn()
            iterations += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        samples.append(elapsed / iterations)
    return statistics.median(samples)


def cycling(fn: Callable, inputs: list[tuple]) -> Callable[[], object]:
    """A call of fn on the next argument tuple of `inputs`, round robin: with enough distinct
    inputs (>= 4x L3 in total) each call reads its operands from DRAM, as an MoE decode does."""
    position = 0

    def call():
        nonlocal position
        position = (position + 1) % len(inputs)
        return fn(*inputs[position])

    return call


def stream_triad_gbps(bytes_per_array: int = 4 * L3_BYTES, threads: int | None = None) -> float:
    """STREAM triad a = b + s * c over fp32 arrays far larger than the caches, in GB/s
    (3 arrays moved per element, write-allocate traffic not counted, as STREAM does)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        n = bytes_per_array // 4
        a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
        seconds = median_seconds(lambda: torch.add(b, c, alpha=3.0, out=a), repeat=5, min_time=0.2)
        return 3 * n * 4 / seconds / 1e9
    finally:
        torch.set_num_threads(previous)


def machine() -> dict:
    import moeweave.cpu

    return {
        "cpu": moeweave.cpu.cpuinfo_field("model name") or platform.processor(),
        "cpus": len(os.sched_getaffinity(0)),
        "isa": moeweave.cpu.current_isa(),
        "threads": moeweave.cpu.num_threads(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


@dataclass
class Row:
    name: str
    config: str
    value: float  # the measured quantity, in `unit`
    unit: str
    baseline: str  # what `ratio` compares against
    ratio: float  # our speed / baseline speed (> 1 means faster)
    limit_ratio: float | None  # achieved / physical limit (bandwidth measured in the same run)


class Report:
    """Collects rows; `finish` prints the table and appends the JSON lines."""

    def __init__(self, script: str, limits: dict[str, float]):
        self.script = Path(script).stem
        self.limits = limits
        self.rows: list[Row] = []
        self.machine = machine()

    def add(self, row: Row) -> None:
        self.rows.append(row)
        limit = f"{row.limit_ratio:6.2f}" if row.limit_ratio is not None else "     -"
        print(
            f"{row.name:<28} {row.config:<34} {row.value:>10.3f} {row.unit:<7} "
            f"{row.ratio:>6.2f}x vs {row.baseline:<22} limit {limit}",
            flush=True,
        )

    def header(self) -> None:
        limits = ", ".join(f"{k} = {v:.1f}" for k, v in self.limits.items())
        print(
            f"# {self.script}: {self.machine['cpu']}, {self.machine['cpus']} CPUs, ISA {self.machine['isa']}"
        )
        print(f"# limits measured in this run: {limits}")
        print(
            f"{'name':<28} {'config':<34} {'value':>10} {'unit':<7} {'ratio':>7} {'baseline':<25} limit ratio"
        )

    def finish(self) -> None:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        with open(RESULTS_DIR / f"{self.script}.jsonl", "a") as out:
            for row in self.rows:
                out.write(json.dumps({**asdict(row), "machine": self.machine, "limits": self.limits}) + "\n")
        print(
            f"# {len(self.rows)} rows appended to {RESULTS_DIR / (self.script + '.jsonl')}", file=sys.stderr
        )


def bench_checkpoint(layers: int, vocab: int, preset: str = "qwen3-30b-a3b") -> Path:
    """A demo-model recipe preset (by default Qwen3-30B-A3B: 128 experts of 768, top-8, hidden
    2048, 32/4 heads of 128; "mixtral-8x7b": 8 experts of 14336, top-2, hidden 4096, 32/8 heads
    of 128) with `layers` layers, a `vocab`-token vocabulary and random weights, written once
    into the cache directory, one directory per preset and size."""
    from moeweave import envs
    from moeweave.recipes.demo_model.random_checkpoint import preset_config, write_random_checkpoint

    path = envs.cache_dir() / f"bench-{preset}-shapes-{layers}l-{vocab}v-unit-embeddings"
    if not (path / "config.json").exists():
        config = preset_config(preset, layers, vocab_size=vocab, bos_token_id=None, eos_token_id=None)
        write_random_checkpoint(config, path)
    return path
