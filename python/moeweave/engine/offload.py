"""The expert provider of the on-device engine: a layer's routed experts come from the expert
store through the byte-budgeted cache, and the predicted experts of the next layer are read
while this one computes.

Per MoE layer call: the predictor first guesses the next layer's experts, which are then
protected from eviction; every needed expert is a cache hit, a prefetch already in flight
(promoted ahead of the other queued reads), or a demand read; the step waits only for those.
Then, before the fused expert op runs, the guesses not yet held are submitted as prefetches:
only guesses of ranks that have been right often enough (PREFETCH_PRECISION), only as many as
the disk can read before the next layer asks (measured), and each into free room of the budget
or in place of experts worth less than the guess (moeweave.engine.cache: a prefetch free to
evict anything pushed out experts still in use and made decode 3x slower on a
concentrated-routing benchmark checkpoint). Prefetches for this layer that the step did not
need are cancelled if still queued, or kept in the cache if already read.
Each layer has one ExpertTable whose slots follow the cache (filled on insert, emptied on
eviction), so no table is rebuilt per call.

Dimension legend: T tokens, H hidden, K experts per token, E experts of a layer.
"""

import contextlib
import time
from collections import Counter

import torch

from moeweave.engine.cache import ExpertCache
from moeweave.engine.predictors import Predictor
from moeweave.engine.telemetry import Counters
from moeweave.ops import moe_experts
from moeweave.quant import ExpertTable
from moeweave.store.reader import ExpertStore, ReadHandle

# A guess is read ahead only if guesses of its rank were right this often so far. A wrong one
# costs a whole read and a right one saves at most one (less when the overlap is partial), so it
# takes more than 1/2; on the Qwen3-30B-A3B-shaped benchmark checkpoint the stale gate's ranks
# 0-2 were right 96, 90 and 79 % of the time and ranks 3-7 37-62 %, and reading those too made
# decode slower than reading on demand.
PREFETCH_PRECISION = 0.75


