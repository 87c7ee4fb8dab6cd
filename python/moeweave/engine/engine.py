"""The on-device engine (EdgeMoE): dense weights resident, routed experts read from an expert
store into a byte-budgeted cache as they are needed or predicted, outputs identical to the same
store's experts all in RAM.

    engine = Engine.open("store-or-hf-dir", memory_budget="1GiB")
    for piece in engine.generate("Once upon a time", max_new_tokens=64):
        print(piece, end="")
    engine.stats()
"""

import hashlib
import json
import resource
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from moeweave import envs
from moeweave.engine.cache import POLICIES, BudgetError
from moeweave.engine.fallback import DIRECTORY as FALLBACK_DIRECTORY
from moeweave.engine.fallback import open_fallback, write_fallback
from moeweave.engine.offload import OffloadedExperts
from moeweave.engine.paths import PathCounts, PathPredictor
from moeweave.engine.predictors import PREDICTORS, StaleGate
from moeweave.engine.roofline import bound_seconds, disk_bandwidth, memory_bandwidth
from moeweave.engine.sizes import format_size, parse_size
from moeweave.engine.telemetry import Counters
from moeweave.formats.hf_checkpoint import read_config, safetensors_files, safetensors_header
from moeweave.models import load
from moeweave.models.generate import TextStream, tokens
from moeweave.models.spec import spec_from_config
from moeweave.store.manifest import MANIFEST
from moeweave.store.reader import ExpertStore
from moeweave.store.writer import write_store

# Prefetches in flight at most: beyond the io engine's queue they would only wait in line
# ahead of the next demand read.
MAX_PREFETCHES = 16
# The low-bit copy written for a Hugging Face directory opened with the fallback on.
FALLBACK_BITS = 2


