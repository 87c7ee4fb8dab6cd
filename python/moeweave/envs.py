"""Every MOEWEAVE_* environment variable, read in one place.

Each is read when used, not at import, so tests and users can set them in-process before the
first op call. ``VARIABLES`` documents them for ``moeweave info``.
"""

import os
from pathlib import Path

VARIABLES = {
    "MOEWEAVE_ISA": "force a lower CPU kernel level: scalar, avx2 or avx512 (default: the best supported)",
    "MOEWEAVE_NUM_THREADS": "threads of moeweave's native pool (default: CPUs available to the process)",
    "MOEWEAVE_CUDA": "build time: AUTO (build the CUDA module when nvcc works), ON or OFF",
    "MOEWEAVE_CUDA_ARCHS": "build time: CUDA architectures, passed to CMake (default 80;90)",
    "MOEWEAVE_IO": "expert store reads: auto (io_uring, else a pread thread pool), uring or pread (default auto)",
    "MOEWEAVE_CACHE_DIR": "where generated corpora and benchmark checkpoints go (default ~/.cache/moeweave)",
}


def isa() -> str | None:
    value = os.environ.get("MOEWEAVE_ISA", "").strip().lower()
    return value or None


def num_threads() -> int | None:
    value = os.environ.get("MOEWEAVE_NUM_THREADS", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"MOEWEAVE_NUM_THREADS must be a positive integer, got {value!r}")
    return int(value)


def io_backend() -> str:
    value = os.environ.get("MOEWEAVE_IO", "").strip().lower() or "auto"
    if value not in ("auto", "uring", "pread"):
        raise ValueError(f"MOEWEAVE_IO must be auto, uring or pread, got {value!r}")
    return value


def cache_dir() -> Path:
    value = os.environ.get("MOEWEAVE_CACHE_DIR", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "moeweave"


def set_variables() -> dict[str, str]:
    return {name: os.environ[name] for name in VARIABLES if name in os.environ}
