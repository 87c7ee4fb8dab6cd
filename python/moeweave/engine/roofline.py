"""The decode roofline of SPEC §1 for the engine's telemetry: a token cannot take less than
max(D / B_disk, M / B_mem), D the bytes it read from storage (wasted prefetches included), M the
bytes it moved through memory (dense weights plus the experts it used; the KV cache, small at
these lengths, is left out, which only loosens the bound), with B_disk and B_mem measured on
this machine in the same run: the store's own O_DIRECT reader at its queue depth, and a STREAM
triad. The compute bound F / P is left out too: decode is bound by bytes, not FLOPs.
"""

import time
from collections import deque

import torch

from moeweave.cpu import last_level_cache_bytes
from moeweave.store.reader import ExpertStore

DISK_SAMPLE_BYTES = 256 << 20


def disk_bandwidth(store: ExpertStore, sample_bytes: int = DISK_SAMPLE_BYTES, in_flight: int = 16) -> float:
    """Bytes/s of reading experts spread over the store (up to sample_bytes) with its reader:
    O_DIRECT, so from the disk and not the page cache, `in_flight` reads queued at a time as
    prefetches are (so the buffers held stay small)."""
    experts = store.experts()
    per_expert = max(1, sum(store.extent(*key).length for key in experts) // len(experts))
    sample = experts[:: max(1, len(experts) * per_expert // sample_bytes)]
    queue: deque = deque()
    total, start = 0, time.perf_counter()
    for key in sample:
        if len(queue) == in_flight:
            total += queue.popleft().wait().buffer.numel()
        queue.append(store.prefetch(*key))
    while queue:
        total += queue.popleft().wait().buffer.numel()
    return total / (time.perf_counter() - start)


def memory_bandwidth(array_bytes: int | None = None) -> float:
    """Bytes/s of the STREAM triad a = b + s * c over fp32 arrays (3 arrays moved per element, as
    STREAM counts), the best of 5. The arrays default to the last-level cache's size each (64 MiB
    at least): the three together overflow it, so the triad reads DRAM and not a large L3."""
    n = (array_bytes or max(64 << 20, last_level_cache_bytes())) // 4
    a, b, c = torch.empty(n), torch.rand(n), torch.rand(n)
    torch.add(b, c, alpha=3.0, out=a)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        torch.add(b, c, alpha=3.0, out=a)
        best = min(best, time.perf_counter() - start)
    return 3 * n * 4 / best


def bound_seconds(bytes_read: float, bytes_moved: float, disk_bps: float, memory_bps: float) -> float:
    """The least time a token can take: its storage reads or its memory traffic, whichever is slower."""
    return max(bytes_read / disk_bps, bytes_moved / memory_bps)
