// Reading one value of the packed layout (csrc/include/moeweave/quant_formats.h) and one scale,
// element by element: the scalar kernel's inner step and the definition the SIMD kernels'
// register-wide unpacking must agree with. Internal linkage, like every ISA-shared helper.
#pragma once

#include <cstdint>

#include "moeweave/half.h"
#include "moeweave/quant_formats.h"

namespace moeweave::cpu {
namespace {

// Value at tile row r, unit column c of one unit.
inline int quant_value(const uint8_t* unit, int bits, int r, int c) {
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

inline float load_scalar(const void* base, DType dtype, int64_t index) {
  switch (dtype) {
    case DType::bf16: return bf16_to_float(static_cast<const uint16_t*>(base)[index]);
    case DType::f16: return f16_to_float(static_cast<const uint16_t*>(base)[index]);
    default: return static_cast<const float*>(base)[index];
  }
}

}  // namespace
}  // namespace moeweave::cpu
