"""The expert pool of one MoE layer (SPEC §2, ExpertWeave's expert weight manager): one
reserved range of virtual memory, cut into equal slots, one adapter expert per slot, backed by
memory only while an expert is in it; addresses never move and nothing is re-allocated while
adapters come and go, so the tensors the fused MoE op points at stay valid.

  ExpertPool        CPU: an anonymous mapping in slots of whole pages, committed when an expert
                    is written and handed back to the kernel (madvise MADV_DONTNEED) when it
                    leaves: an adapter holds its tuned experts' bytes rounded up to pages.
  DeviceExpertPool  CUDA: device virtual memory in slots of whole allocation granules (2 MiB),
                    each mapped to physical memory while an expert is in it (cuMemMap through
                    the driver's entry points, moeweave._C_cuda).
"""

import ctypes
import mmap
from dataclasses import replace

import torch

from moeweave import _native
from moeweave.quant.experts import Projection
from moeweave.quant.format import QuantizedWeight

MAP_NORESERVE = 0x4000  # Linux's flag (the mmap module does not name it): reserve, commit on write
PART_ALIGNMENT = 64  # each tensor of a slot starts on a cache line
_libc = ctypes.CDLL(None, use_errno=True)


class PoolFull(RuntimeError):
    """Every slot of the pool holds an expert."""


class _SlotPool:
    """What both pools share: the free list and copying an expert into a slot's bytes."""

    stride: int
    capacity: int

    def _init_slots(self, capacity: int) -> None:
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))  # slot 0 is handed out first

    def put(self, expert: tuple[Projection, Projection, Projection]) -> tuple[int, tuple[Projection, ...]]:
        """Copies one expert (gate, up, down) into a free slot; returns the slot and the expert as
        views of the slot's memory."""
        if not self._free:
            raise PoolFull(f"expert pool: all {self.capacity} slots are in use")
        slot = self._free.pop()
        try:
            region = self._commit(slot)  # [stride] uint8
        except BaseException:
            self._free.append(slot)
            raise
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
        """Frees a slot and gives its memory back."""
        self._decommit(slot)
        self._free.append(slot)


class ExpertPool(_SlotPool):
    """`capacity` slots of `slot_bytes` (rounded up to pages) each, in one anonymous mapping."""

    def __init__(self, slot_bytes: int, capacity: int):
        self.stride = -(-slot_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        self._map = mmap.mmap(
            -1,
            self.stride * capacity,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_NORESERVE,
            prot=mmap.PROT_READ | mmap.PROT_WRITE,
        )
        self._bytes = torch.frombuffer(self._map, dtype=torch.uint8)  # [capacity * stride]
        self._init_slots(capacity)

    @property
    def address(self) -> int:
        return self._bytes.data_ptr()

    def _commit(self, slot: int) -> torch.Tensor:
        return self._bytes[slot * self.stride : (slot + 1) * self.stride]  # pages commit on write

    def _decommit(self, slot: int) -> None:
        self._map.madvise(mmap.MADV_DONTNEED, slot * self.stride, self.stride)

    def resident_bytes(self) -> int:
        """Bytes of the pool's range the kernel has committed (mincore: the kernel merges
        neighbouring anonymous mappings, so /proc/self/smaps cannot single this one out)."""
        pages = len(self._bytes) // mmap.PAGESIZE
        resident = (ctypes.c_ubyte * pages)()
        if _libc.mincore(ctypes.c_void_p(self.address), ctypes.c_size_t(len(self._bytes)), resident) != 0:
            raise OSError(ctypes.get_errno(), "expert pool: mincore failed")
        return int(torch.frombuffer(resident, dtype=torch.uint8).bitwise_and(1).sum()) * mmap.PAGESIZE


class DeviceExpertPool(_SlotPool):
    """`capacity` slots of `slot_bytes` (rounded up to allocation granules) each, in one reserved
    range of the virtual addresses of CUDA `device`."""

    def __init__(self, slot_bytes: int, capacity: int, device: torch.device | str):
        module = _native.cuda_module()
        if module is None:
            raise RuntimeError("DeviceExpertPool: moeweave._C_cuda is not available (built without CUDA)")
        self.device = torch.empty(0, device=device).device  # "cuda" becomes the current GPU's index
        self._pool = module.DeviceExpertPool(self.device.index, slot_bytes, capacity)
        self.stride = self._pool.stride
        self._init_slots(capacity)

    @property
    def address(self) -> int:
        return self._pool.address

    def _commit(self, slot: int) -> torch.Tensor:
        self._pool.map(slot)
        return torch.as_tensor(
            _DeviceBytes(self.address + slot * self.stride, self.stride), device=self.device
        )

    def _decommit(self, slot: int) -> None:
        torch.cuda.synchronize(self.device)  # no kernel may still read the slot's experts
        self._pool.unmap(slot)

    def resident_bytes(self) -> int:
        return self._pool.mapped_bytes()


class _DeviceBytes:
    """`nbytes` of device memory at `address`, handed to torch without a copy."""

    def __init__(self, address: int, nbytes: int):
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (address, False),
            "version": 3,
        }


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