class OffloadedExperts:
    """layers: the model layers that are MoE layers, in order; experts per layer E."""

    def __init__(
        self,
        store: ExpertStore,
        budget: int,
        policy: str,
        layers: list[int],
        num_experts: int,
        hidden_size: int,
        intermediate_size: int,
        max_prefetches: int,
        fallback: ExpertStore | None = None,
    ):
        """fallback: the low-bit copy of the store's experts that misses are read from
        (moeweave.engine.fallback), or None: misses read the full expert."""
        self.store, self.layers, self.max_prefetches = store, layers, max_prefetches
        self.num_experts, self.fallback = num_experts, fallback
        self._position = {layer: p for p, layer in enumerate(layers)}
        self.tables = {
            layer: ExpertTable.empty(num_experts, hidden_size, intermediate_size) for layer in layers
        }
        self.cache = ExpertCache(
            budget, policy, layers, on_evict=lambda layer, e: self.tables[layer].set_slot(e, None)
        )
        self.predictor: Predictor | None = None
        self.pending: dict[tuple[int, int], ReadHandle] = {}  # prefetches in flight
        self._predicted: dict[tuple[int, int], int] = {}  # guesses for the layer that comes next -> rank
        # Per guess rank (0: the most likely): guesses made and right so far, prefetched or not.
        self._made: Counter[int] = Counter()
        self._right: Counter[int] = Counter()
        self.counters = Counters()
        # What the disk can read before the next layer asks: the window from issuing a layer's
        # prefetches to the next layer's call, times the rate reads reached waiting steps.
        self._window = 0.0  # seconds, smoothed
        self._bandwidth = 0.0  # bytes/s, smoothed
        self._issued_at: float | None = None  # when the last prefetches were issued

    def _size(self, layer: int, expert: int) -> int:
        return self.store.extent(layer, expert).length

    def __call__(self, layer: int, x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor):
        """x [T, H], topk_ids [T, K], topk_weights [T, K] -> [T, H] in x's dtype."""
        counters = self.counters
        if self._issued_at is not None:
            self._window = _smoothed(self._window, time.perf_counter() - self._issued_at)
        ids = topk_ids.to(torch.int32)
        # Slots past the base's experts hold adapter experts (moeweave.adapters.AdapterSet), which
        # live in RAM outside the budget: only base experts come from the store.
        needed = [e for e in ids.unique().tolist() if e < self.num_experts]
        keys = {(layer, e) for e in needed}
        guesses = self.predictor(self._position[layer], x, ids) if self.predictor is not None else []
        next_keys = self._next_keys(layer, guesses)
        self._score_guesses(layer, keys)
        start = time.perf_counter()
        self._drop_stale(layer, keys)
        waiting, waited_bytes = [], 0
        try:
            for e in needed:
                key, size = (layer, e), self._size(layer, e)
                self.cache.record_use(layer, e)
                counters.needed += 1
                counters.expert_bytes_needed += size
                counters.predicted_needed += key in self._predicted
                if self.cache.get(layer, e) is not None:
                    counters.hit_bytes += size
                    continue
                handle = self.pending.pop(key, None)
                if handle is not None:
                    handle.promote()
                    counters.prefetches_used += 1
                else:
                    source = self.fallback or self.store
                    nbytes = source.extent(layer, e).length
                    # The next layer's predicted experts are spared while the budget allows.
                    buffer = self.cache.reserve(nbytes, layer, keys | next_keys.keys(), required=False)
                    if buffer is None:
                        buffer = self.cache.reserve(nbytes, layer, keys)
                    handle = source.prefetch(layer, e, into=buffer, priority="demand")
                    counters.demand_reads += 1
                    counters.fallback_reads += source is self.fallback
                    counters.bytes_read += nbytes
                waiting.append(handle)
                waited_bytes += handle.nbytes
        except BaseException:
            with contextlib.suppress(Exception):  # the reads already submitted are settled first
                self._fill_all(waiting)
            raise
        self._fill_all(waiting)
        stall = time.perf_counter() - start
        counters.stall_seconds += stall
        if waited_bytes and stall > 0:
            self._bandwidth = _smoothed(self._bandwidth, waited_bytes / stall)
        self._predicted = next_keys
        self._prefetch(layer, next_keys, keys)
        start = time.perf_counter()
        y = moe_experts(x, ids, topk_weights.float(), self.tables[layer])
        counters.expert_seconds += time.perf_counter() - start
        return y

    def _fill(self, handle: ReadHandle) -> None:
        """Waits for a reserved read and puts its expert in the cache and the layer's table."""
        try:
            expert = handle.wait()
        except Exception:
            self.cache.release(handle.nbytes)
            raise
        self.cache.fill(expert)
        self.tables[expert.layer].set_slot(expert.expert, expert.projections)

    def _fill_all(self, handles: list[ReadHandle]) -> None:
        """_fill each; after a failure the rest are still settled (no reservation or buffer leaks)
        before the first error is raised."""
        error = None
        for handle in handles:
            try:
                self._fill(handle)
            except Exception as failure:  # re-raised below, once the others are settled
                error = error or failure
        if error is not None:
            raise error

    def _settle(self, key: tuple[int, int]) -> None:
        """Ends a prefetch nobody waits for: cancelled while queued, else its expert kept. A failed
        speculative read is only dropped: it fails again, and is reported, if a step needs it."""
        handle = self.pending.pop(key)
        if handle.cancel():
            self.cache.release(handle.nbytes)
            self.counters.prefetches_cancelled += 1
            return
        with contextlib.suppress(Exception):  # _fill released the reservation
            self._fill(handle)

    def _drop_stale(self, layer: int, needed: set[tuple[int, int]]) -> None:
        """Prefetches for this layer that the step does not need."""
        for key in [k for k in self.pending if k[0] == layer and k not in needed]:
            self._settle(key)

    def _next_keys(self, layer: int, guesses: list[int]) -> dict[tuple[int, int], int]:
        """The guesses as keys of the next MoE layer, each with its rank."""
        position = self._position[layer]
        if position + 1 >= len(self.layers):
            return {}
        return {(self.layers[position + 1], e): rank for rank, e in enumerate(guesses)}

    def _score_guesses(self, layer: int, needed: set[tuple[int, int]]) -> None:
        """Counts, per rank, the guesses made for this layer and those it needed."""
        for key, rank in self._predicted.items():
            if key[0] == layer:
                self._made[rank] += 1
                self._right[rank] += key in needed

    def _precision(self, rank: int) -> float:
        """How often guesses of this rank were right so far (1 of 2 before any is seen)."""
        return (self._right[rank] + 1) / (self._made[rank] + 2)

    def _prefetch(
        self, layer: int, next_keys: dict[tuple[int, int], int], needed: set[tuple[int, int]]
    ) -> None:
        """While `layer` computes, reads the guesses (most likely first) not yet held, as many as
        the disk can read before the next layer asks (at least one): a read still in flight then
        cannot be cancelled, and a wrong one delays the next layer's demand reads."""
        allowance = self._window * self._bandwidth - sum(handle.nbytes for handle in self.pending.values())
        for key, rank in next_keys.items():  # most likely first
            if key in self.cache or key in self.pending or self._precision(rank) < PREFETCH_PRECISION:
                continue
            if len(self.pending) >= self.max_prefetches:
                break  # the io queue is full: a prefetch now would only delay demand reads
            size = self._size(*key)
            if size > allowance and self.pending:
                break
            allowance -= size
            buffer = self.cache.reserve(size, layer, needed | next_keys.keys(), required=False, guess=key)
            if buffer is None:
                break
            self.pending[key] = self.store.prefetch(*key, into=buffer)
            self.counters.prefetches += 1
            self.counters.bytes_read += size
        self._issued_at = time.perf_counter()

    def finish(self) -> None:
        """Ends a generation: reads still in flight are cancelled or absorbed, so no read handle or
        buffer outlives it (the cache keeps its experts for the next one)."""
        for key in list(self.pending):
            self._settle(key)
        self._predicted = {}
        self._issued_at = None  # the time until the next generation is not a compute window


def _smoothed(average: float, sample: float, weight: float = 0.25) -> float:
    """An exponential moving average; the first sample starts it."""
    return sample if average == 0.0 else average + weight * (sample - average)
