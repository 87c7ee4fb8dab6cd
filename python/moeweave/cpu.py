"""Control of the native CPU kernels: which ISA level they dispatch to and how many threads
their pool uses. MOEWEAVE_ISA and MOEWEAVE_NUM_THREADS set the same things from outside. Also
the process's heap policy (keep_freed_memory).
"""

import contextlib
import ctypes
import functools
import os
from collections.abc import Iterator
from pathlib import Path

from moeweave._native import require_cpu_module

FALLBACK_CACHE_BYTES = 32 << 20  # when the machine does not say: the smallest L3 seen here
# glibc's mallopt parameter, and the free bytes its heap may keep at the top before it returns
# them to the kernel.
M_TRIM_THRESHOLD = -1
KEEP_FREED_BYTES = 1 << 30


def last_level_cache_bytes() -> int:
    """Bytes of the largest cache this CPU reports: sysfs (cpu0's cache indices), else
    sysconf(_SC_LEVEL3_CACHE_SIZE), else FALLBACK_CACHE_BYTES. Working sets meant to come from
    DRAM (bandwidth probes, benchmarks) are sized from it; this family of machines ranged from
    32 MiB to 300 MiB."""
    sizes = [
        _parse_size(p.read_text()) for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size")
    ]
    with contextlib.suppress(ValueError, OSError, AttributeError):
        sizes.append(os.sysconf("SC_LEVEL3_CACHE_SIZE"))
    return max([s for s in sizes if s > 0], default=FALLBACK_CACHE_BYTES)


def keep_freed_memory() -> None:
    """Lets glibc's heap keep up to 1 GiB of freed memory for reuse. By default it hands the top
    of the heap back to the kernel as soon as 128 KiB there are free, so a forward's
    intermediates, freed and allocated again each step, come back as fresh pages: 4-39 thousand
    page faults per 512-token prefill of the Qwen3-shaped benchmark checkpoint, 58-156 thousand
    at 2048 tokens, 12-23 % of that prefill's time (docs/benchmarks.md, "Page faults"). The
    `moeweave` command and `serve --ray`'s replicas call this at start. An explicit
    MALLOC_TRIM_THRESHOLD_ wins; C libraries without mallopt are left alone."""
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is not None:
        mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


def _parse_size(text: str) -> int:
    """sysfs writes cache sizes as '32768K' or '105M'."""
    text = text.strip()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text) if text.isdigit() else 0


def cpuinfo_field(name: str) -> str:
    """The value of the first /proc/cpuinfo line named `name` ("model name", "flags"), or ""
    where the file or the field is missing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    return ""


@functools.cache
def has_amx_bf16() -> bool:
    """Whether the CPU has AMX-BF16 tiles (its /proc/cpuinfo flags), which torch's bf16 GEMMs use
    through oneDNN."""
    return "amx_bf16" in cpuinfo_field("flags").split()


def has_avx512_bf16() -> bool:
    """Whether the CPU has AVX512-BF16: at the avx512 level, attention over a bf16 cache then
    multiplies bf16 pairs (twice the fp32 rate) instead of converting the cache to fp32."""
    return bool(require_cpu_module().avx512_bf16_supported())


def supported_isas() -> list[str]:
    """ISA levels this CPU runs, lowest first (a subset of scalar, avx2, avx512)."""
    return list(require_cpu_module().supported_isas())


def current_isa() -> str:
    return require_cpu_module().current_isa()


def set_isa(name: str) -> None:
    """Dispatch CPU kernels to ``name``; ValueError when the CPU lacks it."""
    require_cpu_module().set_isa(name)


@contextlib.contextmanager
def use_isa(name: str) -> Iterator[None]:
    """Run a block with the CPU kernels at ``name``, then restore the previous level."""
    previous = current_isa()
    set_isa(name)
    try:
        yield
    finally:
        set_isa(previous)


def num_threads() -> int:
    return require_cpu_module().num_threads()


def set_num_threads(n: int) -> None:
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    require_cpu_module().set_num_threads(n)
