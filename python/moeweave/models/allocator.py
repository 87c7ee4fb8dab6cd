"""Loading without holding freed memory. Converting a checkpoint allocates and frees thousands of
megabyte-sized temporaries (each tensor read, its fp32 chunks, its packed form). glibc serves
them from its heap once its dynamic mmap threshold has risen (to 32 MiB, after the first large
free), and the heap's holes between long-lived packed weights are kept, not returned: measured
on a 1.4 GiB bf16 checkpoint with INT4 experts, the resident peak varied from 0.6x to 3.5x the
checkpoint from run to run. With a low fixed threshold during the load every large temporary is
its own mapping, returned when freed: the peak was 0.57x every time, for a load ~30 % slower
(fresh pages are zeroed). Other C libraries are left alone.
"""

import contextlib
import ctypes
import ctypes.util
from collections.abc import Iterator

M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
LOAD_THRESHOLD = 256 << 10  # allocations from this size get their own mapping while loading
# glibc's own ceiling of the dynamic threshold, where a process that frees large blocks ends up;
# a fixed value (mallopt disables the dynamic one for good), so later work allocates as before.
STEADY_THRESHOLD = 32 << 20


def _glibc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    libc = ctypes.CDLL(name)
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "malloc_trim") else None


@contextlib.contextmanager
def returning_freed_memory() -> Iterator[None]:
    """Inside: glibc maps every allocation of LOAD_THRESHOLD or more on its own, so freeing it
    returns it to the system; after: the steady threshold, and the heap's free pages trimmed."""
    libc = _glibc()
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, LOAD_THRESHOLD)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, STEADY_THRESHOLD)
        libc.malloc_trim(0)
