// Element types of the portable kernels (rms_norm.cpp, rope.cpp) and of bone_blocks.h: how a
// value of each float dtype is loaded to and stored from fp32, with PyTorch's rounding (half.h).
// Internal linkage: the per-ISA files include this too, and one definition shared by the ISA
// builds could be the AVX-512 one.
#pragma once

#include <cstdint>

#include "moeweave/dtype.h"
#include "moeweave/half.h"

namespace moeweave::cpu {
namespace {

struct F32 {
  using T = float;
  static float load(T v) { return v; }
  static T store(float v) { return v; }
};

struct BF16 {
  using T = uint16_t;
  static float load(T v) { return bf16_to_float(v); }
  static T store(float v) { return float_to_bf16(v); }
};

struct F16 {
  using T = uint16_t;
  static float load(T v) { return f16_to_float(v); }
  static T store(float v) { return float_to_f16(v); }
};

// Calls fn(E{}) with the element type of `dtype`; false for a dtype that has none.
template <typename Fn>
bool with_element_type(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::f32: fn(F32{}); return true;
    case DType::bf16: fn(BF16{}); return true;
    case DType::f16: fn(F16{}); return true;
    default: return false;
  }
}

}  // namespace
}  // namespace moeweave::cpu
