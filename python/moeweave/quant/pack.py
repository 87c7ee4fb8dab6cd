"""Packing integer values into the SIMD layout of format.py and back, in plain torch.

Shapes: q [Np, Kp] uint8 values in [0, 2^bits) <-> packed [T16, U, unit_bytes(bits)].
"""

import torch

from moeweave.quant.format import QUAD_BYTES, QUADS_PER_UNIT, TILE_ROWS, UNIT_COLS


def _quads(q: torch.Tensor) -> torch.Tensor:
    """[Np, Kp] -> [T16, U, 8, 64]: quad j of unit u of tile t, bytes ordered [row][col % 4]."""
    rows, cols = q.shape
    tiles, units = rows // TILE_ROWS, cols // UNIT_COLS
    return (
        q.view(tiles, TILE_ROWS, units, QUADS_PER_UNIT, 4)
        .permute(0, 2, 3, 1, 4)  # [t, u, j, r, c]
        .reshape(tiles, units, QUADS_PER_UNIT, QUAD_BYTES)
    )


def _unquads(quads: torch.Tensor) -> torch.Tensor:
    """Inverse of _quads: [T16, U, 8, 64] -> [Np, Kp]."""
    tiles, units = quads.shape[:2]
    return (
        quads.view(tiles, units, QUADS_PER_UNIT, TILE_ROWS, 4)
        .permute(0, 3, 1, 2, 4)  # [t, r, u, j, c]
        .reshape(tiles * TILE_ROWS, units * UNIT_COLS)
    )


def _pack_fields(quads: torch.Tensor, width: int) -> torch.Tensor:
    """Packs each run of 8 / width consecutive quads into one 64-byte chunk, quad i of the run in
    bits [width * i, width * (i + 1)). [T16, U, 8, 64] -> [T16, U, width * 64]."""
    per_chunk = 8 // width
    tiles, units = quads.shape[:2]
    runs = quads.view(tiles, units, QUADS_PER_UNIT // per_chunk, per_chunk, QUAD_BYTES).to(torch.int32)
    shifts = torch.arange(per_chunk, device=quads.device, dtype=torch.int32).view(1, 1, 1, -1, 1) * width
    return (runs << shifts).sum(dim=3).to(torch.uint8).reshape(tiles, units, width * QUAD_BYTES)


def _unpack_fields(chunks: torch.Tensor, width: int) -> torch.Tensor:
    """Inverse of _pack_fields: [T16, U, bytes] -> [T16, U, 8, 64]."""
    per_chunk = 8 // width
    tiles, units = chunks.shape[:2]
    runs = chunks.view(tiles, units, QUADS_PER_UNIT // per_chunk, 1, QUAD_BYTES).to(torch.int32)
    shifts = torch.arange(per_chunk, device=chunks.device, dtype=torch.int32).view(1, 1, 1, -1, 1) * width
    return (
        ((runs >> shifts) & ((1 << width) - 1))
        .to(torch.uint8)
        .reshape(tiles, units, QUADS_PER_UNIT, QUAD_BYTES)
    )


def _bits_to_words(bits: torch.Tensor) -> torch.Tensor:
    """[..., 64] of 0/1 -> [..., 8] bytes, little-endian (bit p of the word = element p)."""
    weights = 1 << torch.arange(8, device=bits.device, dtype=torch.int32)
    return (bits.view(*bits.shape[:-1], 8, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)


def _words_to_bits(words: torch.Tensor) -> torch.Tensor:
    shifts = torch.arange(8, device=words.device, dtype=torch.int32)
    return ((words.to(torch.int32).unsqueeze(-1) >> shifts) & 1).to(torch.uint8).flatten(-2)


def pack(q: torch.Tensor, bits: int) -> torch.Tensor:
    """q [Np, Kp] uint8 in [0, 2^bits) -> packed [T16, U, unit_bytes(bits)] uint8."""
    quads = _quads(q)
    if bits in (2, 4, 8):
        return _pack_fields(quads, bits)
    low = _pack_fields(quads & 3, 2)  # [T16, U, 128]
    high = _bits_to_words(quads >> 2).flatten(-2)  # [T16, U, 8 quads * 8 bytes]
    return torch.cat([low, high], dim=-1)


def unpack(packed: torch.Tensor, bits: int) -> torch.Tensor:
    """packed [T16, U, unit_bytes(bits)] -> q [Np, Kp] uint8."""
    if bits in (2, 4, 8):
        return _unquads(_unpack_fields(packed, bits))
    tiles, units = packed.shape[:2]
    low = _unpack_fields(packed[..., : 2 * QUAD_BYTES].contiguous(), 2)
    high = _words_to_bits(packed[..., 2 * QUAD_BYTES :].reshape(tiles, units, QUADS_PER_UNIT, 8))
    return _unquads(low | (high << 2))
