// Scalar conversions between float and the two 16-bit float formats, bit-exact with PyTorch:
// round-to-nearest-even, NaN stays NaN, overflow becomes infinity. The SIMD kernels convert in
// registers; these serve the scalar kernels and the vector loops' tails. They are `static` so
// that every ISA translation unit keeps its own copy (see cmake/Isa.cmake).
#pragma once

#include <cstdint>
#include <cstring>

namespace moeweave {

static inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

static inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

static inline float bf16_to_float(uint16_t h) { return bits_float(uint32_t(h) << 16); }

static inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet the NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

static inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t em = h & 0x7fffu;
  if (em >= 0x7c00u) return bits_float(sign | 0x7f800000u | ((em & 0x3ffu) << 13));
  if (em >= 0x0400u) return bits_float(sign | ((em << 13) + 0x38000000u));
  const float magnitude = float(em) * 5.9604644775390625e-8f;  // subnormal: em * 2^-24
  return sign ? -magnitude : magnitude;
}

static inline uint16_t float_to_f16(float f) {
  uint32_t x = float_bits(f);
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (x >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to infinity
  if (x < 0x38800000u) {
    // Below the smallest normal half (2^-14): adding 0.5 lets the FPU round at 2^-24, the
    // half subnormal step, so the low mantissa bits are the subnormal's encoding.
    const float shifted = bits_float(x) + 0.5f;
    return sign | uint16_t(float_bits(shifted) - 0x3f000000u);
  }
  const uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // rebias exponent 127 -> 15 and round to nearest even
  return sign | uint16_t(x >> 13);
}

}  // namespace moeweave
