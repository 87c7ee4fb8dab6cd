"""The packed weight-only quantisation format: Python mirror of
csrc/include/moeweave/quant_formats.h (read that header for the byte layout).

Dimension legend: N output rows, K input columns of a weight W [N, K] (y = x W^T); Np, Kp the
padded sizes (multiples of 16 and of 32 / the group size); T16 = Np / 16 tiles, U = Kp / 32
units, G = Kp / group_size groups.
"""

from dataclasses import dataclass

import torch

TILE_ROWS = 16
UNIT_COLS = 32
QUADS_PER_UNIT = UNIT_COLS // 4
QUAD_BYTES = TILE_ROWS * 4
SUPPORTED_BITS = (2, 3, 4, 8)
SCALE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def unit_bytes(bits: int) -> int:
    return bits * QUADS_PER_UNIT * QUAD_BYTES // 8


def padded(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


@dataclass
class QuantizedWeight:
    """A [n, k] weight stored as b-bit integers with per-(row, group) scales (and zeros).

    packed [T16, U, unit_bytes(bits)] uint8; scales [T16, G, 16] and zeros (asymmetric only) of
    one of SCALE_DTYPES. W[r, c] ~= scale * (q - zero); symmetric formats have zero = 2^(bits-1).
    """

    packed: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    n: int
    k: int
    bits: int
    group_size: int

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"QuantizedWeight: bits must be one of {SUPPORTED_BITS}, got {self.bits}")
        if self.group_size % UNIT_COLS:
            raise ValueError(f"QuantizedWeight: group_size must be a multiple of 32, got {self.group_size}")
        if self.scales.dtype not in SCALE_DTYPES:
            raise ValueError(
                f"QuantizedWeight: scales must be float32, float16 or bfloat16, got {self.scales.dtype}"
            )
        tiles, units = padded(self.n, TILE_ROWS) // TILE_ROWS, self.padded_k // UNIT_COLS
        expected = {
            "packed": (self.packed, (tiles, units, unit_bytes(self.bits)), torch.uint8),
            "scales": (self.scales, (tiles, self.padded_k // self.group_size, TILE_ROWS), self.scales.dtype),
        }
        if self.zeros is not None:
            expected["zeros"] = (self.zeros, tuple(self.scales.shape), self.scales.dtype)
        for name, (tensor, shape, dtype) in expected.items():
            if tuple(tensor.shape) != shape or tensor.dtype != dtype:
                raise ValueError(
                    f"QuantizedWeight: '{name}' must be {dtype} {list(shape)} for a {self.bits}-bit "
                    f"[{self.n}, {self.k}] weight with group_size {self.group_size}, "
                    f"got {tensor.dtype} {list(tensor.shape)}"
                )
            if not tensor.is_contiguous():
                raise ValueError(f"QuantizedWeight: '{name}' must be contiguous")

    @property
    def sym(self) -> bool:
        return self.zeros is None

    @property
    def padded_k(self) -> int:
        return padded(self.k, self.group_size)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n, self.k)

    @property
    def device(self) -> torch.device:
        return self.packed.device

    @property
    def nbytes(self) -> int:
        """Bytes in memory (and on disk): packed values plus scales and zeros."""
        extra = 0 if self.zeros is None else self.zeros.numel() * self.zeros.element_size()
        return self.packed.numel() + self.scales.numel() * self.scales.element_size() + extra

    def to(self, device: torch.device | str) -> "QuantizedWeight":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return QuantizedWeight(
            move(self.packed), move(self.scales), move(self.zeros), self.n, self.k, self.bits, self.group_size
        )
