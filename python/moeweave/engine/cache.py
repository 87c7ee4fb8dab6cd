"""The expert cache of the on-device engine: experts read from the store, held in RAM up to a
byte budget (experts differ in size: their bitwidths differ), evicted by EdgeMoE's score or LRU.

EdgeMoE's score (SPEC §1) evicts first the expert with the largest L = -f / d, where f counts
the expert's activations so far and d = (i - I) mod S is how many layers ahead of the current
layer I its layer i comes (S MoE layers): rarely used experts whose layer comes farthest ahead
go first. (SPEC prints the denominator as (S - i + I) mod S, which counts layers *behind*; that
would evict the next layer's experts first, against the rule it states, so the rule is followed.)
The current layer's own experts are next used a whole cycle later: d = S for them. Experts the
current step needs are pinned and never evicted.

A prefetch is a guess, so it may only push out an expert worth less than itself: its victim
(chosen by the policy as for any read) must have a smaller value f / d than the guess's
(f + 1) / d, the guess counted as one more activation. A rarely used expert of a layer far ahead
makes room for a guess of the next layer; an expert the model keeps coming back to does not.
"""

from collections import OrderedDict
from collections.abc import Callable

import torch

from moeweave.store.buffers import aligned_empty
from moeweave.store.reader import Expert

POLICIES = ("edgemoe", "lru")


class BudgetError(ValueError):
    """The experts one step needs at once do not fit in the budget."""


class ExpertCache:
    """(layer, expert) -> Expert, at most `budget` bytes: the experts held plus the buffers of
    reads in flight, which are reserved before a read is submitted. on_evict(layer, expert) is
    called for each expert dropped (its table slot must be cleared)."""

    def __init__(self, budget: int, policy: str, layers: list[int], on_evict: Callable[[int, int], None]):
        if policy not in POLICIES:
            raise ValueError(f"cache: policy must be one of {POLICIES}, got {policy!r}")
        self.budget, self.policy, self.on_evict = budget, policy, on_evict
        self._position = {layer: p for p, layer in enumerate(layers)}  # model layer -> MoE layer index
        self._entries: OrderedDict[tuple[int, int], Expert] = OrderedDict()  # least recent first
        self._frequency: dict[tuple[int, int], int] = {}
        self.used = 0  # bytes of experts held
        self.reserved = 0  # bytes of reads in flight
        self.peak = 0  # of used + reserved
        self.evictions = 0

    def __contains__(self, key: tuple[int, int]) -> bool:
        return key in self._entries

    def get(self, layer: int, expert: int) -> Expert | None:
        found = self._entries.get((layer, expert))
        if found is not None:
            self._entries.move_to_end((layer, expert))
        return found

    def record_use(self, layer: int, expert: int) -> None:
        """Counts one activation (EdgeMoE's frequency f)."""
        self._frequency[(layer, expert)] = self._frequency.get((layer, expert), 0) + 1

    def reserve(
        self,
        nbytes: int,
        current_layer: int,
        pinned: set[tuple[int, int]],
        required: bool = True,
        guess: tuple[int, int] | None = None,
    ) -> torch.Tensor | None:
        """Makes room for a read of nbytes, evicting unpinned experts by the policy; for the
        prefetch of `guess`, only experts worth less than it (see the module docstring). Returns
        the 4 KiB-aligned buffer to read into: an evicted expert's of the same size when there is
        one (a fresh buffer costs the kernel a page fault and zeroing per 4 KiB when the read pins
        it, about as long as the read of a cached disk block), else a new one. When it cannot make
        room, raises BudgetError if the read is required (a step needs it), else returns None."""
        freed = []
        ahead = self._layers_ahead(current_layer)
        while self.used + self.reserved + nbytes > self.budget:
            victim = self._victim(ahead, pinned)
            if victim is not None and guess is not None:
                worth = (self._frequency.get(guess, 0) + 1) / ahead[guess[0]]
                if self._frequency.get(victim, 0) / ahead[victim[0]] >= worth:
                    victim = None
            if victim is None:
                if not required:
                    return None
                raise BudgetError(
                    f"expert cache: {nbytes} more bytes do not fit in the budget of {self.budget} bytes beside "
                    f"the {len(pinned)} experts this step needs and the reads in flight ({self.reserved} bytes)"
                )
            freed.append(self._evict(victim))
        self.reserved += nbytes
        self._check()
        reused = next((buffer for buffer in freed if buffer.numel() == nbytes), None)
        return aligned_empty(nbytes) if reused is None else reused

    def release(self, nbytes: int) -> None:
        """A reserved read was cancelled or failed."""
        self.reserved -= nbytes

    def fill(self, expert: Expert) -> None:
        """A reserved read completed: its expert is now held."""
        nbytes = expert.buffer.numel()
        self.reserved -= nbytes
        self._entries[(expert.layer, expert.expert)] = expert
        self.used += nbytes
        self._check()

    def clear(self) -> None:
        for key in list(self._entries):
            self._evict(key)

    def _check(self) -> None:
        # The budget is an invariant, checked on every change that adds bytes.
        if self.used + self.reserved > self.budget:
            raise AssertionError(f"expert cache over budget: {self.used} + {self.reserved} > {self.budget}")
        self.peak = max(self.peak, self.used + self.reserved)

    def _evict(self, key: tuple[int, int]) -> torch.Tensor:
        """Drops an expert; returns its buffer, free for another read."""
        expert = self._entries.pop(key)
        self.used -= expert.buffer.numel()
        self.evictions += 1
        self.on_evict(*key)
        return expert.buffer

    def _victim(self, ahead: dict[int, int], pinned: set[tuple[int, int]]) -> tuple[int, int] | None:
        """The unpinned expert to evict first (the least recent among equals), or None; ahead:
        _layers_ahead of the current layer. One plain pass: this runs once per eviction over
        every held expert."""
        if self.policy == "lru":
            return next((key for key in self._entries if key not in pinned), None)
        frequency = self._frequency
        victim, least = None, float("inf")
        for key in self._entries:
            if key not in pinned:
                value = frequency.get(key, 0) / ahead[key[0]]
                if value < least:
                    victim, least = key, value
        return victim

    def _layers_ahead(self, current_layer: int) -> dict[int, int]:
        """layer -> d, the MoE layers from the current one to it, 1..S (S for the current one)."""
        layers, now = len(self._position), self._position[current_layer]
        return {layer: (position - now) % layers or layers for layer, position in self._position.items()}
