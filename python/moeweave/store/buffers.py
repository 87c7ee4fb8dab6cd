"""Aligned read buffers: O_DIRECT reads need 4 KiB-aligned memory, which torch's allocator does
not promise, so a buffer is a view into a slightly larger allocation. Typed views of its parts
(packed bytes, scales, biases) are made without copying, so a read lands directly in the memory
the MoE kernels use."""

import torch

from moeweave.store.manifest import ALIGNMENT, Part


def aligned_empty(nbytes: int, alignment: int = ALIGNMENT) -> torch.Tensor:
    """An uninitialised uint8 tensor of `nbytes` whose first byte is `alignment`-aligned; the view
    keeps its allocation alive."""
    raw = torch.empty(nbytes + alignment, dtype=torch.uint8)
    start = -raw.data_ptr() % alignment
    return raw[start : start + nbytes]


def part_view(buffer: torch.Tensor, part: Part, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """The bytes of `part` in `buffer` (uint8, 1-D) as a `dtype` tensor of `shape`, no copy."""
    return buffer[part.offset : part.offset + part.length].view(dtype).view(shape)
