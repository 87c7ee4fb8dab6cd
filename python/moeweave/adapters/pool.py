"""The expert pool of one MoE layer on CPU (SPEC §2, ExpertWeave's expert weight manager): one
reserved range of virtual memory, cut into equal slots of whole pages, one adapter expert per
slot. Pages are committed when an expert is written into its slot and handed back to the kernel
(madvise MADV_DONTNEED) when it leaves, so the memory an adapter holds is its tuned experts'
bytes rounded up to pages; addresses never move and nothing is re-allocated while adapters come
and go, so the tensors the fused MoE op points at stay valid.
"""

import ctypes
import mmap
from dataclasses import replace

import torch

from moeweave.quant.experts import Projection
from moeweave.quant.format import QuantizedWeight

MAP_NORESERVE = 0x4000  # Linux's flag (the mmap module does not name it): reserve, commit on write
PART_ALIGNMENT = 64  # each tensor of a slot starts on a cache line
_libc = ctypes.CDLL(None, use_errno=True)


class PoolFull(RuntimeError):
    """Every slot of the pool holds an expert."""


class ExpertPool:
    """`capacity` slots of `slot_bytes` (rounded up to pages) each, in one anonymous mapping."""

    def __init__(self, slot_bytes: int, capacity: int):
        self.stride = -(-slot_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        self.capacity = capacity
        self._map = mmap.mmap(
            -1,
            self.stride * capacity,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)  # [capacity * stride]
        self._free = list(range(capacity - 1, -1, -1))  # slot 0 is handed out first

    @property
    def address(self) -> int:
        return self._bytes.data_ptr()

    def put(self, expert: tuple[Projection, Projection, Projection]) -> tuple[int, tuple[Projection, ...]]:
        """Copies one expert (gate, up, down) into a free slot; returns the slot and the expert as
        views of the slot's memory."""
        if not self._free:
            raise PoolFull(f"expert pool: all {self.capacity} slots are in use")
        slot = self._free.pop()
        region = self._bytes[slot * self.stride : (slot + 1) * self.stride]
        cursor = 0

        def place(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal cursor
            nbytes = tensor.numel() * tensor.element_size()
            if cursor + nbytes > self.stride:
                raise ValueError(f"expert pool: an expert needs more than the slot's {self.stride} bytes")
            view = region[cursor : cursor + nbytes].view(tensor.dtype).view(tensor.shape)
            view.copy_(tensor)
            cursor = -(-(cursor + nbytes) // PART_ALIGNMENT) * PART_ALIGNMENT
            return view

        try:
            placed = tuple(_map_tensors(w, place) for w in expert)
        except BaseException:
            self.release(slot)
            raise
        return slot, placed

    def release(self, slot: int) -> None:
        """Frees a slot and gives its pages back to the kernel."""
        self._map.madvise(mmap.MADV_DONTNEED, slot * self.stride, self.stride)
        self._free.append(slot)

    def resident_bytes(self) -> int:
        """Bytes of the pool's range the kernel has committed (mincore: the kernel merges
        neighbouring anonymous mappings, so /proc/self/smaps cannot single this one out)."""
        pages = len(self._bytes) // mmap.PAGESIZE
        resident = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.c_void_p(self.address), ctypes.c_size_t(len(self._bytes)), resident) != 0:
            raise OSError(ctypes.get_errno(), "expert pool: mincore failed")
        return int(torch.frombuffer(resident, dtype=torch.uint8).bitwise_and(1).sum()) * mmap.PAGESIZE


def slot_bytes(expert: tuple[Projection, Projection, Projection]) -> int:
    """The bytes one expert takes in a slot, each tensor aligned as put() places it."""
    total = 0

    def measure(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total = -(-(total + tensor.numel() * tensor.element_size()) // PART_ALIGNMENT) * PART_ALIGNMENT
        return tensor

    for w in expert:
        _map_tensors(w, measure)
    return total


def _map_tensors(w: Projection, fn) -> Projection:
    """w with fn applied to each of its tensors (a bf16 matrix, or packed, scales and zeros)."""
    if isinstance(w, QuantizedWeight):
        return replace(
            w, packed=fn(w.packed), scales=fn(w.scales), zeros=None if w.zeros is None else fn(w.zeros)
        )
    return fn(w)
