"""The KV cache of incremental decoding: per layer, buffers of cached keys and values that grow
in place, and per model call, the attention mask of everything cached.

Dimension legend: B batch, T cached tokens, D head dim, L layers.
"""

from dataclasses import dataclass, field

import torch


class LayerCache:
    """One layer's cached tensors ([B, heads, T, D] each), grown along T inside buffers whose
    capacity doubles, so a decode step appends in place instead of copying the whole cache.
    `capacity` (optional) is the length the first buffers are made for: a generation that knows
    its final length allocates once."""

    def __init__(self, capacity: int = 0):
        self.buffers: list[torch.Tensor] = []
        self.length = 0
        self.capacity = capacity

    def make_room(self, shapes: list[tuple[int, int, int]], like: torch.Tensor, added: int) -> None:
        """Makes sure `added` more positions fit: buffers [B, heads, capacity, D] for the (B, heads,
        D) of `shapes`, with like's dtype and device, growing (and copying) when they are full."""
        if self.buffers and self.length + added <= self.buffers[0].shape[2]:
            return
        capacity = max(2 * (self.length + added), 256, self.capacity)
        grown = [like.new_empty(batch, heads, capacity, dim) for batch, heads, dim in shapes]
        for target, old in zip(grown, self.buffers, strict=False):
            target[:, :, : self.length] = old[:, :, : self.length]
        self.buffers = grown

    def extend(self, *new: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Appends new [B, heads, S, D] tensors; returns views of everything cached so far."""
        added = new[0].shape[2]
        self.make_room([(t.shape[0], t.shape[1], t.shape[3]) for t in new], new[0], added)
        for buffer, t in zip(self.buffers, new, strict=True):
            buffer[:, :, self.length : self.length + added] = t
        self.length += added
        return tuple(buffer[:, :, : self.length] for buffer in self.buffers)


@dataclass
class KVCache:
    """Every layer's cached keys and values (a LayerCache each) and the attention mask [B, T].
    `capacity`: the length its buffers are first made for (0: grown as needed)."""

    layers: list[LayerCache] = field(default_factory=list)
    mask: torch.Tensor | None = None
    capacity: int = 0
    # The buffers' addresses [B, L, 2] for the native decode step, with the (address, capacity)
    # of the first buffer they were read at (moeweave.models.native_decode).
    addresses: tuple[tuple[int, int], torch.Tensor] | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return 0 if self.mask is None else self.mask.shape[1]
