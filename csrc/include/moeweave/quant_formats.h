// Weight-only quantised matrices: the one definition of the packed layout, mirrored by
// python/moeweave/quant/format.py. Everything the kernels read about a format is here.
//
// A weight W [N, K] (y = x W^T) is cut into tiles of 16 rows and units of 32 columns (N and K
// are zero-padded up to those multiples). Quantised values q are unsigned b-bit integers with
// W ~= scale * (q - zero), one (scale, zero) per row and group of `group_size` columns (a group
// is a whole number of units; per-channel is group_size = padded K). Symmetric formats store
// q = round(W / scale) + 2^(b-1) and have zero = 2^(b-1) implied, so no zero array exists.
//
// Memory order: tile-major, then unit, then the unit's bytes. A unit holds 8 "quads" (4
// consecutive columns each) of 16 rows; one quad is 64 values laid out as [row 0..15][col 0..3],
// exactly one 512-bit register of bytes, the operand of one VNNI dot product (vpdpbusd) whose
// 32-bit lane r accumulates row r. Bit widths pack quads into one 64-byte chunk per
// 8 / bits quads:
//   8 bit: 8 chunks; chunk j = quad j.
//   4 bit: 4 chunks; chunk c: low nibble = quad 2c, high nibble = quad 2c + 1.
//   2 bit: 2 chunks; chunk c: bits [2i, 2i + 2) = quad 4c + i.
//   3 bit: the low 2 bits as the 2-bit layout (128 bytes), then 8 words of 64 bits: bit p of
//          word j = bit 2 of byte p of quad j (a ready-made AVX-512 byte mask).
// Scales and zeros are [N / 16, groups, 16]: the 16 rows of a tile side by side, one vector load.
#pragma once

#include <cstdint>

#include "moeweave/dtype.h"

namespace moeweave {

constexpr int kQuantTileRows = 16;
constexpr int kQuantUnitCols = 32;
constexpr int kQuantQuadsPerUnit = kQuantUnitCols / 4;
constexpr int kQuantQuadBytes = kQuantTileRows * 4;

MOEWEAVE_HOST_DEVICE constexpr int quant_unit_bytes(int bits) {
  return bits == 3 ? 3 * kQuantQuadsPerUnit * kQuantQuadBytes / 8
                   : bits * kQuantQuadsPerUnit * kQuantQuadBytes / 8;
}

static_assert(kQuantQuadBytes == 64, "a quad is one 512-bit register of bytes");
static_assert(quant_unit_bytes(8) == 512 && quant_unit_bytes(4) == 256, "8 and 4 bits per value");
static_assert(quant_unit_bytes(3) == 192 && quant_unit_bytes(2) == 128, "3 and 2 bits per value");
static_assert(quant_unit_bytes(3) * 8 == 3 * kQuantTileRows * kQuantUnitCols, "3-bit units are dense");

// Describes one quantised matrix; the three pointers may point anywhere (an expert cache slab,
// an adapter pool), which is how the fused MoE op addresses experts.
struct QuantMatrix {
  const uint8_t* packed;  // [N/16, K/32, quant_unit_bytes(bits)]
  const void* scales;     // [N/16, K/group_size, 16] of scale_dtype
  const void* zeros;      // same shape and dtype as scales; null for symmetric formats
  int64_t n;              // rows before padding
  int64_t k;              // columns before padding
  int32_t bits;           // 2, 3, 4 or 8; 16 means a plain bf16 [n, k] matrix in `packed`
  int32_t group_size;     // multiple of 32
  DType scale_dtype;      // f32, f16 or bf16
};

MOEWEAVE_HOST_DEVICE constexpr int64_t quant_padded(int64_t size, int64_t multiple) {
  return (size + multiple - 1) / multiple * multiple;
}

// The value at tile row r, unit column c of one packed unit: the layout above, element by
// element. Shared by the scalar CPU kernel and the CUDA kernels; `static` so each ISA
// translation unit keeps its own copy.
MOEWEAVE_HOST_DEVICE static inline int quant_value(const uint8_t* unit, int bits, int r, int c) {
  const int quad = c / 4, p = r * 4 + c % 4;
  switch (bits) {
    case 8: return unit[quad * 64 + p];
    case 4: return (unit[(quad / 2) * 64 + p] >> (4 * (quad % 2))) & 15;
    case 2: return (unit[(quad / 4) * 64 + p] >> (2 * (quad % 4))) & 3;
    default: {
      const int low = (unit[(quad / 4) * 64 + p] >> (2 * (quad % 4))) & 3;
      const int high = (unit[128 + quad * 8 + p / 8] >> (p % 8)) & 1;
      return low | (high << 2);
    }
  }
}

}  // namespace moeweave
