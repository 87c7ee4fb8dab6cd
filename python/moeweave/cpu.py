"""Control of the native CPU kernels: which ISA level they dispatch to and how many threads
their pool uses. MOEWEAVE_ISA and MOEWEAVE_NUM_THREADS set the same things from outside.
"""

import contextlib
from collections.abc import Iterator

from moeweave._native import require_cpu_module


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