def is_store(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def store_for(path: str | Path, bits: int = 4) -> Path:
    """`path` if it is an expert store; for a Hugging Face checkpoint directory, its store with
    experts at `bits` (16: bf16) in the cache directory, written on first use (keyed by the
    checkpoint's content: config, file names and sizes, and each safetensors header, which holds
    every tensor's name, dtype, shape and offsets)."""
    path = Path(path)
    if is_store(path):
        return path
    digest = hashlib.sha256(json.dumps([read_config(path), bits], sort_keys=True).encode())
    for file in safetensors_files(path):
        header = safetensors_header(file)
        digest.update(file.name.encode() + len(header).to_bytes(8, "little") + header)
        digest.update(str(file.stat().st_size).encode())
    target = envs.cache_dir() / "stores" / f"{path.resolve().name}-{digest.hexdigest()[:16]}"
    if not is_store(target):
        write_store(path, target, bits=bits)
    return target


def dense_dtype(config: dict) -> torch.dtype:
    """The dtype config.json records: bfloat16 stays bfloat16, anything else runs in float32."""
    return (
        torch.bfloat16 if (config.get("dtype") or config.get("torch_dtype")) == "bfloat16" else torch.float32
    )


def peak_rss() -> int:
    """This process's peak resident bytes: VmHWM, which starts afresh at exec (ru_maxrss carries
    over the high-water mark of the process that forked this one)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Engine:
    def __init__(self, store: ExpertStore, provider: OffloadedExperts, model):
        self.store, self.provider, self.model = store, provider, model
        self.per_token: list[Counters] = []

    @classmethod
    def open(
        cls,
        path: str | Path,
        memory_budget: str | int | None = None,
        predictor: str = "stale-gate",
        cache: str = "edgemoe",
        threads: int | None = None,
        backend: str | None = None,
        bits: int = 4,
        fallback: bool = False,
        projections: str | None = None,
    ) -> "Engine":
        """path: an expert store or a Hugging Face checkpoint directory (converted once into a store
        under the cache directory). memory_budget: bytes of experts held in RAM (reads in flight
        included), e.g. "1GiB"; None holds every expert. predictor: one of PREDICTORS; cache: the
        eviction policy, one of POLICIES. bits: the experts' bitwidth when an HF directory is
        converted (16: bf16). fallback: read misses from the store's low-bit copy
        (moeweave.engine.fallback; written at FALLBACK_BITS for an HF directory): faster under a
        tight budget, no longer identical to the in-RAM model. projections: the dense projections'
        format (moeweave.models.load; default int8, as the experts are quantised)."""
        if predictor not in PREDICTORS:
            raise ValueError(f"Engine.open: predictor must be one of {PREDICTORS}, got {predictor!r}")
        if cache not in POLICIES:
            raise ValueError(f"Engine.open: cache must be one of {POLICIES}, got {cache!r}")
        if threads is not None:
            import moeweave.cpu

            moeweave.cpu.set_num_threads(threads)
        store_path = store_for(path, bits)
        if fallback and not is_store(path) and not is_store(store_path / FALLBACK_DIRECTORY):
            write_fallback(path, store_path, FALLBACK_BITS)
        store = ExpertStore(store_path, backend=backend)
        try:
            low_bits = open_fallback(store, backend) if fallback else None
        except BaseException:
            store.close()
            raise
        try:
            return cls._build(store, memory_budget, predictor, cache, low_bits, projections)
        except BaseException:
            store.close()
            if low_bits is not None:
                low_bits.close()
            raise

    @classmethod
    def _build(
        cls,
        store: ExpertStore,
        memory_budget,
        predictor: str,
        cache: str,
        fallback: ExpertStore | None,
        projections: str | None,
    ) -> "Engine":
        spec = spec_from_config(store.config)
        layers = [index for index, moe in enumerate(spec.moe_layers) if moe]
        layer_bytes = store.manifest.layer_bytes()
        total = sum(layer_bytes.values())
        budget = total if memory_budget is None else parse_size(memory_budget)
        # A prompt step may route to every expert of a layer, and they must be held at once.
        least = max(layer_bytes.values())
        if budget < least:
            raise BudgetError(
                f"memory budget {format_size(budget)} is below one layer's experts ({format_size(least)}), "
                "which a prompt step may need at once; the experts total "
                f"{format_size(total)}"
            )
        provider = OffloadedExperts(
            store, budget, cache, layers, spec.num_experts, spec.hidden_size, spec.moe_intermediate_size,
            MAX_PREFETCHES, fallback,
        )  # fmt: skip
        model = load(store.path, experts=provider, dtype=dense_dtype(store.config), projections=projections)
        if predictor == "path":
            provider.predictor = PathPredictor(PathCounts.load(store.path))
        if predictor == "stale-gate":
            provider.predictor = StaleGate([model.layers[layer].mlp.router for layer in layers], spec.top_k)
        return cls(store, provider, model)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.provider.finish()
        self.provider.cache.clear()
        self.store.close()
        if self.provider.fallback is not None:
            self.provider.fallback.close()

    def generate_tokens(
        self,
        prompt: str | list[int],
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> Iterator[int]:
        """The new token ids, each as soon as it is chosen; per-token counters in self.per_token."""
        self.per_token = []
        before, start = self.provider.counters.copy(), time.perf_counter()
        try:
            for token in tokens(self.model, prompt, max_new_tokens, temperature, top_k, top_p, seed):
                now = self.provider.counters.copy()
                step = now.minus(before)
                step.step_seconds = time.perf_counter() - start
                self.provider.counters.step_seconds += step.step_seconds
                self.per_token.append(step)
                yield token
                before, start = self.provider.counters.copy(), time.perf_counter()
        finally:
            self.provider.finish()

    def generate(self, prompt: str | list[int], **kwargs) -> Iterator[str]:
        """Text pieces of the new tokens as they are made (arguments as generate_tokens)."""
        if self.model.tokenizer is None:
            raise ValueError("Engine.generate: this model has no tokenizer; use generate_tokens")
        stream = TextStream(self.model.tokenizer)
        for token in self.generate_tokens(prompt, **kwargs):
            if piece := stream.push(token):
                yield piece

    def roofline(self, steps: list[Counters] | None = None) -> dict:
        """SPEC §1's roofline of decode steps (default: the last generation's, its prompt step
        left out), with the disk and memory bandwidth measured now (about a second)."""
        steps = self.per_token[1:] if steps is None else steps
        if not steps:
            raise ValueError("Engine.roofline: no decode step to bound; generate at least two tokens")
        disk, memory = disk_bandwidth(self.store), memory_bandwidth()
        count = len(steps)
        read = sum(s.bytes_read for s in steps) / count
        moved = self.model.dense_bytes_per_token() + sum(s.expert_bytes_needed for s in steps) / count
        bound = bound_seconds(read, moved, disk, memory)
        actual = sum(s.step_seconds for s in steps) / count
        return {
            "disk_bytes_per_second": disk,
            "memory_bytes_per_second": memory,
            "bytes_read_per_token": read,
            "bytes_moved_per_token": moved,
            "bound_seconds_per_token": bound,
            "seconds_per_token": actual,
            "ratio": bound / actual,
        }

    def stats(self) -> dict:
        """Totals since open, the last generation's per-token counters, the cache and peak RSS."""
        cache = self.provider.cache
        return {
            **self.provider.counters.summary(),
            "per_token": [c.summary() for c in self.per_token],
            "budget_bytes": cache.budget,
            "cache_bytes": cache.used,
            "cache_peak_bytes": cache.peak,
            "evictions": cache.evictions,
            "io_backend": self.store.backend,
            "fallback": self.provider.fallback is not None,
            "peak_rss_bytes": peak_rss(),
        }
