"""The expert slot table of the fused MoE op: for each expert slot, its gate, up and down
projections in any format (QuantizedWeight of any bitwidth, or a bf16 tensor), flattened into
one int64 tensor of pointers and format fields that the native kernel reads.

The table holds references to every tensor it points into, so the memory stays valid while the
table lives. A cache or adapter pool builds its own table over its own memory in the same way.
"""

import weakref
from collections.abc import Sequence

import torch

from moeweave.quant.format import QuantizedWeight

# Column order of a table row; must match csrc/bindings/quant_cpu.cpp.
FIELDS = ("packed", "scales", "zeros", "n", "k", "bits", "group_size", "scale_dtype")
_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # moeweave::DType

# A projection weight [N, K]: a plain tensor, or packed (QuantizedWeight). The one meaning of the name.
Projection = QuantizedWeight | torch.Tensor

# Live tables by the address of their pointer tensor: an op sees only that tensor, and its
# plain-torch fallback needs the experts themselves.
_live: "weakref.WeakValueDictionary[int, ExpertTable]" = weakref.WeakValueDictionary()


def _row(w: Projection) -> list[int]:
    if isinstance(w, QuantizedWeight):
        zeros = 0 if w.zeros is None else w.zeros.data_ptr()
        return [
            w.packed.data_ptr(),
            w.scales.data_ptr(),
            zeros,
            w.n,
            w.k,
            w.bits,
            w.group_size,
            _DTYPE_CODES[w.scales.dtype],
        ]
    if w.dtype != torch.bfloat16 or w.dim() != 2 or not w.is_contiguous():
        raise ValueError(
            f"ExpertTable: a plain projection must be a contiguous 2-D bfloat16 tensor, got {w.dtype} "
            f"{list(w.shape)}"
        )
    return [w.data_ptr(), 0, 0, w.shape[0], w.shape[1], 16, 0, 0]


def _shape(w: Projection) -> tuple[int, int]:
    return tuple(w.shape)


class ExpertTable:
    """experts[e] = (gate [I, H], up [I, H], down [H, I]); all experts share H and I. A slot may
    be empty (None): an expert cache fills and clears slots in place with set_slot, and the op
    refuses a token routed to an empty slot."""

    def __init__(self, experts: Sequence[tuple[Projection, Projection, Projection]]):
        if not experts:
            raise ValueError("ExpertTable: needs at least one expert")
        first = tuple(experts[0])
        if len(first) != 3:
            raise ValueError(f"ExpertTable: expert 0 must be (gate, up, down), got {len(first)} items")
        inter, hidden = _shape(first[0])
        self._init(len(experts), hidden, inter, first[0].device)
        for e, projections in enumerate(experts):
            self.set_slot(e, projections)

    @classmethod
    def empty(
        cls, num_slots: int, hidden_size: int, intermediate_size: int, device: torch.device | str = "cpu"
    ) -> "ExpertTable":
        """A table of `num_slots` empty slots for experts of the given sizes."""
        if num_slots < 1:
            raise ValueError(f"ExpertTable.empty: needs at least one slot, got {num_slots}")
        table = cls.__new__(cls)
        # "cuda" names the current GPU, which tensors on it report as "cuda:0" (or its index).
        table._init(num_slots, hidden_size, intermediate_size, torch.empty(0, device=device).device)
        return table

    def _init(self, num_slots: int, hidden: int, inter: int, device: torch.device) -> None:
        self.experts: list[tuple[Projection, Projection, Projection] | None] = [None] * num_slots
        self.device = device
        self.hidden_size, self.intermediate_size = hidden, inter
        # Always a CPU tensor: the pointers are read on the host, even for experts on a GPU.
        self.table = torch.zeros(num_slots, 3, len(FIELDS), dtype=torch.int64)
        _live[self.table.data_ptr()] = self

    def set_slot(self, e: int, projections: tuple[Projection, Projection, Projection] | None) -> None:
        """Puts an expert (gate, up, down) in slot e, or empties it (None). The table keeps the
        tensors alive while they are in it."""
        if projections is None:
            self.experts[e] = None
            self.table[e] = 0
            return
        projections = tuple(projections)
        if len(projections) != 3:
            raise ValueError(
                f"ExpertTable: expert {e} must be (gate, up, down), got {len(projections)} items"
            )
        hidden, inter = self.hidden_size, self.intermediate_size
        shapes = [_shape(w) for w in projections]
        if shapes != [(inter, hidden), (inter, hidden), (hidden, inter)]:
            raise ValueError(
                f"ExpertTable: expert {e} has projection shapes {shapes}; expected gate and up "
                f"[{inter}, {hidden}] and down [{hidden}, {inter}]"
            )
        if any(w.device != self.device for w in projections):
            raise ValueError(f"ExpertTable: expert {e} is not on {self.device} like the table")
        self.table[e] = torch.tensor([_row(w) for w in projections], dtype=torch.int64)
        self.experts[e] = projections

    @staticmethod
    def owning(table: torch.Tensor) -> "ExpertTable":
        """The live ExpertTable whose pointer tensor is `table`."""
        found = _live.get(table.data_ptr())
        if found is None:
            raise ValueError("ExpertTable.owning: this pointer tensor belongs to no live ExpertTable")
        return found

    def __len__(self) -> int:
        return len(self.experts)

    def __getitem__(self, e: int) -> tuple[Projection, Projection, Projection] | None:
        return self.experts[e]

    @property
    def nbytes(self) -> int:
        def size(w: Projection) -> int:
            return w.nbytes if isinstance(w, QuantizedWeight) else w.numel() * w.element_size()

        return sum(size(w) for projections in self.experts if projections is not None for w in projections)
